"""The serving model: one GPU replica driven by SimPy.

Two processes share the clock. ``arrivals`` releases the workload's requests at their arrival
times (rejecting those that can never fit); ``replica`` loops: ask the policy for a batch, take its
duration from the cost model, advance the clock, apply the iteration (prefill progress, one token
per decode, first-token and completion times, KV growth). With nothing to run it sleeps until an
arrival (or the policy's wake-up time): events, never polling.

Between two events a decode-only batch repeats itself, its KV growing by one token per request
per step. For a policy that promises so (``Policy.steady_decode``) the engine runs such a
stretch in one step: it counts the identical iterations before the next event (an arrival, the
first completion, the decision's ``wake_at``, the iteration whose new KV blocks would not fit),
prices them all at once (``CostModel.decode_stretch_times``), waits once, and advances each
request once. Its tables are the step-by-step engine's, to the bit (``stepwise``, the reference:
tests/test_fast_engine.py).

The engine owns all state and enforces the invariants whatever the policy asks: a request is
scheduled at most once per iteration, only tokens that exist are computed, and KV never exceeds
capacity. A violation is a bug in the policy and raises ``PolicyViolation``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import time
from dataclasses import dataclass, field
from typing import AbstractSet, Callable, Iterable

import numpy as np
import simpy

from scheduler.base import (Policy, cache_read_by, check_victims, decide, is_steady_decode,
                            outlasts_hit_loss, violation)
from scheduler.state import ReplicaSpec, ReplicaView, RequestState, Status
from simulator.closed_loop import ClosedLoopTurns
from simulator.config import PREEMPTIONS, RunConfig
from simulator.cost.base import BatchShape, CostModel
from simulator.engines import register_engine
from simulator.errors import PolicyViolation, SimulationStalled
from simulator.metrics import BY_POLICY, OVER_KV_CAPACITY, OVER_MAX_MODEL_LEN, TimelineRow
from simulator.prefix_cache import (BlockPool, ChainLayout, RequestBlocks, laid_out,
                                     second_largest)
from traces.request import Request
from traces.workload import Workload

@dataclass
class EngineResult:
    """Raw outcome of a run: every request's final state, the iteration timeline, counters."""

    states: list[RequestState]
    timeline: list[TimelineRow] | None
    end_s: float
    iterations: int
    preemptions: int
    peak_kv_blocks: int
    spec: ReplicaSpec
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)
    prefix_cache: PrefixCacheReport | None = None   # with prefix caching on


@dataclass
class PrefixCacheReport:
    """What prefix caching did in a run: each request's prompt tokens found cached at its first
    admission (by request id), the cached blocks after each iteration's allocation (the
    timeline's ``cached_blocks``), and the pool's counters (``PrefixCacheStats.to_dict``)."""

    cached_prompt_tokens: dict[int, int]
    cached_blocks: list[int]
    stats: dict


# A policy that preempts this many times without any request finishing in between is taken to
# be in a livelock (every request it admits is preempted again before it finishes: with restart
# preemption it loses its progress each time): the run stops with SimulationStalled instead of
# simulating for ever. Far above what a tight cache causes in a run that makes progress.
LIVELOCK_PREEMPTIONS = 10_000

# A stretch's first iterations are priced one by one (cheaper for the short stretches most
# are); a longer stretch continues with arrays (CostModel.decode_stretch_times).
STRETCH_STEPS = 24


class _Stretch:
    """A planned stretch of identical decode iterations (``Engine._plan_stretch``): its batch,
    each request's computed tokens at its start, the free blocks then, how many requests take
    a new block at each iteration mod the block size, the time no iteration may start at or
    after, the most iterations before a completion; and, planned so far, each iteration's end
    time, duration and the blocks taken since the first, and the batch KV of the next one.
    ``resident`` and ``waiting`` are the replica's counts as it starts (its timeline's)."""

    __slots__ = ("decode", "ctxs", "free", "by_offset", "limit", "k_max", "ends", "dts",
                 "taken", "kv1", "kv", "resident", "waiting", "fills", "deferred_fills",
                 "read", "grew")

    def __init__(self, decode, ctxs: list[int], free: int, by_offset: list[int], limit: float,
                 k_max: int, end0: float, dt0: float, kv1: int, resident: int, waiting: int):
        self.resident = resident
        self.waiting = waiting
        self.decode = decode
        self.ctxs = ctxs
        self.free = free
        self.by_offset = by_offset
        self.limit = limit
        self.k_max = k_max
        self.ends = [end0]
        self.dts = [dt0]
        self.taken = [0]
        self.kv1 = self.kv = kv1
        # With prefix caching (Engine._extend_pooled_stretch): the requests whose blocks fill at
        # each iteration mod the block size (and how many more whose registrations are
        # deferred), the waiting requests whose hit the decision read (None: any), and whether
        # free blocks grew at the last iteration planned.
        self.fills: list | None = None
        self.deferred_fills: list[int] | None = None
        self.read: set[int] | None = None
        self.grew = False


def arrival_rejection(spec: ReplicaSpec, st: RequestState) -> tuple[str, str] | None:
    """Why a request can never be served on this replica (checked at arrival): its code and
    detail, or None."""
    total = st.prompt_tokens + st.output_tokens
    if total > spec.max_model_len:
        return (OVER_MAX_MODEL_LEN,
                (f"prompt + output = {total} tokens exceeds max_model_len {spec.max_model_len}"))
    if spec.blocks_for(st.max_kv_tokens) > spec.num_blocks:
        return (OVER_KV_CAPACITY,
                f"needs {st.max_kv_tokens} KV tokens, capacity is {spec.kv_capacity_tokens}")
    return None


def reject(st: RequestState, code: str, detail: str | None) -> None:
    """Mark a request rejected, with its code and detail."""
    st.status = Status.REJECTED
    st.reject_reason, st.reject_detail = code, detail


class ReplicaLoop:
    """What every simulated replica shares, whoever schedules it (our policies, or vLLM's
    scheduler in the loop): the clock, the arrival process that rejects what can never fit,
    sleeping until an arrival or a wake-up time (and the stall check when neither can come),
    the cost of an iteration, and the result. Subclasses supply ``_accept`` (hand an arrival
    to the scheduler), ``_close_arrivals`` and the ``_replica`` process."""

    def __init__(self, requests: Iterable[Request], cost_model: CostModel, spec: ReplicaSpec, *,
                 record_timeline: bool = True,
                 progress: Callable[[int, int], None] | None = None, total: int | None = None,
                 env: simpy.Environment | None = None):
        # A cluster (simulator/cluster.py) passes its one clock to every replica.
        self.env = env if env is not None else simpy.Environment()
        self.requests = requests
        self.cost_model = cost_model
        self.spec = spec
        self.states: list[RequestState] = []
        self.timeline: list[TimelineRow] | None = [] if record_timeline else None
        self.progress = progress
        self.total = total
        self.peak_used_blocks = 0
        self.finished = 0
        self.iterations = 0
        self.preemptions = 0
        self.arrivals_done = False
        self._idle: simpy.Event | None = None
        # Closed-loop session turns, held until the turn they follow ends (a cluster replaces
        # them with its own, whose router places every turn).
        self.turns = ClosedLoopTurns(self.env, self.arrive, self.close_arrivals)
        # When the next arrival can come, for a stretch to end at it: the time the arrival
        # process waits for (the session turns on their way: ``turns.next_release_s``). Known
        # only when this loop's own arrival process runs (``run``; a cluster routes arrivals).
        self._own_arrivals = False
        self._next_listed_s = 0.0

    @property
    def frontend_delay_s(self) -> float:
        """A live server's front end (HTTP, tokenisation, the hop to the engine core) holds each
        request this long before the engine sees it; latencies still count from arrival_s."""
        return self.turns.delay_s

    @frontend_delay_s.setter
    def frontend_delay_s(self, seconds: float) -> None:
        self.turns.delay_s = seconds

    def run(self) -> EngineResult:
        wall0 = time.perf_counter()
        self._own_arrivals = True
        self._start()
        self.env.process(self._arrivals())
        done = self.env.process(self._replica())
        if self.progress is not None:
            self.progress(0, self.total or 0)
        self.env.run(until=done)
        if self.progress is not None:
            self.progress(self.finished, self.total or 0)
        return EngineResult(self.states, self.timeline, self.env.now, self.iterations,
                            self.preemptions, self.peak_used_blocks, self.spec,
                            wall_s=time.perf_counter() - wall0, extra=self._extra(),
                            prefix_cache=self._prefix_cache_report())

    def _start(self) -> None:
        pass

    def _prefix_cache_report(self) -> PrefixCacheReport | None:
        return None

    def _extra(self) -> dict:
        return {}

    def _arrivals(self):
        env, turns = self.env, self.turns
        for r in self.requests:
            if turns.hold(r):              # arrives when the turn it follows ends
                continue
            delay = r.arrival_s + self.frontend_delay_s - env.now
            if delay > 0:
                self._next_listed_s = env.now + delay     # the time SimPy will wake us at
                yield env.timeout(delay)
            self.arrive(r)
        self._next_listed_s = math.inf
        self.end_arrivals()

    def arrive(self, r: Request, arrival_s: float | None = None) -> RequestState:
        """``r`` arrives now (at ``arrival_s``, a session turn's send time, else its own):
        rejected if it can never fit, else handed to the scheduler."""
        st = RequestState(r.request_id, r.arrival_s if arrival_s is None else arrival_s,
                          r.prompt_tokens, r.output_tokens, r.label)
        return self.receive(st, r)

    def receive(self, st: RequestState, r: Request) -> RequestState:
        """``st``, the state of request ``r``, joins this replica now: rejected if it can never
        fit, else handed to the scheduler. A disaggregated decode replica (simulator/disagg.py)
        receives states whose prompt another replica computed."""
        self.states.append(st)
        rejection = arrival_rejection(self.spec, st)
        if rejection is not None:
            reject(st, *rejection)
            self._ended(st)
            return st
        self._accept(st, r)
        self._wake()
        return st

    def end_arrivals(self) -> None:
        """No request of the workload's list will arrive any more (session turns that follow
        one may still: arrivals close when the last of them has arrived)."""
        self.turns.listed()
        self._wake()

    def _ended(self, st: RequestState) -> None:
        """``st`` completed or was rejected: the session turn that follows it, if any, arrives
        its think time later."""
        self.turns.ended(st.request_id)

    def _next_arrival_s(self) -> float:
        """The earliest time a request can arrive next (with the arrival process its own)."""
        return min(self._next_listed_s, self.turns.next_release_s())

    def close_arrivals(self) -> None:
        """No request will arrive any more: policies may drain."""
        if not self.arrivals_done:
            self.arrivals_done = True
            self._close_arrivals()
            self._wake()

    def _accept(self, st: RequestState, r: Request) -> None:
        raise NotImplementedError

    def _close_arrivals(self) -> None:
        pass

    def _replica(self):
        raise NotImplementedError

    def _wake(self) -> None:
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed()

    def _sleep(self, wake_at: float | None, who: str, unfinished: str):
        """Wait for an arrival, or until ``wake_at``; with neither possible the run is stuck."""
        env = self.env
        if self.arrivals_done and wake_at is None:
            raise SimulationStalled(f"{who} scheduled nothing at t={env.now:.3f}s with "
                                    f"{unfinished} and no further arrivals")
        self._idle = env.event()
        if wake_at is not None:
            if not wake_at > env.now:
                raise PolicyViolation(f"{who} asked to wake at {wake_at} <= now {env.now}")
            yield self._idle | env.timeout(wake_at - env.now)
        else:
            yield self._idle
        self._idle = None

    def _iteration_time(self, shape: BatchShape) -> float:
        dt = self.cost_model.iteration_time(shape)
        if not dt > 0:
            raise self._nonpositive(dt, shape)
        return dt

    def _nonpositive(self, dt, shape: BatchShape) -> PolicyViolation:
        return PolicyViolation(f"cost model {self.cost_model.name} gave a non-positive "
                               f"iteration time {dt!r} for {shape!r}")



class Engine(ReplicaLoop):
    """Simulates one replica serving ``requests`` under ``policy`` with ``cost_model``."""

    def __init__(self, requests: Iterable[Request], policy: Policy, cost_model: CostModel,
                 spec: ReplicaSpec, *, record_timeline: bool = True,
                 progress: Callable[[int, int], None] | None = None, total: int | None = None,
                 preemption: str = "recompute", prefix_caching: bool = False,
                 stepwise: bool = False, env: simpy.Environment | None = None,
                 chains: ChainLayout | None = None):
        if preemption not in PREEMPTIONS:
            raise ValueError(f"preemption must be one of {PREEMPTIONS}, got {preemption!r}")
        # "recompute" (vLLM): a preempted request keeps its generated tokens and recomputes
        # prompt + generated as one prefill. "restart" (the model of Ao et al.): it loses them and
        # starts over from its prompt.
        self.restart = preemption == "restart"
        if prefix_caching and chains is None:
            # The requests' chains cut for the pool (simulator/prefix_cache.py): it needs them
            # all. Requests handed over later (a cluster's router) come with the cluster's.
            requests, chains = laid_out(requests, (spec.block_size,))
        self.chains = chains
        super().__init__(requests, cost_model, spec, record_timeline=record_timeline,
                         progress=progress, total=total, env=env)
        self.policy = policy
        # One iteration per step, always: the reference the stretches are tested against.
        self.stepwise = stepwise
        self._stretches = False
        self._cut = False
        self._decode_admitted = 0       # the last iteration that admitted a request to decode
        self._adopted = False           # the last iteration's filled blocks gave blocks back
        self._lazy_hits = False         # waiting requests looked up as the policy reads them
        self._hit_loss_kept = False     # a shorter hit of the head ends no stretch (_start)
        self._preempted_since_finish = 0
        # Tokens the iterations of a stepped stretch have computed so far, not yet added to its
        # requests' states (a router reads pending tokens mid-stretch: simulator/cluster.py).
        self.uncommitted_tokens = 0
        self.view = ReplicaView(spec)
        self.resident: dict[int, RequestState] = {}
        self.view.resident = self.resident.values()   # live, admission order
        self.free_blocks = spec.num_blocks
        self.unfinished = 0
        self._admissions = 0
        self._progress_at = 1024        # the iteration count at which progress is reported next
        # Prefix caching (simulator/prefix_cache.py): the block pool, each live request's block
        # hashes, the waiting requests (their hits are looked up before each schedule call).
        self.pool = BlockPool(spec.num_blocks, spec.block_size) if prefix_caching else None
        self.request_blocks: dict[int, RequestBlocks] = {}
        self._waiting: dict[int, RequestState] = {}
        # Waiting requests by the segments at the boundaries of their last look-up, and those
        # not looked up yet: only they need a look-up before the next schedule call. The same
        # for resident requests' shared blocks.
        self._watchers: dict[int, set[int]] = {}
        self._unlooked: set[int] = set()
        self._shared_watchers: dict[int, set[int]] = {}
        self._unshared: set[int] = set()
        # Lazy hits: the waiting requests by each segment of their chains (as far as they are
        # generated when they begin to wait: at least as far as their hits can reach).
        self._waiting_in: dict[int, set[int]] = {}
        self._deferred = 0      # blocks full and cached, not yet registered (deferred)
        # The resident requests whose filling blocks are registered as they fill (not
        # deferring): a stretch with none of them plans no registration.
        self._undeferred: set[int] = set()
        self.cached_prompt_tokens: dict[int, int] = {}
        self.cached_blocks: list[int] = []
        # By a decoding request's computed tokens mod the block size: whether its new token
        # starts a block or fills one (``_start_iteration``).
        self._block_edges = tuple(r == 0 or r == spec.block_size - 1
                                  for r in range(spec.block_size))

    def _start(self) -> None:
        self.policy.bind(self.spec)
        # With its own arrival process the replica knows when the next arrival comes and waits
        # for a stretch's end at once; in a cluster (a router hands requests over at any time,
        # and reads the replica's load and cache as it does) it waits iteration by iteration
        # (``_stepped_stretch``).
        self._stretches = not self.stepwise and is_steady_decode(self.policy)
        # Lazy hits (single replica, cache on, not the stepwise reference): a queue-order policy
        # looks a waiting request up as its queue's peek returns it, and a resident's shared
        # blocks are settled as it releases that victim (``_settle_shared``). A look-up gives the
        # pool's answer at that moment, and between the decision's start and its reads nothing
        # changes the pool, so the answers are the eager engine's; what the waiting want
        # changes only shared blocks, settled before they are read. In a cluster a router
        # reads every waiting request's hit (pending tokens): eager there.
        self._lazy_hits = (self.pool is not None and not self.stepwise and self._own_arrivals
                           and self.policy.look_up_on_peek(self._look_up_one))
        if self._lazy_hits:
            self.view.settle_cache = self._settle_shared
        # Its stretches run on through evictions that only shorten the head's hit
        # (Policy.refusal_outlasts_hit_loss): inside one, evictions change nothing else a
        # decode-only decision reads (no held block, no free block more).
        self._hit_loss_kept = self._lazy_hits and outlasts_hit_loss(self.policy)

    def _wake(self) -> None:
        self._cut = True      # a stepped stretch ends with the iteration running now
        super()._wake()

    def _accept(self, st: RequestState, r: Request) -> None:
        self.unfinished += 1
        self.view.num_waiting += 1
        if self.pool is not None:
            self.request_blocks[st.request_id] = self.chains.blocks(r, self.spec.block_size)
            self._enter_waiting(st)
        self.policy.on_arrival(st)

    def _prefix_cache_report(self) -> PrefixCacheReport | None:
        if self.pool is None:
            return None
        return PrefixCacheReport(self.cached_prompt_tokens, self.cached_blocks,
                                 self.pool.stats.to_dict())

    # -- prefix caching ------------------------------------------------------------------------
    def waiting_states(self):
        """The waiting requests (with prefix caching on; their hits as last looked up)."""
        return self._waiting.values()

    def _enter_waiting(self, st: RequestState) -> None:
        rid = st.request_id
        self._waiting[rid] = st
        self._unlooked.add(rid)
        if self._lazy_hits:
            b = self.request_blocks[rid]
            b.upto((st.prompt_tokens + st.generated - 1) // self.spec.block_size)
            # (No more are generated while it waits.) A private segment is no victim's.
            _index(self._waiting_in, rid, b.sids[:-1] if b.private else b.sids)

    def _unindex_waiting(self, st: RequestState) -> None:
        rid = st.request_id
        del self._waiting[rid]
        self._unlooked.discard(rid)
        if self._lazy_hits:
            b = self.request_blocks[rid]
            _unindex(self._waiting_in, rid, b.sids[:-1] if b.private else b.sids)

    def _leave_waiting(self, st: RequestState) -> None:
        """A waiting request is rejected or admitted: it no longer wants its hit's blocks."""
        rid = st.request_id
        self._unindex_waiting(st)
        b = self.request_blocks[rid]
        b.watch = _watch(self._watchers, rid, b.watch, None)
        if b.hit:
            self.pool.want(b, b.hit, 0)
            b.hit = 0
        st.cached = st.cached_shared_blocks = 0

    def _look_up_prefixes(self, read: AbstractSet[int] | None = None) -> bool:
        """Fill what policies read of the cache: each waiting request's hit (``cached``,
        ``cached_shared_blocks``) and each resident one's ``shared_blocks``. Along a request's
        chain each is a prefix (simulator/prefix_cache.py), so it can only have changed if a
        segment at its boundary changed since the last look-up: only those are looked up.
        Returns whether any of them changed.

        Inside a stretch, ``read`` names the waiting requests the stretch's decision read
        (``scheduler.base.cache_read_by``): only they are looked up, and only their changes
        count; the others stay due for the next full look-up. A look-up's answer is a function
        of the pool as it is then (what the waiting want changes only who shares), so looking
        up later gives the step engine's answers at the next decision."""
        changed = False
        pool = self.pool
        dirty = pool.dirty
        blocks = self.request_blocks
        stale = self._unlooked
        watchers = self._watchers
        _mark_watchers(watchers, dirty, stale)
        waiting = self._waiting
        look_up = self._look_up_waiting
        for rid in (stale if read is None else stale & read):
            changed |= look_up(waiting[rid], blocks[rid])
        if read is None:
            stale.clear()
        else:
            stale -= read
        # After the waiting requests: what they want counts in a resident's shared blocks.
        # Besides a change at its boundary, a resident is looked up when it is admitted and
        # when it caches blocks while all it had were shared (_register_full_blocks).
        stale, watchers, resident = self._unshared, self._shared_watchers, self.resident
        _mark_watchers(watchers, dirty, stale)
        if read is None:
            for rid in stale:
                st = resident[rid]
                b = blocks[rid]
                shared, h0, h1 = pool.shared_blocks(b, b.registered)
                if st.shared_blocks != shared:
                    changed = True
                    st.shared_blocks = shared
                b.shared_watch = _watch(watchers, rid, b.shared_watch, (h0, h1))
            stale.clear()
        dirty.clear()
        self.free_blocks = pool.free_blocks
        return changed

    def _look_up_waiting(self, st: RequestState, b: RequestBlocks) -> bool:
        """Look waiting request ``st`` up (``_look_up_prefixes``): its hit, the part of it that
        live requests hold, and the segments to watch; whether what policies read changed."""
        pool, bs = self.pool, self.spec.block_size
        hit, h0, h1 = pool.hit_blocks(b, (st.prompt_tokens + st.generated - 1) // bs)
        if hit != b.hit:
            pool.want(b, b.hit, hit)
            b.hit = hit
        held, g0, g1 = pool.held_blocks(b, hit)
        b.watch = _watch(self._watchers, st.request_id, b.watch, (h0, h1, g0, g1))
        if st.cached != hit * bs or st.cached_shared_blocks != held:
            # (A shorter hit with the same held blocks changes no decision of a policy whose
            # refusal outlasts a hit's loss: _hit_loss_kept.)
            seen = not self._hit_loss_kept or held != st.cached_shared_blocks or \
                hit * bs > st.cached
            st.cached = hit * bs
            st.cached_shared_blocks = held
            return seen
        return False

    def _mark_due(self) -> None:
        """Lazy hits, before a decision (``_look_up_prefixes`` with no request read): the
        waiting requests at whose boundaries a segment changed are due, looked up as the policy
        reads them. (Residents' shared blocks are settled as they are read, never watched.)"""
        pool = self.pool
        dirty = pool.dirty
        if dirty:
            _mark_watchers(self._watchers, dirty, self._unlooked)
            dirty.clear()
        self.free_blocks = pool.free_blocks

    def _settle_shared(self, st: RequestState) -> None:
        """Lazy hits: resident ``st``'s ``shared_blocks`` is about to be read (StepKV.release):
        bring it up to date. It counts the blocks of its cached prefix that another live
        request holds or a waiting one's hit covers; along its chain, segment by segment, it
        stands where two holders cover its part already, and elsewhere can change only with
        the hits of the waiting requests whose chains reach that segment (``_waiting_in``): only
        those due are looked up first, the others stay due. Then its count is the eager
        engine's: as there, every claim on its segments is up to date."""
        b = self.request_blocks[st.request_id]
        registered = b.registered
        if not registered:
            st.shared_blocks = 0
            return
        segs, index = self.pool.segments, self._waiting_in
        sids, starts, ends = b.sids, b.starts, b.ends
        due: set[int] = set()
        for i in range(b.segment(registered - 1) + 1):
            sid = sids[i]
            if second_largest(segs[sid].holds) < (ends[i] if ends[i] < registered else registered) \
                    - starts[i]:
                ids = index.get(sid)
                if ids:
                    due |= ids
        self._look_up_prefixes(due)
        st.shared_blocks = self.pool.shared_blocks(b, registered)[0]

    def _read_changed(self, read: set[int] | None) -> bool:
        """Inside a stretch, before an iteration: whether the look-up then changes what the
        stretch's decision read (``_look_up_prefixes(read)``). A read request's answer can only
        have changed if it is due or a segment at its boundaries changed (``dirty``): otherwise
        no look-up is made, and the changes wait in ``dirty`` for the next one."""
        if read is None or (self.pool.dirty and self._watched_by(read) is None):
            return self._look_up_prefixes(read)
        return False

    def _look_up_one(self, st: RequestState) -> None:
        """Lazy hits: ``st``, waiting, is about to be read: look it up if it is due. (As
        ``_look_up_prefixes({st.request_id})``, without the sets: this is every admission's.)"""
        rid = st.request_id
        due = self._unlooked
        if rid not in due:
            return
        pool = self.pool
        dirty = pool.dirty
        if dirty:
            _mark_watchers(self._watchers, dirty, due)
            _mark_watchers(self._shared_watchers, dirty, self._unshared)
            dirty.clear()
        self._look_up_waiting(st, self.request_blocks[rid])
        due.discard(rid)
        self.free_blocks = pool.free_blocks

    def _admit_hit(self, st: RequestState) -> None:
        """A waiting request is admitted: it holds the cached blocks of its hit."""
        pool = self.pool
        b = self.request_blocks[st.request_id]
        hit = b.hit
        rid = st.request_id
        self._unindex_waiting(st)
        if b.watch is not None:
            _unindex(self._watchers, rid, b.watch)
            b.watch = None
        pool.take_hit(b, hit)
        b.hit = 0
        b.registered = hit
        self._undeferred.add(rid)
        if not self._lazy_hits:     # (lazy hits settle shared blocks as they are read)
            self._unshared.add(rid)
        st.kv_blocks = hit
        st.computed = hit * self.spec.block_size
        stats = pool.stats
        stats.admissions += 1
        stats.queries += st.prompt_tokens + st.generated
        stats.hits += st.computed
        if st.request_id not in self.cached_prompt_tokens:
            self.cached_prompt_tokens[st.request_id] = st.computed
        st.cached = st.cached_shared_blocks = 0

    def _register_full_blocks(self, st: RequestState, before: int, tokens: int) -> None:
        """The blocks of ``st`` full once its first ``tokens`` tokens are computed (``before``
        were) are cached.

        Deferred, in its private last segment (``RequestBlocks.private``: its own prompt and
        answer, in no other chain) once it holds all of that segment that is cached: no other
        request can hit, hold or adopt those blocks, and it adopts none (nothing cached lies
        beyond what it holds), so they change nothing but the count of cached blocks
        (``_deferred``) until it frees them (``_free_kv``). A decode fills a block every
        block_size steps: that is most registrations."""
        b = self.request_blocks[st.request_id]
        bs = self.spec.block_size
        full = tokens // bs
        if b.deferring:
            self._deferred += full - before // bs
            return
        if full <= b.registered:
            return
        pool = self.pool
        rid = st.request_id
        # Nothing of its private segment cached (so it holds all of it that is): deferred from
        # its first block on; only the blocks before it are registered.
        tail = b.starts[-1] if b.private else full
        defer = full > tail and b.sids[-1] not in pool.segments
        top = tail if defer else full
        if top > b.registered:
            if st.shared_blocks == b.registered and not self._lazy_hits:
                # All its cached blocks were shared: the new ones may be too. Otherwise they
                # are held by fewer requests than its first unshared block: the count stands.
                self._unshared.add(rid)
            pool.register(b, b.registered, top)
            b.registered = top
        if defer:
            b.deferring = True
            self._deferred += full - tail
        elif full > tail:      # (a restart re-filling its own cached blocks)
            b.deferring = pool.segments[b.sids[-1]].cached == full - tail
        if b.deferring:
            self._undeferred.discard(rid)

    def _free_kv(self, st: RequestState, finished: bool = False) -> None:
        """``st`` gives its KV blocks back (``finished``, or preempted)."""
        if self.pool is None:
            self.free_blocks += st.kv_blocks
        else:
            rid = st.request_id
            b = self.request_blocks[rid]
            late = 0                # its deferred blocks, cached as they are freed
            if b.deferring:
                b.deferring = False
                full = st.computed // self.spec.block_size
                if full > b.registered:
                    self._deferred -= full - b.registered
                    if b.registered == b.starts[-1] and b.sids[-1] not in self.pool.segments:
                        late = full - b.registered       # nothing of its segment cached
                    else:
                        self.pool.register(b, b.registered, full)
                        b.registered = full
            self.pool.release(b, b.registered, st.kv_blocks - b.registered - late, late,
                              finished and b.private)
            b.registered = 0
            st.shared_blocks = 0
            if b.shared_watch is not None:
                b.shared_watch = _watch(self._shared_watchers, rid, b.shared_watch, None)
            self._unshared.discard(rid)
            self._undeferred.discard(rid)
            self.free_blocks = self.pool.free_blocks
        st.kv_blocks = 0

    def _close_arrivals(self) -> None:
        self.view.arrivals_done = True

    # ---------------------------------------------------------------------------------------
    def _replica(self):
        env, view, policy = self.env, self.view, self.policy
        while True:
            view.now = env.now
            if self._lazy_hits:
                # (Every change to the pool's free blocks updates free_blocks as it is made.)
                if self.pool.dirty:
                    self._mark_due()
            elif self.pool is not None:
                self._look_up_prefixes()
            view.free_blocks = self.free_blocks
            d = decide(policy, view)
            if d.reject:
                self._apply_rejects(d.reject)
            if d.preempt:
                self._apply_preemptions(d.preempt)
                check_victims(policy, d, env.now)
            if not (d.prefill or d.decode):
                if view.arrivals_done and self.unfinished == 0:
                    return
                if d.preempt or d.reject:
                    # It freed KV or the queue's head and ran nothing (vLLM V1 schedules no
                    # waiting request in a step that preempts): ask again at once, as vLLM's
                    # engine loop calls the scheduler again.
                    continue
                yield from self._sleep(
                    d.wake_at, f"policy {policy.name}",
                    f"{self.unfinished} unfinished requests ({view.num_waiting} waiting, "
                    f"{len(self.resident)} resident)")
                continue
            dt = self._start_iteration(d)
            if self._stretches and not (d.prefill or d.preempt or d.reject):
                if self._own_arrivals:
                    s = self._plan_stretch(d, dt, self._next_arrival_s(),
                                           STRETCH_STEPS if self.pool is None else 1 << 62)
                    if s is not None:
                        self._commit_stretch(s, len(s.ends))
                        early = yield from self._run_to_end(s.ends, s.dts)
                        if early and s.ends[-1] == self._next_arrival_s():
                            # An arrival due at the very end: the step engine's last timeout,
                            # made as the last iteration started, after the arrival's, lets
                            # the arrival in first. So do we.
                            yield env.timeout(0)
                        self._finish_stretch(d.decode, len(s.ends))
                        continue
                else:
                    s = self._plan_stretch(d, dt, math.inf, 2 if self.pool is None else 1)
                    if s is not None:
                        yield from self._stepped_stretch(s)
                        continue
            yield env.timeout(dt)
            self._finish_iteration(d)

    def _apply_rejects(self, rejects) -> None:
        for st, reason in rejects:
            if st.status is not Status.WAITING:
                raise PolicyViolation(f"policy {self.policy.name} rejected request "
                                      f"{st.request_id}, which is {st.status.value}")
            reject(st, BY_POLICY, reason)
            self.view.num_waiting -= 1
            self.unfinished -= 1
            self._ended(st)
            if self.pool is not None:
                self._leave_waiting(st)
                del self.request_blocks[st.request_id]

    def _apply_preemptions(self, victims) -> None:
        self._preempted_since_finish += len(victims)
        if self._preempted_since_finish > LIVELOCK_PREEMPTIONS:
            raise SimulationStalled(
                f"policy {self.policy.name} preempted {self._preempted_since_finish} times "
                f"since a request last finished (t={self.env.now:.3f}s, {self.unfinished} "
                f"unfinished): a livelock, every request it admits is preempted before it "
                f"finishes (try recompute preemption or more KV cache)")
        for st in victims:
            if st.status is not Status.RESIDENT:
                raise PolicyViolation(f"policy {self.policy.name} preempted request "
                                      f"{st.request_id}, which is {st.status.value}")
            self._free_kv(st)      # with prefix caching, into the cache: a recompute can hit
            st.computed = 0
            if self.restart:
                st.generated = 0
            st.status = Status.WAITING
            st.preemptions += 1
            del self.resident[st.request_id]
            self.view.num_waiting += 1
            self.preemptions += 1
            if self.pool is not None:
                self._enter_waiting(st)

    def _violation(self, st: RequestState, what: str) -> PolicyViolation:
        return violation(self.policy, self.env.now, st, what)

    def _start_iteration(self, d) -> float:
        """Validate the batch, admit new requests, allocate KV; return the iteration's duration."""
        self.iterations += 1
        it = self.iterations
        now = self.env.now
        bs = self.spec.block_size
        pool = self.pool
        new_blocks = 0
        resident = self.resident
        pf_tokens = pf_kv = 0
        pf_pairs = 0.0
        for st, n in d.prefill:
            if st._iteration == it:
                raise self._violation(st, "was scheduled twice in one iteration")
            st._iteration = it
            if st.status is Status.WAITING:
                self._admit(st, now)
                if pool is not None:
                    # Before any block of this batch is allocated, so none of a hit is evicted.
                    self._admit_hit(st)
            elif st.status is not Status.RESIDENT:
                raise self._violation(st, "was scheduled but is not waiting or resident")
            ctx = st.computed
            if not 0 < n <= st.prompt_tokens + st.generated - ctx:
                raise self._violation(st, f"was given {n} prefill tokens")
            need = -(-(ctx + n) // bs) - st.kv_blocks
            if need > 0:
                new_blocks += need
                st.kv_blocks += need
            pf_tokens += n
            pf_kv += ctx + n
            pf_pairs += n * ctx + n * (n + 1) / 2
        dec_kv = 0
        RESIDENT = Status.RESIDENT
        if pool is None:
            for st in d.decode:
                if st._iteration == it:
                    raise self._violation(st, "was scheduled twice in one iteration")
                st._iteration = it
                ctx = st.computed
                g = st.generated
                if not g or st.prompt_tokens + g - ctx != 1 or st.status is not RESIDENT:
                    if not (st.status is Status.WAITING and g and st.prompt_tokens + g - ctx == 1):
                        raise self._violation(st, "was scheduled to decode but is not decoding")
                    # Received with its prompt's KV computed elsewhere (a disaggregated decode
                    # replica, simulator/disagg.py): admitted to decode, it takes its context's
                    # blocks.
                    self._admit(st, now)
                    self._decode_admitted = it
                    need = -(-(ctx + 1) // bs)
                    new_blocks += need
                    st.kv_blocks += need
                elif not ctx % bs:         # the new token starts a new block
                    new_blocks += 1
                    st.kv_blocks += 1
                dec_kv += ctx
        else:
            # The same with the cache (which receives no request to decode: disaggregation runs
            # without it), also finding the blocks that fill: a loop of its own, so that the
            # uncached one, every run's hot path, makes no test for them.
            edge = self._block_edges
            filled = []
            for st in d.decode:
                if st._iteration == it:
                    raise self._violation(st, "was scheduled twice in one iteration")
                st._iteration = it
                ctx = st.computed
                g = st.generated
                if not g or st.prompt_tokens + g - ctx != 1 or st.status is not RESIDENT:
                    raise self._violation(st, "was scheduled to decode but is not decoding")
                if edge[ctx % bs]:     # (one test for the two rare cases: hot)
                    if not ctx % bs:   # the new token starts a new block
                        new_blocks += 1
                        st.kv_blocks += 1
                    if ctx % bs == bs - 1:   # its block is full after it (block size 1: both)
                        filled.append(st)
                dec_kv += ctx
        dec_kv += len(d.decode)
        free = pool.free_blocks if pool is not None else self.free_blocks
        if new_blocks > free:
            raise PolicyViolation(
                f"policy {self.policy.name} at t={now:.6f}s over-allocated KV: the batch needs "
                f"{new_blocks} blocks, {free} were free")
        if pool is None:
            self.free_blocks = free - new_blocks
        else:
            if new_blocks:
                pool.allocate(new_blocks)
            # Blocks full after this batch are cached now, as vLLM's allocate_slots does.
            for st, n in d.prefill:
                self._register_full_blocks(st, st.computed, st.computed + n)
            if filled:
                undeferred = self._undeferred     # (the others only count theirs: deferred)
                for st in filled:
                    if st.request_id in undeferred:
                        self._register_full_blocks(st, st.computed, st.computed + 1)
                    else:
                        self._deferred += 1
            # A block that filled adopted a cached copy and gave its own back: free blocks grew
            # (a stretch may not start: the next decision may admit with them).
            now_free = pool.free_blocks
            self._adopted = now_free > free - new_blocks
            self.free_blocks = now_free
            self.cached_blocks.append(pool.cached_blocks + self._deferred)
        used = self.spec.num_blocks - self.free_blocks
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used
        dt = self._iteration_time(BatchShape(pf_tokens, len(d.prefill), pf_kv, pf_pairs,
                                             len(d.decode), dec_kv))
        if self.timeline is not None:
            self.timeline.append(TimelineRow(
                start_s=now, duration_s=dt, prefill_tokens=pf_tokens,
                prefill_requests=len(d.prefill), decode_requests=len(d.decode),
                batch_kv_tokens=pf_kv + dec_kv, kv_used_tokens=used * bs,
                resident=len(resident), waiting=self.view.num_waiting,
                preempted=len(d.preempt)))
        return dt

    def _admit(self, st: RequestState, now: float) -> None:
        """A waiting request joins the batch: it becomes resident."""
        st.status = Status.RESIDENT
        self._admissions += 1
        st.admitted_seq = self._admissions
        self.resident[st.request_id] = st
        self.view.num_waiting -= 1
        if st.first_scheduled_s is None:
            st.first_scheduled_s = now

    def _plan_stretch(self, d, dt0: float, limit: float, top: int) -> _Stretch | None:
        """After the first iteration of a decode-only batch has started (``_start_iteration``),
        plan the iterations that repeat it before ``limit`` (the next arrival or ``wake_at``),
        at most ``top`` of them priced one by one (``_extend_stretch`` goes on); None when
        not even a second one can run. Commits nothing (``_commit_stretch`` does).

        Iteration j (0 = the first) of the stretch runs each request r at context c_r + j
        (c_r = its computed tokens), so the batch's KV is S0 + j B; request r takes a new block
        when (c_r + j) % block_size == 0. It runs when it starts before ``limit``, every
        request still decodes (the first completion ends the stretch), and the blocks taken
        since the first iteration fit in the free ones."""
        if self._decode_admitted == self.iterations or self._adopted:
            # It admitted received requests to decode (the next decision may admit more), or
            # its blocks that filled gave blocks back (free blocks grew).
            return None
        decode = d.decode
        end0 = self.env.now + dt0
        if d.wake_at is not None and d.wake_at < limit:
            limit = d.wake_at
        if not end0 < limit:
            return None
        k_max = min([st.output_tokens - st.generated for st in decode])
        if k_max <= 1:
            return None
        B = len(decode)
        bs = self.spec.block_size
        free = self.free_blocks
        ctxs = [st.computed for st in decode]
        if free < B and sum([(c + 1) % bs == 0 for c in ctxs]) > free:
            return None        # iteration 1's blocks do not fit (a full cache, often)
        read = None
        if self.pool is not None and self._own_arrivals:
            # What the decision read of the cache, looked up again before iteration 1 (as
            # _extend_pooled_stretch would first): changed, the stretch ends before it.
            read = cache_read_by(self.policy)
            if read is not None and self._read_changed(read):
                return None
        # Requests by the iteration (mod block size) at which they take their next block.
        by_offset = [0] * bs
        for c in ctxs:
            by_offset[-c % bs] += 1
        s = _Stretch(decode, ctxs, free, by_offset, limit, k_max, end0, dt0,
                     sum(ctxs) + 2 * B,           # the batch's KV at iteration 1
                     len(self.resident), self.view.num_waiting)
        s.read = read
        if self.pool is None:
            self._extend_stretch(s, top)
        elif top > 1:
            self._extend_pooled_stretch(s, top)
        else:
            # A stepped stretch with the cache (a cluster): the pool takes each iteration's
            # blocks as it starts, where a router may read them (_stepped_stretch).
            return s
        return s if len(s.ends) > 1 else None

    def _extend_pooled_stretch(self, s: _Stretch, top: int) -> None:
        """Plan stretch ``s`` with prefix caching up to iteration ``top``: iteration by
        iteration, each one's new blocks taken from the pool and its blocks that fill cached
        as it is planned (as ``_start_iteration`` does), so its evictions and cached blocks are
        the step engine's. It ends before an iteration whose decision could differ: where the
        look-up before it changes what the decision read of the cache (a waiting request's
        hit, a resident's shared blocks: ``cache_read_by``), as an eviction reaching a hit
        does, or where free blocks grew (a filled block adopted a cached copy and gave its own
        back)."""
        pool = self.pool
        ends, dts, taken, by_offset = s.ends, s.dts, s.taken, s.by_offset
        bs = len(by_offset)
        if s.fills is None:
            # Requests (with their computed tokens at the start) by the iteration mod block
            # size at which their block fills: (c + j + 1) % bs == 0.
            it, resident = self.iterations, self.resident
            undeferred = self._undeferred
            if undeferred and any(resident[rid]._iteration == it for rid in undeferred):
                s.fills = [[] for _ in range(bs)]
                s.deferred_fills = [0] * bs
                blocks_of = self.request_blocks
                for st, c in zip(s.decode, s.ctxs):
                    if blocks_of[st.request_id].deferring:
                        s.deferred_fills[(-c - 1) % bs] += 1
                    else:
                        s.fills[(-c - 1) % bs].append((st, c))
            else:     # (the usual case) every one defers: they fill a block a step before
                s.fills = [()] * bs                                # they take the next one
                s.deferred_fills = by_offset[1:] + by_offset[:1]
            # In a cluster a router reads every waiting request's hit (pending tokens), as the
            # step engine looks them up at every iteration: so does a stepped stretch.
            # (_plan_stretch read it with its own arrivals.)
        fills, deferred_fills, read = s.fills, s.deferred_fills, s.read
        assert deferred_fills is not None
        if len(ends) == 1 and read is not None and not any(fills):
            # (Only evictions change the pool then: with _hit_loss_kept none ends it.)
            watched = set() if self._hit_loss_kept else self._watched_by(read)
            if watched is not None:
                self._extend_deferred_stretch(s, watched)
                return
        j = len(ends)
        t, blocks, kv, B = ends[-1], taken[-1], s.kv, len(s.decode)
        free, limit = s.free, s.limit
        top = min(s.k_max, top)
        cached_blocks = self.cached_blocks
        while j < top and t < limit and blocks + by_offset[j % bs] <= free and not s.grew:
            if self._read_changed(read):
                break
            dt = self._iteration_time(BatchShape(0, 0, 0, 0.0, B, kv))
            new = by_offset[j % bs]
            pool.allocate(new)
            for st, c in fills[j % bs]:
                self._register_full_blocks(st, c + j, c + j + 1)
            self._deferred += deferred_fills[j % bs]
            cached_blocks.append(pool.cached_blocks + self._deferred)
            # Net of the blocks that registering gave back (a block cached already adopted).
            taken_now = free - pool.free_blocks
            s.grew = taken_now < blocks + new
            blocks = taken_now
            t += dt
            kv += B
            ends.append(t)
            dts.append(dt)
            taken.append(blocks)
            j += 1
        s.kv = kv

    def _watched_by(self, read: set[int]) -> set[int] | None:
        """The segments at the boundaries of the read requests' last look-ups, if those are
        up to date (none due, none of those segments changed since); else None."""
        dirty, due, blocks = self.pool.dirty, self._unlooked, self.request_blocks
        watched: set[int] = set()
        for rid in read:
            watch = blocks[rid].watch
            if rid in due or watch is None or not dirty.isdisjoint(watch):
                return None
            watched |= watch
        return watched

    def _extend_deferred_stretch(self, s: _Stretch, watched: set[int]) -> None:
        """``_extend_pooled_stretch`` when every request's filling blocks are deferred
        (``_register_full_blocks``) and what the decision read is up to date: then the pool's
        only change is the eviction of cached blocks, from the head of the free queue, for the
        iterations' new blocks (no block adopts a copy). So the stretch is planned as without
        the cache (``_extend_stretch``), up to the iteration before which an eviction would
        have reached a segment that the read requests' look-ups watch (the step engine looks
        them up again there), and the pool takes all its blocks at once; the cached blocks
        after each iteration follow from how many it evicted."""
        pool = self.pool
        plain = pool.plain_free
        self._extend_stretch(s, STRETCH_STEPS)
        ends, taken = s.ends, s.taken
        if watched and taken[-1] > plain:
            evicted = 0          # the evictions before the queue's chunk reaching a watched one
            for sid, lo, hi in pool.queue:
                if sid in watched and lo < hi:
                    # Iteration j runs if the evictions before it (of iterations 1..j-1) stay
                    # below: taken[j - 1] - plain <= evicted.
                    m = bisect.bisect_right(taken, plain + evicted) + 1
                    if m < len(ends):
                        del ends[m:], s.dts[m:], taken[m:]
                        s.kv = s.kv1 + (m - 1) * len(s.decode)
                        s.k_max = m
                    break
                evicted += hi - lo
                if evicted >= taken[-1] - plain:
                    break
        cached = pool.cached_blocks
        pool.allocate(taken[-1])
        bs = len(s.by_offset)
        fills = s.deferred_fills
        assert fills is not None
        # The deferred blocks after each iteration j >= 1 (a running sum of the fills, which
        # repeat with the block size), and the cached ones: less those evicted since the
        # stretch's first iteration, taken[j] - plain once positive (taken never falls here).
        # Built in C (map, accumulate): a long run has some 100,000 such iterations.
        k = len(ends)
        rotated = fills[1:] + fills[:1]
        deferred = list(itertools.accumulate((rotated * (k // bs + 1))[:k - 1],
                                             initial=self._deferred))
        self._deferred = deferred[-1]
        m = bisect.bisect_right(taken, plain)          # (taken[0] = 0: m >= 1)
        cached_blocks = self.cached_blocks
        cached_blocks.extend(map(cached.__add__, itertools.islice(deferred, 1, m)))
        cached_blocks.extend(map(operator.sub,
                                 map((cached + plain).__add__, itertools.islice(deferred, m, None)),
                                 itertools.islice(taken, m, None)))

    def _extend_stretch(self, s: _Stretch, top: int) -> None:
        """Plan more of stretch ``s``: one by one up to iteration ``top`` (at most
        STRETCH_STEPS), and from iteration STRETCH_STEPS on as arrays, to its end."""
        ends, dts, taken, by_offset = s.ends, s.dts, s.taken, s.by_offset
        bs = len(by_offset)
        j = len(ends)
        t, blocks, kv, B = ends[-1], taken[-1], s.kv, len(s.decode)
        free, limit, k_max = s.free, s.limit, s.k_max
        top = min(k_max, top, STRETCH_STEPS)
        # Iteration j runs if it starts (t, the end of iteration j - 1) before the limit and
        # its blocks fit.
        while j < top and t < limit and blocks + by_offset[j % bs] <= free:
            dt = self._iteration_time(BatchShape(0, 0, 0, 0.0, B, kv))
            blocks += by_offset[j % bs]
            t += dt
            kv += B
            ends.append(t)
            dts.append(dt)
            taken.append(blocks)
            j += 1
        s.kv = kv
        if j == STRETCH_STEPS < k_max and t < limit and blocks + by_offset[j % bs] <= free:
            self._long_stretch(s)

    def _long_stretch(self, s: _Stretch) -> None:
        """Stretch ``s`` beyond its iterations priced one by one: its further iterations
        priced as arrays (``CostModel.decode_stretch_times``), in blocks that double until an
        event bounds them; appended to its ``ends``, ``dts`` and ``taken`` (blocks taken by
        each), iteration j0 = len(ends) at KV ``s.kv`` on."""
        ends, dts, taken = s.ends, s.dts, s.taken
        bs = len(s.by_offset)
        B, kv, free, limit, k_max = len(s.decode), s.kv, s.free, s.limit, s.k_max
        j0 = len(ends)
        t, blocks = ends[-1], taken[-1]
        offsets = np.asarray(s.by_offset)
        n = min(2 * j0, k_max)
        while True:        # iterations j0..n-1 considered
            m = n - j0
            took = blocks + np.cumsum(offsets[np.arange(j0, n) % bs])
            times = np.asarray(self.cost_model.decode_stretch_times(B, kv, m), dtype=float)
            stops = np.cumsum(np.concatenate(((t,), times)))   # iteration j0 + i starts at [i]
            runs = min(int(np.searchsorted(took, free, "right")),
                       int(np.searchsorted(stops[:-1], limit, "left")))
            if runs < m or n == k_max:
                break
            n = min(2 * n, k_max)
        if not (times[:runs] > 0).all():
            i = int(np.argmin(times[:runs] > 0))
            raise self._nonpositive(float(times[i]), BatchShape(0, 0, 0, 0.0, B, kv + i * B))
        ends.extend(stops[1:runs + 1].tolist())
        dts.extend(times[:runs].tolist())
        taken.extend(took[:runs].tolist())
        s.kv = kv + runs * B
        s.k_max = len(ends)        # planned to its end: nothing more to extend

    def _commit_stretch(self, s: _Stretch, k: int) -> None:
        """The first ``k`` iterations of stretch ``s`` start (the first one did, in
        ``_start_iteration``): counters, KV blocks and timeline rows as the step engine has them
        after starting iteration k - 1."""
        extra = k - 1
        if extra == 0:
            return
        bs = self.spec.block_size
        self.iterations += extra
        free = s.free
        used0 = self.spec.num_blocks - free
        if self.pool is None:
            blocks = s.taken[extra]
            self.free_blocks = free - blocks
        else:       # adoptions can give blocks back: the most taken need not be the last
            blocks = max(s.taken[1:k])
            self.free_blocks = self.pool.free_blocks
        if used0 + blocks > self.peak_used_blocks:
            self.peak_used_blocks = used0 + blocks
        last = self.iterations
        for st, c in zip(s.decode, s.ctxs):
            st.kv_blocks += (c + extra) // bs - c // bs
            st._iteration = last
        if self.timeline is not None:
            B = len(s.decode)
            kv1 = s.kv1
            resident, waiting = s.resident, s.waiting
            self.timeline.extend(
                TimelineRow(t, dt, 0, 0, B, kv, (used0 + n) * bs, resident, waiting, 0)
                for t, dt, kv, n in zip(s.ends, s.dts[1:k], range(kv1, kv1 + extra * B, B),
                                        s.taken[1:k]))

    def _stepped_stretch(self, s: _Stretch):
        """Run stretch ``s`` in a cluster: one timeout per iteration, as the step engine takes
        them (so every event keeps its order against the other replicas' and the router's),
        but no decision, admission or per-request update until it ends. It ends at its planned
        end, or at the end of the iteration running when a request arrives here (``_wake``):
        the step engine's next decision there sees the arrival. While it runs, the router reads
        the free blocks (updated as each iteration starts) and the tokens computed so far
        (``uncommitted_tokens``)."""
        env = self.env
        B = len(s.decode)
        free, taken, dts = s.free, s.taken, s.dts
        self._cut = False
        yield env.timeout(dts[0])
        k = 1              # iterations finished
        while not self._cut:
            if k == len(dts):
                # Priced as it goes (most end early); with the cache, iteration k takes its
                # blocks now, as it starts.
                if self.pool is None:
                    self._extend_stretch(s, k + 1)
                else:
                    self._extend_pooled_stretch(s, k + 1)
                if k == len(dts):
                    break
            self.free_blocks = free - taken[k]
            self.uncommitted_tokens = k * B
            yield env.timeout(dts[k])
            k += 1
        self.uncommitted_tokens = 0
        self._commit_stretch(s, k)
        self._finish_stretch(s.decode, k)

    def _run_to_end(self, ends: list[float], dts: list[float]):
        """Advance the clock to the end of a stretch, reading exactly the step engine's time
        there (the iterations' times added one by one). One timeout does when now + (end - now)
        is that time (Sterbenz: whenever end <= 2 now, so nearly always); otherwise hop to the
        furthest iteration end exactly reachable so, or one iteration, as the step engine adds
        it. Returns whether the last timeout was made before the last iteration's start."""
        env = self.env
        end = ends[-1]
        i = 0                 # the clock is at the start of iteration i
        while True:
            now = env.now
            if now + (end - now) == end:
                yield env.timeout(end - now)
                return i < len(ends) - 1
            j = bisect.bisect_right(ends, 2 * now, i) - 1
            if j >= i:
                yield env.timeout(ends[j] - now)     # exact: now <= ends[j] <= 2 now
                i = j + 1
            else:
                yield env.timeout(dts[i])
                i += 1

    def _finish_stretch(self, decode, k: int) -> None:
        """The stretch's ``k`` iterations have run: each request computed and emitted ``k``
        tokens; those whose last token this was complete now."""
        now = self.env.now
        for st in decode:
            st.computed += k
            st.generated += k
            if st.generated == st.output_tokens:
                self._complete(st, now)
        if self.progress is not None:
            self._report_progress()

    def _finish_iteration(self, d) -> None:
        now = self.env.now
        for st, n in d.prefill:
            st.computed += n
            if st.computed == st.prompt_tokens + st.generated:
                self._emit_token(st, now)
        for st in d.decode:
            # _emit_token inlined for the common case (hot): a decoding request already has
            # its first token, so only completion needs handling.
            st.computed += 1
            st.generated += 1
            if st.generated == st.output_tokens:
                self._complete(st, now)
        if self.progress is not None:
            self._report_progress()

    def _report_progress(self) -> None:
        """Every 1,024 iterations, once they have run (a stretch may pass several at once)."""
        if self.iterations >= self._progress_at:
            self._progress_at = self.iterations - self.iterations % 1024 + 1024
            self.progress(self.finished, self.total or 0)

    def _emit_token(self, st: RequestState, now: float) -> None:
        st.generated += 1
        if st.first_token_s is None:
            st.first_token_s = now
        if st.generated == st.output_tokens:
            self._complete(st, now)

    def _complete(self, st: RequestState, now: float) -> None:
        st.status = Status.FINISHED
        st.finished_s = now
        self._free_kv(st, finished=True)
        if self.pool is not None:
            del self.request_blocks[st.request_id]
        del self.resident[st.request_id]
        self.unfinished -= 1
        self.finished += 1
        self._preempted_since_finish = 0
        self.policy.on_finish(st)
        if self.turns.waiting:
            self._ended(st)


def _watch(watchers: dict[int, set[int]], rid: int, old: Iterable[int] | None,
           boundaries: Iterable[int | None] | None) -> set[int] | None:
    """Index request ``rid`` in ``watchers`` by the segments at its look-up's boundaries (for
    ``_waiting_in``, its chain's) instead of by ``old`` (None: by none); returns the segments
    it is indexed by now. A
    segment's watchers are dropped from the index when it changes (``_look_up_prefixes``), so
    ``rid`` may be missing under ``old``'s segments, and is indexed again under each of its
    new ones."""
    if boundaries is None:
        watch = None
    else:
        watch = set(boundaries)      # (read only once made)
        watch.discard(None)
    if old:
        _unindex(watchers, rid, old)
    if watch:
        _index(watchers, rid, watch)
    return watch


def _mark_watchers(watchers: dict[int, set[int]], changed: set[int], due: set[int]) -> None:
    """The requests watching a ``changed`` segment are ``due`` (looked up again before they are
    read), and leave its index until then."""
    for sid in watchers.keys() & changed:     # (a set operation: iterates the smaller one)
        due |= watchers.pop(sid)


def _index(index: dict[int, set[int]], rid: int, sids: Iterable[int]) -> None:
    """Request ``rid`` under each of ``sids`` in ``index``."""
    for sid in sids:
        ids = index.get(sid)
        if ids is None:
            index[sid] = {rid}
        else:
            ids.add(rid)


def _unindex(index: dict[int, set[int]], rid: int, sids: Iterable[int]) -> None:
    """Request ``rid`` no longer under ``sids`` in ``index`` (where it still is)."""
    for sid in sids:
        ids = index.get(sid)
        if ids is not None:
            ids.discard(rid)
            if not ids:
                del index[sid]


def native_engine(cfg: RunConfig, workload: Workload, policy: Policy, spec: ReplicaSpec,
                  progress: Callable[[int, int], None] | None = None) -> Engine:
    """servesim's own engine for a run (``RunConfig.engine`` "native")."""
    return Engine(workload.requests(), policy, spec.cost_model, spec,
                  record_timeline=cfg.timeline, progress=progress, total=len(workload),
                  preemption=cfg.preemption,
                  prefix_caching=prefix_caching_on(cfg.prefix_caching, workload),
                  stepwise=cfg.stepwise)


def prefix_caching_on(setting: bool | None, workload: Workload) -> bool:
    """``--prefix-caching`` as given, or, unset, on when the workload's requests share prefixes
    (a trace's hash_ids, a system prompt, sessions): docs/prefix-caching.md says why."""
    return bool(workload.prefix_columns) if setting is None else setting


register_engine("native", native_engine)
