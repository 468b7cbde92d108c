"""Helpers for tests that drive the engine directly: hand-made workloads, a replica of a given
size, and a recorder of every decision a policy makes (what it saw, what it asked for)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.base import Policy, make_policy
from scheduler.state import Decision, ReplicaSpec, Status
from simulator.cost.base import CostModel
from simulator.cost.linear import LinearCost
from simulator.engine import TIMELINE_COLUMNS, Engine, EngineResult
from simulator.metrics import requests_table, timeline_table
from simulator.runner import workload_hint
from traces.request import Request
from traces.workload import Workload

# A cheap cost model for behaviour tests: 10 ms per iteration plus a little per token.
TEST_COST = LinearCost(c0=0.01, c_prefill=1e-5, c_decode=1e-4, c_kv=1e-7)


def requests(*rows) -> list[Request]:
    """``(arrival_s, prompt, output)`` rows -> Request records with ids in arrival order."""
    rows = sorted(rows, key=lambda r: r[0])
    return [Request(i, float(t), int(p), int(o)) for i, (t, p, o) in enumerate(rows)]


@dataclass
class Step:
    """One ``schedule`` call as the policy saw and answered it (ids and pre-step counters)."""

    now: float
    resident: list[int]                  # admission order
    prefill: list[tuple[int, int]]       # (request id, tokens)
    admitted: list[int]                  # prefill entries that were waiting before this step
    decode: list[int]
    preempt: list[int]
    decoding: list[int]                  # resident requests in their decode phase
    computed: dict[int, int]             # tokens in cache before the step, per request involved
    num_tokens: dict[int, int]           # prompt + generated before the step
    waiting_after: list[int] = field(default_factory=list)


class Recorder:
    """Wraps a policy's ``schedule`` to log every decision. ``limit`` turns a livelock (a policy
    asked again and again at one instant without progress) into a test failure instead of a hang.
    """

    def __init__(self, policy: Policy, limit: int = 200_000):
        self.policy = policy
        self.steps: list[Step] = []
        self.limit = limit
        self._schedule = policy.schedule
        policy.schedule = self._record

    def _record(self, view):
        if len(self.steps) >= self.limit:
            raise AssertionError(f"policy {self.policy.name} asked {self.limit} times: livelock?")
        resident = list(view.resident)
        d = self._schedule(view)
        if not isinstance(d, Decision):   # the engine names this mistake
            return d
        involved = resident + [r for r, _ in d.prefill] + list(d.decode) + list(d.preempt)
        waiting = getattr(self.policy, "waiting", None)
        self.steps.append(Step(
            now=view.now,
            resident=[r.request_id for r in resident],
            prefill=[(r.request_id, n) for r, n in d.prefill],
            admitted=[r.request_id for r, _ in d.prefill if r.status is Status.WAITING],
            decode=[r.request_id for r in d.decode],
            preempt=[r.request_id for r in d.preempt],
            decoding=[r.request_id for r in resident if not r.is_prefill],
            computed={r.request_id: r.computed for r in involved},
            num_tokens={r.request_id: r.num_tokens for r in involved},
            waiting_after=[r.request_id for r in waiting] if waiting is not None else [],
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
        return requests_table(self.raw.states)

    @property
    def timeline(self):
        return timeline_table(self.raw.timeline, TIMELINE_COLUMNS)


def simulate(reqs: list[Request], policy: str | Policy = "vllm-v1", params: dict | None = None,
             *, kv_tokens: int = 1 << 20, block_size: int = 16, max_model_len: int = 4096,
             cost: CostModel = TEST_COST, seed: int = 0) -> Outcome:
    """Run ``reqs`` through one replica with ``kv_tokens`` of KV cache (rounded down to blocks)."""
    pol = make_policy(policy, params) if isinstance(policy, str) else policy
    recorder = Recorder(pol)
    spec = ReplicaSpec(num_blocks=kv_tokens // block_size, block_size=block_size,
                       max_model_len=max_model_len, cost_model=cost,
                       workload_hint=workload_hint(Workload.from_requests(reqs)), seed=seed)
    engine = Engine(reqs, pol, cost, spec)
    raw = engine.run()
    return Outcome(raw, recorder.steps, spec, engine.free_blocks)
