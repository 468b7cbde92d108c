"""Prefill/decode disaggregation: a prefill pool and a decode pool on one SimPy clock.

A request is routed (the prefill pool's router, scheduler/routers.py) to a prefill replica,
which computes its prompt and samples its first token (TTFT ends there) as a request with one
output token would. Its KV stays held there while it moves to a decode replica, chosen at that
instant by the decode pool's router, over the prefill replica's KV link: one transfer at a time
per link, in the order their prefills ended (a SimPy ``Resource``), each taking the link's fixed
latency plus the prompt's KV bytes over its bandwidth. When the transfer ends the prefill replica
frees those blocks, and the decode replica receives the request with its prompt in cache
(computed = prompt, generated = 1): its policy sees an arrival that needs no prefill and admits
it when it chooses, and the replica decodes the rest. Every replica is an unchanged ``Engine``
(simulator/engine.py), with its own policy, cost model and KV cache.

What is modelled and what is not is in docs/clusters.md (a link per prefill replica, contention
among its own transfers only; the decode replica's network side is not a bottleneck; a request
waiting for admission on the decode side holds no KV there).
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import simpy

from scheduler.base import Policy
from scheduler.routers import Router
from scheduler.state import ReplicaSpec, RequestState, Status
from simulator.cluster import EngineLoad
from simulator.engine import Engine, EngineResult, arrival_rejection, reject
from simulator.errors import PolicyViolation
from traces.request import Request


@dataclass(frozen=True)
class KVLink:
    """One prefill replica's link to the decode pool."""

    gbps: float                    # gigabits per second
    latency_s: float               # fixed, per transfer

    def transfer_s(self, kv_bytes: int) -> float:
        return self.latency_s + kv_bytes * 8 / (self.gbps * 1e9)

    def describe(self) -> dict:
        return {"kv_link_gbps": self.gbps, "kv_link_latency_ms": self.latency_s * 1e3,
                "link_contention": "one link per prefill replica, transfers in FIFO order"}


@dataclass
class Handoff:
    """How one request crossed from the prefill pool to the decode pool (-1 and NaN where it
    did not: refused before prefill, rejected on the prefill side, or a one-token output)."""

    prefill_replica: int = -1
    decode_replica: int = -1
    link_wait_s: float = float("nan")     # first token -> its transfer starts (link busy)
    transfer_s: float = float("nan")      # latency + prompt KV bytes / bandwidth


class PrefillReplica(Engine):
    """A prefill replica: its requests end at their first token (``handed``), their KV held
    until ``release`` gives it back when the transfer ends."""

    def __init__(self, *args, handed: Callable[["PrefillReplica", RequestState, int], None],
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.index = -1
        self.handed = handed
        self.held_blocks = 0

    def _complete(self, st: RequestState, now: float) -> None:
        blocks = st.kv_blocks
        super()._complete(st, now)
        self.free_blocks -= blocks          # still held: the transfer reads them
        self.held_blocks += blocks
        self.handed(self, st, blocks)

    def _start(self) -> None:
        super()._start()
        # Its free blocks change between iterations (``release``), which a stretch, keeping
        # them as it planned them, would overwrite. (Its requests end at their first token, so
        # it never runs a decode-only batch anyway.)
        self._stretches = False

    def release(self, blocks: int) -> None:
        self.free_blocks += blocks
        self.held_blocks -= blocks
        self._wake()

    def _sleep(self, wake_at, who, unfinished):
        if self.held_blocks and wake_at is None:
            # Blocks held for transfers come back when they end (``release`` wakes the
            # replica): waiting for them is not a stall, even after the last arrival.
            self._idle = self.env.event()
            yield self._idle
            self._idle = None
            return
        yield from super()._sleep(wake_at, who, unfinished)


class DecodeLoad(EngineLoad):
    """A decode replica's load as its router reads it: requests on their way to it (KV in
    transfer) count among its outstanding requests (and their tokens among its pending ones)."""

    __slots__ = ("incoming",)

    def __init__(self, index: int, engine: Engine):
        super().__init__(index, engine)
        self.incoming = 0

    @property
    def outstanding(self) -> int:
        return self.engine.unfinished + self.incoming


@dataclass
class DisaggResult:
    """Every request's final state in arrival order (its decode state once handed over), how it
    crossed (``handoffs``), and each pool's replicas' results."""

    states: list[RequestState]
    handoffs: list[Handoff]
    prefill: list[EngineResult]
    decode: list[EngineResult]
    end_s: float
    wall_s: float


def _checked(router: Router, i, n: int, now: float, r: Request, pool: str) -> int:
    if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n:
        raise PolicyViolation(f"{pool} router {router.name} at t={now:.6f}s returned {i!r} for "
                              f"request {r.request_id}; replicas are 0..{n - 1}")
    return int(i)


class Disaggregated:
    """Serves ``requests`` on ``num_prefill`` prefill replicas and ``num_decode`` decode
    replicas built by ``make_prefill(index, env, handed)`` and ``make_decode(index, env)``,
    each request's prompt KV (``kv_bytes_per_token`` x prompt tokens) sent over ``link``."""

    def __init__(self, requests: Iterable[Request], prefill_router: Router, decode_router: Router,
                 make_prefill: Callable[..., PrefillReplica],
                 make_decode: Callable[[int, simpy.Environment], Engine],
                 num_prefill: int, num_decode: int, link: KVLink, kv_bytes_per_token: int, *,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None,
                 total: int | None = None):
        self.env = env = simpy.Environment()
        self.requests = requests
        self.prefill_router, self.decode_router = prefill_router, decode_router
        self.prefill = [make_prefill(i, env, self._handed) for i in range(num_prefill)]
        for i, e in enumerate(self.prefill):
            e.index = i
        self.decode = [make_decode(j, env) for j in range(num_decode)]
        self.prefill_loads = tuple(EngineLoad(i, e) for i, e in enumerate(self.prefill))
        self.decode_loads = tuple(DecodeLoad(j, e) for j, e in enumerate(self.decode))
        self.links = [simpy.Resource(env, capacity=1) for _ in self.prefill]
        self.link = link
        self.kv_bytes_per_token = kv_bytes_per_token
        self.seed = seed
        self.progress = progress
        self.total = total
        self.states: list[RequestState] = []
        self.handoffs: list[Handoff] = []
        self._row: dict[int, tuple[int, Request]] = {}    # request id -> (row, request)
        self._transfers: list[simpy.Process] = []

    def run(self) -> DisaggResult:
        wall0 = time.perf_counter()
        env = self.env
        self.prefill_router.bind(len(self.prefill), self.seed)
        self.decode_router.bind(len(self.decode), self.seed)
        for e in self.prefill + self.decode:
            e._start()
        prefills = [env.process(e._replica()) for e in self.prefill]
        decodes = [env.process(e._replica()) for e in self.decode]
        env.process(self._arrivals())
        env.process(self._close_decode(prefills))
        if self.progress is not None:
            self.progress(0, self.total or 0)
        env.run(until=simpy.AllOf(env, decodes))
        wall = time.perf_counter() - wall0
        for st in self.states:
            if st.status is Status.REJECTED:     # on the prefill side: its true output length
                st.output_tokens = self._row[st.request_id][1].output_tokens
        if self.progress is not None:
            self.progress(self._finished(), self.total or 0)

        def result(e: Engine) -> EngineResult:
            return EngineResult(e.states, e.timeline, env.now, e.iterations, e.preemptions,
                                e.peak_used_blocks, e.spec, wall_s=wall)
        return DisaggResult(self.states, self.handoffs, [result(e) for e in self.prefill],
                            [result(e) for e in self.decode], env.now, wall)

    def _finished(self) -> int:
        return sum(st.status is Status.FINISHED for st in self.states)

    def _arrivals(self):
        env, router, loads = self.env, self.prefill_router, self.prefill_loads
        decode_spec = self.decode[0].spec
        for r in self.requests:
            delay = r.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._row[r.request_id] = (len(self.states), r)
            self.handoffs.append(Handoff())
            # A request the decode pool can never hold is refused before its prefill is spent.
            st = RequestState(r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens,
                              r.label)
            rejection = arrival_rejection(decode_spec, st)
            if rejection is not None:
                reject(st, *rejection)
                self.states.append(st)
                continue
            i = _checked(router, router.route(r, loads), len(loads), env.now, r, "prefill")
            # The prefill replica's job: the prompt and the first token.
            st = self.prefill[i].arrive(dataclasses.replace(r, output_tokens=1))
            loads[i]._outstanding.append(st)
            self.states.append(st)
            self.handoffs[-1].prefill_replica = i
            if self.progress is not None and len(self.states) % 4096 == 0:
                self.progress(self._finished(), self.total or 0)
        for e in self.prefill:
            e.end_arrivals()

    def _handed(self, replica: PrefillReplica, pst: RequestState, blocks: int) -> None:
        """``pst`` has its first token on ``replica``: send its KV to a decode replica."""
        row, r = self._row[pst.request_id]
        if r.output_tokens == 1:             # done: nothing to decode
            replica.release(blocks)
            return
        j = _checked(self.decode_router, self.decode_router.route(r, self.decode_loads),
                     len(self.decode), self.env.now, r, "decode")
        st = RequestState(r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.label)
        st.computed, st.generated = r.prompt_tokens, 1
        st.first_scheduled_s, st.first_token_s = pst.first_scheduled_s, pst.first_token_s
        st.preemptions = pst.preemptions
        self.states[row] = st
        self.handoffs[row].decode_replica = j
        load = self.decode_loads[j]
        load.incoming += 1
        load._outstanding.append(st)
        self._transfers.append(self.env.process(self._transfer(replica, blocks, load, st, r)))

    def _transfer(self, replica: PrefillReplica, blocks: int, load: DecodeLoad,
                  st: RequestState, r: Request):
        env = self.env
        ready = env.now
        seconds = self.link.transfer_s(r.prompt_tokens * self.kv_bytes_per_token)
        with self.links[replica.index].request() as turn:
            yield turn
            handoff = self.handoffs[self._row[r.request_id][0]]
            handoff.link_wait_s = env.now - ready
            handoff.transfer_s = seconds
            yield env.timeout(seconds)
        replica.release(blocks)
        load.incoming -= 1
        load.engine.receive(st, r)

    def _close_decode(self, prefills: Sequence[simpy.Process]):
        """The decode pool's arrivals end when every prefill replica has drained and the last
        transfer has landed."""
        yield simpy.AllOf(self.env, prefills)
        yield simpy.AllOf(self.env, self._transfers)
        for e in self.decode:
            e.end_arrivals()


def native_disaggregated(requests: Iterable[Request], prefill_router: Router,
                         decode_router: Router, prefill: tuple[Sequence[Policy], ReplicaSpec],
                         decode: tuple[Sequence[Policy], ReplicaSpec], link: KVLink,
                         kv_bytes_per_token: int, *, record_timeline: bool = True,
                         preemption: str = "recompute", seed: int = 0,
                         progress: Callable[[int, int], None] | None = None,
                         total: int | None = None, stepwise: bool = False) -> Disaggregated:
    """Disaggregated serving on servesim's own engines: each pool a (policies, spec) pair,
    replica i of a pool running ``policies[i]``; every iteration on its own if
    ``stepwise``."""
    (p_policies, p_spec), (d_policies, d_spec) = prefill, decode

    def make_prefill(i: int, env: simpy.Environment, handed) -> PrefillReplica:
        return PrefillReplica((), p_policies[i], p_spec.cost_model, p_spec,
                              record_timeline=record_timeline, preemption=preemption, env=env,
                              stepwise=stepwise, handed=handed)

    def make_decode(j: int, env: simpy.Environment) -> Engine:
        return Engine((), d_policies[j], d_spec.cost_model, d_spec,
                      record_timeline=record_timeline, preemption=preemption, env=env,
                      stepwise=stepwise)
    return Disaggregated(requests, prefill_router, decode_router, make_prefill, make_decode,
                         len(p_policies), len(d_policies), link, kv_bytes_per_token, seed=seed,
                         progress=progress, total=total)
