"""The invariant checker a policy author runs on their class: ``check_policy(MyPolicy)``.

It simulates the policy on small adversarial workloads drawn by Hypothesis (bursts, KV caches
barely larger than the largest request, so that preemption is forced, and requests that can
never fit mixed with ones that can) and checks what must hold whatever the policy decides:

- every request ends completed or rejected with a reason, and one that can never fit is
  rejected; a completed request was scheduled, got its first token and finished in that order;
- KV never exceeds capacity, and all of it is free again at the end;
- with prefix caching (``check_policy(..., sharing=True)``: requests share prompt prefixes),
  before every step: a block shared by several requests counts once against capacity, every
  block a request holds is held in the pool (none freed or evictable while in use), and each
  waiting request's hit is cached blocks from its start, at most all its tokens but one;
- token balances: every token computed is kept until completion or discarded by a preemption;
  every token emitted belongs to an output; preemptions are counted once each;
- no stall: the run ends (the engine raises ``SimulationStalled`` when a policy strands
  requests, and a policy asked again and again without progress is a livelock);
- the same workload and seed give the same decisions.

The engine refuses decisions that break its rules (``PolicyViolation``) as they happen; the
checker finds the workloads that lead a policy there and shrinks them to a small example.
Hypothesis is needed only here, not to run policies: it is the ``check`` extra
(``pip install 'servesim[check]'``).

This module also holds what the checker and the tests share to drive the engine directly:
``simulate`` a hand-made workload on a replica of a given size, recording every decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scheduler.base import Policy, make_policy
from scheduler.state import Decision, ReplicaSpec, RequestState, Status
from simulator.cost.base import CostModel
from simulator.cost.linear import LinearCost
from simulator.engine import Engine, EngineResult
from traces.errors import SimulationError
from traces.request import SYSTEM_PROMPT, Request, TokenRuns

MAX_MODEL_LEN = 160
# 10 ms per iteration and enough per token that batches of different shapes take different
# times (so that arrival and completion orders vary between workloads).
CHECK_COST = LinearCost(c0=0.01, c_prefill=1e-4, c_decode=1e-3, c_kv=1e-5)


class InvariantError(SimulationError):
    """A run broke an invariant (a bug in the policy); the message names the request or the
    counter."""


# ---------------------------------------------------------------------------------------------
# Driving the engine, recording every decision


@dataclass
class Step:
    """One ``schedule`` call as the policy saw and answered it (ids and pre-step counters)."""

    now: float
    resident: list[int]                  # admission order
    free_blocks: int
    prefill: list[tuple[int, int]]       # (request id, tokens)
    admitted: list[int]                  # prefill entries that were waiting before this step
    decode: list[int]
    preempt: list[int]
    decoding: list[int]                  # resident requests in their decode phase
    computed: dict[int, int]             # tokens in cache before the step, per request involved
    num_tokens: dict[int, int]           # prompt + generated before the step
    waiting_after: list[int] = field(default_factory=list)
    cached: dict[int, int] = field(default_factory=dict)   # admitted: prefix-cache hit tokens


class Recorder:
    """Wraps a policy's ``schedule`` to log every decision. ``limit`` turns a livelock (a policy
    asked again and again without finishing) into an error instead of a hang."""

    def __init__(self, policy: Policy, limit: int = 200_000):
        self.policy = policy
        self.engine: Engine | None = None    # set: its prefix cache is checked at every step
        self.steps: list[Step] = []
        self.limit = limit
        self._schedule = policy.schedule
        policy.schedule = self._record    # type: ignore[method-assign]

    def _record(self, view):
        if len(self.steps) >= self.limit:
            raise InvariantError(f"policy {self.policy.name} was asked {self.limit} times at "
                                 f"t={view.now:.6f}s without finishing the run: a livelock?")
        resident = list(view.resident)
        if self.engine is not None and self.engine.pool is not None:
            check_pool(self.engine)
        d = self._schedule(view)
        if not isinstance(d, Decision):   # the engine names this mistake
            return d
        involved = resident + [r for r, _ in d.prefill] + list(d.decode) + list(d.preempt)
        waiting = getattr(self.policy, "waiting", None)
        self.steps.append(Step(
            now=view.now,
            resident=[r.request_id for r in resident],
            free_blocks=view.free_blocks,
            prefill=[(r.request_id, n) for r, n in d.prefill],
            admitted=[r.request_id for r, _ in d.prefill if r.status is Status.WAITING],
            decode=[r.request_id for r in d.decode],
            preempt=[r.request_id for r in d.preempt],
            decoding=[r.request_id for r in resident if not r.is_prefill],
            computed={r.request_id: r.computed for r in involved},
            num_tokens={r.request_id: r.num_tokens for r in involved},
            waiting_after=[r.request_id for r in waiting] if waiting is not None else [],
            cached={r.request_id: r.cached for r, _ in d.prefill if r.status is Status.WAITING},
        ))
        return d


@dataclass
class Outcome:
    raw: EngineResult
    steps: list[Step]
    spec: ReplicaSpec
    free_blocks_at_end: int

    @property
    def requests(self):
        from simulator.metrics import requests_table    # pandas: only when a table is asked for
        return requests_table(self.raw.states)

    @property
    def timeline(self):
        from simulator.metrics import timeline_table
        return timeline_table(self.raw.timeline)


def check_pool(engine: Engine) -> None:
    """The prefix cache's block accounting, from the requests' side: the cached blocks the
    resident requests hold are exactly the pool's held blocks with their holder counts (so none
    was freed, or is evictable, while in use), and the blocks in use (each shared block once,
    plus each request's uncached ones) and the free ones add up to the capacity. Each waiting
    request's hit is cached blocks from its start, short of its last token."""
    pool, spec = engine.pool, engine.spec
    bs = spec.block_size
    holders: dict[int, int] = {}
    uncached = 0
    for st in engine.resident.values():
        b = engine.request_blocks[st.request_id]
        if st.kv_blocks != -(-st.computed // bs) and st.kv_blocks != -(-(st.computed + 1) // bs):
            _fail(f"request {st.request_id} holds {st.kv_blocks} blocks for {st.computed} "
                  f"computed tokens")
        for block in b.block_ids(b.registered):
            holders[block] = holders.get(block, 0) + 1
        uncached += st.kv_blocks - b.registered
    refs = pool.held_counts()
    if holders != refs:
        gone = [h for h in holders if h not in refs or refs[h] != holders[h]]
        _fail(f"t={engine.env.now:.6f}s: {len(gone)} blocks in use are not held in the pool as "
              f"often as requests hold them (freed while in use), or the pool holds blocks no "
              f"request does ({len(refs)} held, {len(holders)} in use)")
    evictable = pool.evictable_blocks()
    if len(set(evictable)) != len(evictable) or len(evictable) != pool.evictable or \
            not all(map(pool.is_cached, evictable)):
        _fail(f"t={engine.env.now:.6f}s: the free queue's cached blocks are not {pool.evictable} "
              f"distinct cached blocks")
    if not holders.keys().isdisjoint(evictable):
        _fail(f"t={engine.env.now:.6f}s: a block in use is on the free list")
    in_use = len(holders) + uncached
    if in_use + pool.free_blocks != spec.num_blocks or pool.free_blocks != engine.free_blocks:
        _fail(f"t={engine.env.now:.6f}s: {in_use} blocks in use (shared ones once) and "
              f"{pool.free_blocks} free ({engine.free_blocks} seen) do not add up to the "
              f"capacity {spec.num_blocks}")
    for st in engine.waiting_states():
        hit = st.cached // bs
        blocks = engine.request_blocks[st.request_id].block_ids(hit)
        if st.cached % bs or st.cached > st.num_tokens - 1 or \
                not all(map(pool.is_cached, blocks)):
            _fail(f"request {st.request_id} waits with a hit of {st.cached} tokens that are not "
                  f"all cached whole blocks short of its {st.num_tokens} tokens")


def simulate(reqs: list[Request], policy: str | type[Policy] | Policy = "vllm-v1",
             params: dict | None = None, *, kv_tokens: int = 1 << 20, block_size: int = 16,
             max_model_len: int = 4096, cost: CostModel = CHECK_COST, seed: int = 0,
             step_limit: int = 200_000, prefix_caching: bool = False) -> Outcome:
    """Run ``reqs`` through one replica with ``kv_tokens`` of KV cache (rounded down to blocks)
    under ``policy`` (a name, ``package.module:Class``, a class, or an instance), with or
    without prefix caching (its pool checked before every step)."""
    from simulator.runner import workload_hint
    from traces.workload import Workload
    pol = policy if isinstance(policy, Policy) else make_policy(policy, params)
    recorder = Recorder(pol, step_limit)
    spec = ReplicaSpec(num_blocks=kv_tokens // block_size, block_size=block_size,
                       max_model_len=max_model_len, cost_model=cost,
                       workload_hint=workload_hint(Workload.from_requests(reqs), cost_model=cost),
                       seed=seed)
    # Step by step: the checker records, and counts, every decision the policy makes.
    engine = Engine(reqs, pol, cost, spec, prefix_caching=prefix_caching, stepwise=True)
    recorder.engine = engine
    raw = engine.run()
    return Outcome(raw, recorder.steps, spec, engine.free_blocks)


# ---------------------------------------------------------------------------------------------
# The invariants


def check_outcome(out: Outcome, reqs: list[Request]) -> None:
    """Raise ``InvariantError`` naming the first invariant ``out`` breaks."""
    spec, raw = out.spec, out.raw
    states = {s.request_id: s for s in raw.states}
    for r in reqs:
        s = states[r.request_id]
        _check_request(spec, r, s)
    if out.free_blocks_at_end != spec.num_blocks:
        _fail(f"{spec.num_blocks - out.free_blocks_at_end} KV blocks still held at the end")
    if raw.peak_kv_blocks > spec.num_blocks:
        _fail(f"peak KV {raw.peak_kv_blocks} blocks exceeds the capacity {spec.num_blocks}")
    for step in out.steps:
        if not 0 <= step.free_blocks <= spec.num_blocks:
            _fail(f"{step.free_blocks} KV blocks free at t={step.now:.6f}s (capacity "
                  f"{spec.num_blocks})")
    _check_balances(out, states)


def _check_request(spec: ReplicaSpec, r: Request, s: RequestState) -> None:
    rid = r.request_id
    if s.status not in (Status.FINISHED, Status.REJECTED):
        _fail(f"request {rid} ended {s.status.value}, neither completed nor rejected")
    never_fits = (r.prompt_tokens + r.output_tokens > spec.max_model_len or
                  spec.blocks_for(r.prompt_tokens + r.output_tokens - 1) > spec.num_blocks)
    if never_fits and s.status is not Status.REJECTED:
        _fail(f"request {rid} can never fit (prompt {r.prompt_tokens}, output "
              f"{r.output_tokens}) but was not rejected")
    if s.status is Status.REJECTED:
        if not (isinstance(s.reject_reason, str) and s.reject_reason):
            _fail(f"request {rid} was rejected without a reason")
        return
    times = (s.arrival_s, s.first_scheduled_s, s.first_token_s, s.finished_s)
    if None in times or not times[0] <= times[1] <= times[2] <= times[3]:  # type: ignore
        _fail(f"request {rid}: arrival, first scheduled, first token and completion times "
              f"{times} are out of order")
    if s.generated != s.output_tokens or s.kv_blocks != 0:
        _fail(f"request {rid} completed with {s.generated} of {s.output_tokens} output tokens "
              f"and {s.kv_blocks} KV blocks held")


def _check_balances(out: Outcome, states: dict[int, RequestState]) -> None:
    completed = [s for s in states.values() if s.status is Status.FINISHED]
    # The engine runs every non-empty decision: the steps are its iterations, and what they
    # computed is either kept until completion (prompt + output - 1 tokens of KV) or was
    # discarded by a preemption (the victim's computed tokens).
    ran = [step for step in out.steps if step.prefill or step.decode]
    if len(ran) != out.raw.iterations:
        _fail(f"{len(ran)} non-empty decisions but {out.raw.iterations} iterations ran")
    computed = sum(n for step in ran for _, n in step.prefill) + sum(len(s.decode) for s in ran) \
        + sum(sum(step.cached.values()) for step in ran)    # hits: in cache without computing
    lost = sum(step.computed[rid] for step in out.steps for rid in step.preempt)
    kept = sum(s.prompt_tokens + s.output_tokens - 1 for s in completed)
    if computed != kept + lost:
        _fail(f"token balance: {computed} tokens computed, but completed requests keep {kept} "
              f"and preemptions discarded {lost}")
    emitted = sum(len(step.decode) for step in ran) + sum(
        1 for step in ran for rid, n in step.prefill
        if step.computed[rid] + step.cached.get(rid, 0) + n == step.num_tokens[rid])
    outputs = sum(s.output_tokens for s in completed)
    if emitted != outputs:
        _fail(f"token balance: {emitted} tokens emitted, completed outputs hold {outputs}")
    decided = sum(len(step.preempt) for step in out.steps)
    counted = sum(s.preemptions for s in states.values())
    if not out.raw.preemptions == counted == decided:
        _fail(f"preemptions: {decided} decided, {out.raw.preemptions} counted by the engine, "
              f"{counted} on the requests")


def _fail(message: str) -> None:
    raise InvariantError(message)


# ---------------------------------------------------------------------------------------------
# Workloads drawn by Hypothesis, and the checker


@dataclass
class Case:
    """One drawn workload and replica."""

    rows: list[tuple[float, int, int]]    # (gap to the previous arrival, prompt, output)
    block_size: int
    kv_scale: float                       # KV capacity relative to the largest request
    seed: int
    # With sharing: per request, the shared prompt it starts with (0: none) and its length.
    shared: list[tuple[int, int]] | None = None

    @property
    def prefix_caching(self) -> bool:
        return self.shared is not None

    def requests(self) -> list[Request]:
        t, out = 0.0, []
        for i, (gap, prompt, output) in enumerate(self.rows):
            t += gap
            prefix = None
            if self.shared is not None:
                group, length = self.shared[i]
                if group:
                    prefix = TokenRuns(((SYSTEM_PROMPT, group, min(length, prompt)),))
            out.append(Request(i, t, prompt, output, prefix=prefix))
        return out

    @property
    def kv_tokens(self) -> int:
        largest = max(min(p + o, MAX_MODEL_LEN) for _, p, o in self.rows)
        bs = self.block_size
        return max(int(self.kv_scale * largest) // bs, 1) * bs


def cases(sharing: bool = False):
    """The Hypothesis strategy of workloads: small but adversarial (bursts; KV below the
    largest request rejects it, just above forces preemptions). With ``sharing``, requests
    start with one of two shared prompts (or none) and prefix caching is on."""
    from hypothesis import strategies as st
    row = st.tuples(st.one_of(st.just(0.0), st.floats(0.0, 0.1)),   # gap (bursts)
                    st.integers(1, 150),                              # prompt
                    st.integers(1, 40))                               # output
    rows = st.lists(row, min_size=1, max_size=14)
    common = dict(block_size=st.sampled_from([1, 4, 16]), kv_scale=st.floats(0.7, 2.5),
                  seed=st.integers(0, 3))
    if not sharing:
        return st.builds(Case, rows=rows, **common)
    # Each request starts with shared prompt 1 or 2 (of drawn lengths), or with none.
    shared = st.tuples(st.lists(st.sampled_from([0, 1, 1, 2]), min_size=14, max_size=14),
                       st.integers(1, 150), st.integers(1, 150))
    return st.builds(lambda rows, sh, **kw: Case(rows=rows, shared=[
        (g, sh[g] if g else 0) for g in sh[0][:len(rows)]], **kw), rows, shared, **common)


def run_case(policy: str | type[Policy], params: dict | None, case: Case) -> Outcome:
    """Simulate one case and check every invariant on it (twice: same decisions each time)."""
    reqs = case.requests()

    def once() -> Outcome:
        return simulate(reqs, policy, params, kv_tokens=case.kv_tokens,
                        block_size=case.block_size, max_model_len=MAX_MODEL_LEN,
                        cost=CHECK_COST, seed=case.seed, step_limit=50_000,
                        prefix_caching=case.prefix_caching)

    out = once()
    check_outcome(out, reqs)
    again = once()
    if again.steps != out.steps:
        first = next(i for i, (a, b) in enumerate(zip(out.steps, again.steps)) if a != b) \
            if len(out.steps) == len(again.steps) else min(len(out.steps), len(again.steps))
        _fail(f"not deterministic: a second run with the same workload and seed decides "
              f"differently at step {first}")
    return out


@dataclass
class CheckReport:
    policy: str
    examples: int = 0
    with_preemptions: int = 0
    with_rejections: int = 0
    with_cache_hits: int = 0

    def __str__(self) -> str:
        hits = f", {self.with_cache_hits} with prefix-cache hits" if self.with_cache_hits else ""
        return (f"policy {self.policy}: invariants hold on {self.examples} workloads "
                f"({self.with_preemptions} with preemptions, {self.with_rejections} with "
                f"rejections{hits})")


def check_policy(policy: str | type[Policy], params: dict[str, Any] | None = None, *,
                 max_examples: int = 50, seed: int | None = 0,
                 shrink: bool = True, sharing: bool = False) -> CheckReport:
    """Check ``policy`` (a class, a registered name or ``package.module:Class``) with
    ``params`` on ``max_examples`` drawn workloads. Raises the first failure, shrunk to a
    small workload (``InvariantError``, the engine's ``PolicyViolation`` or
    ``SimulationStalled``), with the falsifying example in its notes. ``seed`` fixes the
    workloads drawn (None: new ones each call); ``shrink=False`` reports the first failing
    workload as drawn (faster, larger). ``sharing``: workloads whose requests share prompt
    prefixes, run with prefix caching on (its block accounting checked at every step)."""
    try:
        import hypothesis
        from hypothesis import HealthCheck, Phase, given, settings
    except ImportError:
        raise ImportError("check_policy needs Hypothesis: pip install 'servesim[check]'") \
            from None
    # A bad class or parameter: one line (PolicyError) before anything is drawn.
    name = make_policy(policy, params).name
    report = CheckReport(name or getattr(policy, "__qualname__", str(policy)))

    # Explaining (which lines only failing runs reach) costs more than it tells here.
    phases = [p for p in Phase if p is not Phase.explain and (shrink or p is not Phase.shrink)]

    @settings(max_examples=max_examples, deadline=None, database=None, phases=phases,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases(sharing))
    def check(case: Case) -> None:
        out = run_case(policy, params, case)
        report.examples += 1
        report.with_preemptions += out.raw.preemptions > 0
        report.with_rejections += any(s.status is Status.REJECTED for s in out.raw.states)
        cache = out.raw.prefix_cache
        report.with_cache_hits += cache is not None and cache.stats["prefix_cache_hits"] > 0

    if seed is not None:
        check = hypothesis.seed(seed)(check)
    check()
    return report
