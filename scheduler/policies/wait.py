"""WAIT and Nested WAIT: fluid-guided threshold batching.

R. Ao, G. Luo, D. Simchi-Levi, X. Wang, "Optimizing LLM Inference: Fluid-Guided Online Scheduling
with Memory Constraints", arXiv:2504.11320. Thresholds come from ``scheduler.fluid``.

Both policies run *gates*: a pipeline of stages (the engine's stage = output tokens generated so
far) with a per-stage cap n and an entry queue. WAIT (output lengths known) has one gate per
request type, each advancing on its own; Nested WAIT (lengths unknown) cuts the decode into
segments, whose entries beyond the first are the previous segment's survivors waiting with their
KV resident, and runs segments 1..k for the largest k whose entries all reached their thresholds
(the prefix rule). An open gate runs min(n, queue) requests of each of its stages; a closed gate's
requests stay paused with their KV resident. With thresholds meeting the fluid conditions, every
stage holds at most n requests, so memory stays within M_pi = sum n_j w_j and nothing is evicted.

Decisions the paper leaves open (stated in the README):
- Fractional thresholds. Long outputs can make even one request per stage exceed the memory
  (p512d1000: 1.0e6 KV tokens per full pipeline against 1.37e5), so a gate's n may be below one
  (or any real). A gate then admits n per run on average through a token bucket of depth ceil(n)
  (as the authors' simulator rotates fractional per-stage limits), holds at most ceil(n) requests
  per stage and n x stages in all (its budget, the paper's tl). For an integer n the bucket holds
  exactly n, the budget never binds, and this is the paper's rule.
- Patience. A closed gate holding work is released when the time it has waited plus the expected
  time for its entry to fill ((n - queue) / rate) reaches ``patience`` (default: patience_factor x
  the fluid iteration time d0 + d1 M_pi). At heavy load the entry is nearly full after every
  iteration and the gate waits as the paper says; when arrivals are sparse (low load, a pause,
  the end of a run) the wait would be long and the gate runs at once; after the last arrival
  every gate runs (drain). So every request completes, and low-load latency stays close to a
  greedy policy's. A fractional threshold's pacing is likewise skipped for a request that has
  waited ``patience``; and with a fractional threshold every new admission must keep the
  projected KV of all resident requests within capacity until they finish (WAIT knows their
  lengths; Nested WAIT projects each to the end of its current segment), so at low load pacing
  costs no latency, and under overload, with the memory full, the pacing holds.
- Memory repair. The engine never lets KV exceed capacity, so the paper's "after each iteration,
  while KV > C, evict" becomes a check before launching: if the batch's new KV blocks do not fit,
  Nested WAIT evicts requests waiting at segment boundaries, most recently admitted first, back to
  the prefill queue (the paper's repair), then trims new admissions; WAIT trims admissions first,
  then evicts paused requests; the last resort is vLLM's recompute preemption of the latest
  admitted request.
- Chunked prefill (``chunk_size`` > 0, the paper's WAIT-CP). A prompt takes ceil(l / cs) chunk
  stages. A gate opens when its entry holds its quota OR entry + occupied >= its budget
  (n x its stages); an open gate advances every request in it and admits FCFS up to the
  remaining budget, keeping a KV watermark free at admission. Gates open independently (no
  prefix rule), as in the authors' WAIT-CP.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from scheduler.base import Policy, PolicyError, param, register
from scheduler.fluid import (CLUSTERINGS, FluidType, check_wait, from_request_types,
                             nested_plan, types_from_lengths, wait_thresholds, with_hit_rate)
from scheduler.kvbudget import watermark_blocks
from scheduler.kvprojection import MemoryProfile, projected
from scheduler.plan import StepPlan
from scheduler.queues import FCFSQueue
from scheduler.state import Decision, RequestState, Status, WorkloadHint

_EPS = 1e-9
UNKNOWN_RATE = 0.01    # requests/s assumed when the hint gives lengths but no rate
# Without a workload description a gate's arrival rate is measured: an exponentially decayed
# count of its arrivals with this time constant, in patience times (long enough to average
# several thresholds' worth of arrivals under load, short enough to notice a pause soon).
RATE_MEMORY = 10.0


@dataclass(eq=False)
class Gate:
    """One threshold-controlled pipeline: a WAIT type or a Nested WAIT segment."""

    name: str
    cap: float                 # n: requests per stage (real)
    rate: float | None         # arrival rate into the entry (lambda_j, or Lambda_k); None: measured
    start: int                 # first stage (output tokens generated) of the gate
    stages: int                # stages it spans (chunk stages included)
    queue: FCFSQueue | None = None   # entry of waiting requests (no KV); None for boundary entries
    blocked_since: float | None = None
    measured: float = 0.0      # rate None: decayed arrival count / time constant (requests/s) ...
    measured_at: float = -math.inf   # ... as of this time
    credit: float = math.inf   # admissions available (a token bucket: n per run, at most ceil(n))
    # filled by each schedule call:
    entry: list = field(default_factory=list)
    inflight: list = field(default_factory=list)

    @property
    def stage_cap(self) -> int:
        """Requests per stage: ceil(n), at least one."""
        return max(1, math.ceil(self.cap - _EPS))

    @property
    def budget(self) -> int:
        """Requests in the gate at once: n x stages, at least one (the paper's tl for a gate)."""
        return max(1, round(self.cap * self.stages))

    def entries(self) -> int:
        return len(self.queue) if self.queue is not None else len(self.entry)

    def quota(self) -> int:
        """Entries admitted when the gate runs: n for an integer n (the paper's rule). A fractional
        n is realised by a token bucket that gains n per run and holds at most ceil(n), so the
        gate admits n per iteration on average with bursts of at most ceil(n); an empty gate
        may always admit one; and the gate never holds more than its budget."""
        q = int(math.floor(min(self.credit + self.cap, self.stage_cap) + _EPS))
        if not self.inflight:
            q = max(q, 1)
        return min(q, self.budget - len(self.inflight))

    def ran(self, admitted: int) -> None:
        """Refill the bucket by n for this run, take the admissions out, then cap it at ceil(n).

        Capping after the admissions (not before) carries the fractional remainder to the next
        run, so a gate admits n per run on average; capping first lost it (n = 1.85 admitted
        1, 2, 1, 2, ...: 1.5 per run)."""
        self.credit = min(max(0.0, self.credit + self.cap - admitted), self.stage_cap)

    def has_work(self) -> bool:
        return bool(self.inflight) or self.entries() > 0


@dataclass
class ThresholdParams:
    slack: float = param(0.1, "eps: thresholds n = (1 + eps) x the fluid equilibrium's", minimum=0.0)
    d0: float | None = param(None, "linear cost d0 in seconds (default: fitted to the run's cost "
                                   "model)", minimum=0.0)
    d1: float | None = param(None, "linear cost d1 in seconds per KV token (default: fitted)",
                             minimum=0.0)
    patience: float | None = param(None, "seconds a closed gate may hold work, counting the "
                                         "expected time to fill (default: patience_factor x the "
                                         "fluid iteration time)", minimum=0.0)
    patience_factor: float = param(1.0, "default patience in fluid iteration times", minimum=0.0)
    chunk_size: int = param(0, "chunked-prefill variant: prefill chunk in tokens (0: whole "
                               "prompts)", minimum=0)
    watermark: float = param(0.01, "chunked variant: fraction of KV blocks kept free at "
                                   "admission", minimum=0.0)
    segments: int | None = param(None, "cluster the workload's output lengths into this many "
                                       "types/segments (default: the declared types, else 10)",
                                 minimum=1)
    clustering: str = param("equal-width", "how output lengths are clustered",
                            choices=CLUSTERINGS)


class ThresholdPolicy(Policy):
    """Shared machinery of WAIT and Nested WAIT; subclasses build the gates and place requests."""

    prefix_rule = False          # Nested WAIT (whole prompts): run segments 1..k only
    evict_boundary_first = False
    _at_boundary: dict[int, tuple[int, float]]   # Nested WAIT: request -> (segment, since when)

    # -- set-up -------------------------------------------------------------------------------
    def bind(self, spec):
        super().bind(spec)
        p = self.params
        self.hint = spec.workload_hint or WorkloadHint()
        self.capacity = spec.kv_capacity_tokens
        self.cs = p.chunk_size
        self.watermark_blocks = watermark_blocks(spec.num_blocks, p.watermark) if self.cs else 0
        self.gates: list[Gate] = []
        self.info: dict = {}
        self.build()
        dT = self.info["dT"]
        self.patience = p.patience if p.patience is not None else p.patience_factor * dT
        self.info["patience_s"] = self.patience
        self.rate_memory = max(RATE_MEMORY * self.patience, _EPS)
        self._batch: set[int] = set()
        self._now = 0.0

    def workload_described(self) -> bool:
        return self.hint.described

    def workload_types(self, representative: str) -> list[FluidType]:
        """The workload's types: declared ones (``--type``), or its output lengths clustered
        (when ``workload_described``), their prefills finding the hint's hit rate cached."""
        p, hint = self.params, self.hint
        declared, lengths = hint.types, hint.lengths
        if hint.hit_rate:
            self.info["hit_rate"] = hint.hit_rate
        if declared and (p.segments is None or lengths is None):
            return with_hit_rate(from_request_types(declared), hint.hit_rate)
        rate = hint.arrival_rate
        if not rate or not math.isfinite(rate):   # one request, or one instant: plan light load
            rate = UNKNOWN_RATE
            self.info["rate_assumed"] = rate
        return with_hit_rate(types_from_lengths(lengths[0], lengths[1], rate, p.segments or 10,
                                                p.clustering, representative), hint.hit_rate)

    def linear_cost(self, types: list[FluidType]) -> tuple[float, float]:
        p = self.params
        if p.d0 is not None and p.d1 is not None:
            self.info.update(d0=p.d0, d1=p.d1, cost_fit="given")
            return p.d0, p.d1
        if self.hint.cost_fit is None:
            raise PolicyError(f"policy {self.name}: no cost model to fit d0 and d1 to: give "
                              f"d0=SECONDS and d1=SECONDS_PER_KV_TOKEN")
        fit = self.hint.cost_fit(types, self.capacity, self.spec.max_model_len)
        d0 = p.d0 if p.d0 is not None else fit.d0
        d1 = p.d1 if p.d1 is not None else fit.d1
        self.info.update(d0=d0, d1=d1, cost_fit=fit.source, fit_max_rel_error=fit.max_rel_error)
        return d0, d1

    def prefill_stages(self, prompt: float) -> int:
        return math.ceil(prompt / self.cs) if self.cs else 1

    def single_gate(self, given: list[float] | None) -> Gate:
        """Without a workload description (a live server whose plug-in configuration names no
        workload) there are no types, segments, rates or fluid thresholds: explicit ``thresholds``
        (one value) and ``patience`` make one gate for every request. Its arrival rate, which the
        patience rule needs (a gate runs when its wait plus the expected time to fill reaches
        ``patience``), is measured from the arrivals (``RATE_MEMORY``)."""
        p = self.params
        if given is None or p.patience is None:
            raise PolicyError(
                f"policy {self.name} needs the workload's request types or its length "
                f"distribution (the run's workload; in vLLM, SERVESIM_WORKLOAD or "
                f"SERVESIM_POLICY_CONFIG), or else explicit thresholds=N and patience=SECONDS")
        if len(given) != 1:
            raise PolicyError(f"policy {self.name}: without a workload description there are no "
                              f"types or segments: give one threshold, not {len(given)}")
        longest = self.spec.max_model_len      # no request runs more stages than this
        gate = Gate("all requests", given[0], None, 0,
                    self.prefill_stages(longest) + longest - 1, FCFSQueue())
        self.gates = [gate]
        self.M_pi = None
        self.info.update(workload="not described", thresholds=list(given), M_pi=None, dT=None)
        return gate

    def describe(self) -> dict:
        return {**super().describe(), **self.info}

    # -- hooks for subclasses --------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def place(self, req: RequestState) -> None:
        """Put a resident request in its gate's ``inflight`` or boundary ``entry``."""
        raise NotImplementedError

    def entry_gate(self, req: RequestState) -> Gate:
        """The gate whose queue a waiting (new or preempted) request joins."""
        raise NotImplementedError

    # -- events ---------------------------------------------------------------------------------
    def on_arrival(self, req):
        g = self.entry_gate(req)
        g.queue.append(req)
        if g.rate is None:
            g.measured = self.measured_rate(g, req.arrival_s) + 1 / self.rate_memory
            g.measured_at = max(g.measured_at, req.arrival_s)

    def measured_rate(self, g: Gate, now: float) -> float:
        """Arrivals per second into ``g``, from the ones seen (gates whose rate is unknown)."""
        if g.measured_at > now:
            return g.measured
        return g.measured * math.exp(-(now - g.measured_at) / self.rate_memory)

    def requeue(self, req):
        self.entry_gate(req).queue.prepend(req)

    def on_requeue(self, req):
        """The engine sent ``req`` back to waiting (vLLM refused an admission or preempted it):
        the front of its entry queue, as the policy's own evictions (WAIT: its type's gate;
        Nested WAIT: the prefill queue, whatever segment it had reached)."""
        self.requeue(req)

    def is_queued(self, req):
        return req in self.entry_gate(req).queue

    def on_abort(self, req):
        """Gone before finishing: out of its entry queue if it waits there (a resident request
        is in no queue: gates are rebuilt from the engine's view every step), then forgotten."""
        if req.status is Status.WAITING:
            self.entry_gate(req).queue.remove(req)
        self.on_finish(req)

    # -- one step -------------------------------------------------------------------------------
    def ready(self, g: Gate, now: float, pending: bool) -> bool:
        q = g.quota()
        entries = g.entries()
        if entries >= q:          # also when the budget is used up (q <= 0): in-flight advance
            return True
        if self.cs and entries and entries + len(g.inflight) >= g.budget:
            return True
        if not pending:
            return False
        return self.waited(g, now) + self.fill_time(g) >= self.patience - _EPS

    def waited(self, g: Gate, now: float) -> float:
        return now - g.blocked_since if g.blocked_since is not None else 0.0

    def fill_time(self, g: Gate) -> float:
        missing = g.quota() - g.entries()
        if missing <= 0:
            return 0.0
        rate = g.rate if g.rate is not None else self.measured_rate(g, self._now)
        return missing / rate if rate > 0 else math.inf

    def pending(self) -> list[bool]:
        """Whether each gate holds work it is (or, by the prefix rule, later gates are) waiting on."""
        work = [g.has_work() for g in self.gates]
        if not self.prefix_rule:
            return work
        out, later = [False] * len(work), False
        for i in range(len(work) - 1, -1, -1):
            later = later or work[i]
            out[i] = later
        return out

    def schedule(self, view):
        now = self._now = view.now
        self._profile = None
        for g in self.gates:
            g.entry, g.inflight = [], []
        for req in view.resident:
            self.place(req)
        pending = self.pending()
        if view.arrivals_done:
            ready = [True] * len(self.gates)
        else:
            ready = [self.ready(g, now, pend) for g, pend in zip(self.gates, pending)]
        if self.prefix_rule:
            k = next((i for i, r in enumerate(ready) if not r), len(ready))
            opened = self.gates[:k]
        else:
            opened = [g for g, r in zip(self.gates, ready) if r]

        work: list[tuple[RequestState, int]] = []     # resident requests and their tokens
        admits: list[tuple[RequestState, Gate]] = []
        ran: dict[int, int] = {}                         # id(gate) -> entries taken
        for g in opened:
            before = len(work) + len(admits)
            taken = self.select(g, work, admits, view)
            if len(work) + len(admits) > before:
                ran[id(g)] = taken
        d = self.plan(view, work, admits)

        for g, pend in zip(self.gates, pending):
            if id(g) in ran:
                g.ran(ran[id(g)])
                g.blocked_since = None
            elif pend:
                if g.blocked_since is None:
                    g.blocked_since = now
            else:
                g.blocked_since = None
        if d.empty:
            d.wake_at = self.next_release(now, pending, ready)
        return d

    def select(self, g: Gate, work: list, admits: list, view) -> int:
        """Pick the gate's requests for this iteration: its quota of entries, and every in-flight
        request (chunked variant) or min(n, queue) of each stage (the paper's rule). Returns the
        number of entries taken."""
        if self.cs:
            for req in g.inflight:
                work.append((req, self.tokens(req)))
        else:
            by_stage: dict[int, list] = {}
            for req in g.inflight:
                by_stage.setdefault(req.generated, []).append(req)
            cap = g.stage_cap
            for reqs in by_stage.values():
                for req in reqs[:cap]:
                    work.append((req, 1))
        take = max(g.quota(), 0)
        if g.cap < 1 - _EPS:
            return self.select_paced(g, take, view, work, admits)
        if g.queue is not None:
            take = min(take, len(g.queue))
            for _ in range(take):
                admits.append((g.queue.pop(), g))
        else:
            take = min(take, len(g.entry))
            for req in g.entry[:take]:
                work.append((req, self.tokens(req)))
        return take

    def select_paced(self, g: Gate, take: int, view, work: list, admits: list) -> int:
        """Entries of a gate with a fractional threshold (below one request per stage): the
        bucket's quota, or, once the head of the entry has waited ``patience``, one anyway; each
        only if the projected KV of every resident request and the admitted ones stays within
        capacity (over the lengths ``expected_output`` gives). At low load this admits at once;
        under overload the memory is full and the pacing holds without evictions (with a single
        request per stage, pacing alone cannot stop admissions from bunching into consecutive
        stages whose peaks coincide)."""
        entries = list(g.queue) if g.queue is not None else g.entry
        if not take and entries and (view.arrivals_done or
                                     self.entry_wait(g, entries[0], view.now) >= self.patience):
            take = 1
        taken = 0
        for req in entries[:take]:
            if g.queue is None:        # a boundary waiter: resident, already in the projection
                work.append((req, self.tokens(req)))
            elif self.projection_fits(req, view, admits):
                admits.append((g.queue.pop(), g))
            else:
                break
            taken += 1
        return taken

    def entry_wait(self, g: Gate, req: RequestState, now: float) -> float:
        """How long a request has waited at the gate's entry."""
        if g.queue is not None:
            return now - req.arrival_s
        return now - self._at_boundary.get(req.request_id, (None, now))[1]

    def projection_fits(self, req: RequestState, view, admits: list) -> bool:
        if not view.resident and not admits:
            return True    # alone it fits: the engine admitted it knowing its true peak
        block_size = self.spec.block_size
        if self._profile is None:
            reqs = list(view.resident) + [r for r, _ in admits]
            self._profile = MemoryProfile.of(reqs, self.expected_output, block_size,
                                             self.capacity)
        base, rounds = projected(req, self.expected_output(req), block_size)
        if not self._profile.fits(base, rounds):
            return False
        self._profile.add(base, rounds)
        return True

    def expected_output(self, req: RequestState) -> float:
        """Output length used to project a request's memory."""
        raise NotImplementedError

    def tokens(self, req: RequestState) -> int:
        n = req.remaining
        return min(n, self.cs) if self.cs and req.is_prefill else n

    def plan(self, view, work, admits) -> Decision:
        self._batch = {id(r) for r, _ in work}
        # Memory is the thresholds' and the projection's job: a chunk is admitted when it fits.
        plan = StepPlan(view, math.inf, watermark_blocks=self.watermark_blocks,
                        pick_victim=self.victim, on_preempt=self.requeue,
                        reserve_full_prompt=False)
        need = sum(plan.kv.need(r, n) for r, n in work) + \
            sum(plan.kv.need(r, self.tokens(r)) for r, _ in admits)
        if need > plan.kv.free:
            need = self.repair(plan, view, work, admits, need)
        for req, n in work:
            if not plan.is_preempted(req):
                plan.schedule_resident(req, n)
        for i, (req, g) in enumerate(admits):
            if not plan.admit(req, self.tokens(req), keep_watermark=bool(self.cs)):
                for back, bg in reversed(admits[i:]):
                    bg.queue.prepend(back)
                break
        return plan.decision()

    def repair(self, plan: StepPlan, view, work, admits, need: int) -> int:
        """Make the batch's new KV fit: evict paused requests (boundary waiters first for Nested
        WAIT) and trim new admissions, in the policy's order. Returns the remaining need."""
        paused = [r for r in view.resident if id(r) not in self._batch]
        if self.evict_boundary_first:
            boundary = {id(r) for g in self.gates for r in g.entry}
            paused = [r for r in paused if id(r) in boundary]
        paused.sort(key=lambda r: r.admitted_seq)

        def evict():
            nonlocal need
            while need > plan.kv.free and paused:
                plan.preempt(paused.pop())

        def trim():
            nonlocal need
            while need > plan.kv.free and admits:
                req, g = admits.pop()
                need -= plan.kv.need(req, self.tokens(req))
                g.queue.prepend(req)

        for step in ((evict, trim) if self.evict_boundary_first else (trim, evict)):
            step()
        return need

    def victim(self, running: list) -> RequestState:
        """Last-resort preemption: the latest admitted request not in this batch, else the latest."""
        for req in reversed(running):
            if id(req) not in self._batch:
                return req
        return running[-1]

    def next_release(self, now: float, pending: list[bool], ready: list[bool]) -> float | None:
        """With nothing to run: when the earliest closed gate holding work reaches its patience."""
        times = []
        for g, pend, r in zip(self.gates, pending, ready):
            if pend and not r:
                start = g.blocked_since if g.blocked_since is not None else now
                times.append(start + self.patience - self.fill_time(g))
            elif r and g.cap < 1 - _EPS and g.entries():   # a paced entry's patience
                head = g.queue.peek() if g.queue is not None else g.entry[0]
                due = now - self.entry_wait(g, head, now) + self.patience
                if due > now:      # (once due, only memory holds it: a completion will wake us)
                    times.append(due)
        if not times:
            return None
        return max(min(times), now + 1e-6)


def _floats(text: str | None, what: str, policy: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in str(text).replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise PolicyError(f"policy {policy}: {what} must be comma-separated numbers, got {text!r}")
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise PolicyError(f"policy {policy}: {what} must be positive numbers, got {text!r}")
    return values


# --------------------------------------------------------------------------------------------

@dataclass
class WaitParams(ThresholdParams):
    thresholds: str | None = param(None, "per-type thresholds n_j, comma-separated in type order "
                                          "(default: from the fluid model)")
    integer: bool = param(True, "round fluid thresholds >= 1 up to integers (the paper's choice)")


@register
class Wait(ThresholdPolicy):
    name = "wait"
    summary = "WAIT (known output lengths): per-type pipelines advance when their queue reaches " \
              "a fluid threshold"
    Params = WaitParams

    def build(self):
        p = self.params
        given = _floats(p.thresholds, "thresholds", self.name)
        self._gate_of: dict[int, Gate] = {}
        if not self.workload_described():
            self.single_gate(given)
            self._names, self._outputs, self._by_output = {}, [math.inf], [0]
            return
        self.types = self.workload_types("max")
        d0, d1 = self.linear_cost(self.types)
        try:
            if given is not None:
                if len(given) != len(self.types):
                    raise PolicyError(f"policy wait: thresholds has {len(given)} values for "
                                      f"{len(self.types)} types "
                                      f"({', '.join(t.name for t in self.types)})")
                plan = check_wait(self.types, given, d0, d1, self.capacity)
            else:
                plan = wait_thresholds(self.types, d0, d1, p.slack, self.capacity,
                                       integer=p.integer)
        except ValueError as e:
            raise PolicyError(f"policy wait: {e}")
        self.gates = [Gate(t.name, n, t.rate, 0, self.prefill_stages(t.prompt) + int(t.output) - 1,
                           FCFSQueue())
                      for t, n in zip(self.types, plan.thresholds)]
        self.M_pi = plan.M_pi
        self._names = {t.name: i for i, t in enumerate(self.types)}
        # Gates by output length, for requests without a type label (bisected: sorted, whatever
        # the declared order; ties keep it).
        self._by_output = sorted(range(len(self.types)), key=lambda i: self.types[i].output)
        self._outputs = [self.types[i].output for i in self._by_output]
        self.info.update(types=[t.name for t in self.types], thresholds=list(plan.thresholds),
                         M_pi=plan.M_pi, dT=plan.dT, conditions_met=plan.time_ok and plan.memory_ok,
                         capped=plan.capped)

    def entry_gate(self, req):
        g = self._gate_of.get(req.request_id)
        if g is None:
            i = self._names.get(req.label) if req.label is not None else None
            if i is None:   # the first type long enough for this request, else the longest
                k = bisect.bisect_left(self._outputs, req.output_tokens)
                i = self._by_output[min(k, len(self.gates) - 1)]
            g = self._gate_of[req.request_id] = self.gates[i]
        return g

    def place(self, req):
        self.entry_gate(req).inflight.append(req)

    def on_finish(self, req):
        self._gate_of.pop(req.request_id, None)

    def expected_output(self, req):
        return req.output_tokens          # WAIT assumes output lengths known at arrival


# --------------------------------------------------------------------------------------------

@dataclass
class NestedWaitParams(ThresholdParams):
    thresholds: str | None = param(None, "per-segment caps n_k, comma-separated (default: from "
                                          "tl, else from the fluid model)")
    tl: float | None = param(None, "cap on concurrent requests, sum_k (stages of k) x n_k; caps "
                                   "follow n_k = n_{k-1} min(p_k + eta, 0.99)", minimum=1.0)
    eta: float = param(0.05, "margin of the segment ratios q_k = min(p_k + eta, 0.99) over the "
                             "survival p_k", minimum=0.0)
    prompt_stat: str = param("max", "prompt length of a segment in the memory formula: the "
                                    "paper's per-segment maximum, or the mean",
                             choices=("max", "mean"))


@register
class NestedWait(ThresholdPolicy):
    name = "nested-wait"
    summary = "Nested WAIT (unknown output lengths): decode segments gated by thresholds, " \
              "survivors wait at boundaries with KV resident"
    Params = NestedWaitParams
    evict_boundary_first = True

    def build(self):
        p = self.params
        self.prefix_rule = not self.cs
        self._at_boundary: dict[int, tuple[int, float]] = {}
        given = _floats(p.thresholds, "thresholds", self.name)
        if not self.workload_described():
            self.queue = self.single_gate(given).queue     # one segment: the whole decode
            self._starts, self._ends = [0], [self.spec.max_model_len]
            return
        # Segments from each cluster's longest output; the cost is fitted on the mixture's mean
        # lengths (declared types have one length: then both are the types).
        bounds, means = self.workload_types("max"), self.workload_types("mean")
        types = bounds
        if p.prompt_stat == "mean":
            types = [FluidType(b.name, m.prompt, b.output, b.rate, m.cached)
                     for b, m in zip(bounds, means)]
        d0, d1 = self.linear_cost(means)
        try:
            plan = nested_plan(types, d0, d1, tl=p.tl, thresholds=given, eta=p.eta,
                               slack=p.slack, capacity=self.capacity)
        except ValueError as e:
            raise PolicyError(f"policy nested-wait: {e}")
        self.queue = FCFSQueue()
        self.gates = []
        for i, (seg, n) in enumerate(zip(plan.segments, plan.thresholds)):
            stages = seg.stages + (self.prefill_stages(seg.prompt) - 1 if i == 0 else 0)
            self.gates.append(Gate(f"segment {seg.index} [{seg.start}, {seg.end})", n, seg.rate,
                                   seg.start, stages, self.queue if i == 0 else None))
        self.M_pi = plan.M_pi
        self._starts = [seg.start for seg in plan.segments]
        self._ends = [seg.end for seg in plan.segments]
        self.info.update(segments=[[s.start, s.end] for s in plan.segments],
                         thresholds=list(plan.thresholds), tl=plan.tl, M_pi=plan.M_pi, dT=plan.dT,
                         conditions_met=plan.time_ok and plan.ratios_ok, capped=plan.capped)

    @property
    def waiting(self):
        return self.queue

    def expected_output(self, req):
        """Unknown lengths: the end of the segment the request is in (or enters). Growth in later
        segments is paced by their own gates, and memory repair covers the rest."""
        return self._ends[bisect.bisect_right(self._starts, req.generated) - 1]

    def on_finish(self, req):
        self._at_boundary.pop(req.request_id, None)

    def entry_gate(self, req):
        return self.gates[0]

    def place(self, req):
        i = bisect.bisect_right(self._starts, req.generated) - 1
        g = self.gates[i]
        if i > 0 and req.generated == g.start and not req.is_prefill:
            g.entry.append(req)          # a survivor waiting at the boundary, KV resident
            seen = self._at_boundary.get(req.request_id)
            if seen is None or seen[0] != g.start:
                self._at_boundary[req.request_id] = (g.start, self._now)
        else:
            g.inflight.append(req)
