"""Drive policies through the real engine with a workload hint (types and rates), for the tests
of the fluid-guided policies."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from scheduler.base import make_policy
from scheduler.state import ReplicaSpec, WorkloadHint
from simulator.cost.linear import LinearCost, fit_cost
from simulator.engine import Engine
from simulator.metrics import summarize
from simulator.runner import workload_hint
from tests.simcase import Outcome
from traces import Poisson, RequestType, TypeMixture, synthesize
from traces.request import Request
from traces.workload import Workload


@dataclass
class Run(Outcome):
    """An engine run (no step recorder: these runs are long) with its policy."""

    policy: object = None

    @property
    def summary(self) -> dict:
        return summarize(self.requests, preemptions=self.raw.preemptions)

    @property
    def peak_kv_tokens(self) -> int:
        return self.raw.peak_kv_blocks * self.raw.spec.block_size


def hint(types=None, requests=None, cost=None) -> WorkloadHint:
    """A workload hint as the runner builds it: declared types (their total rate), and/or the
    lengths and rate of ``requests``, the cost fit bound to ``cost`` (``run`` binds it to the
    run's cost model when not given)."""
    if requests is not None:
        return workload_hint(Workload.from_requests(list(requests)),
                             tuple(types) if types else None, cost)
    return WorkloadHint(types=tuple(types) if types else None, workload={"source": "test"},
                        arrival_rate=sum(t.rate for t in types) if types else None,
                        cost_fit=functools.partial(fit_cost, cost) if cost is not None else None)


def with_cost(hint: WorkloadHint | None, cost) -> WorkloadHint | None:
    """``hint`` with its cost fit bound to ``cost`` unless it has one (as the runner binds it to
    the run's cost model)."""
    if hint is None or hint.cost_fit is not None:
        return hint
    return dataclasses.replace(hint, cost_fit=functools.partial(fit_cost, cost))


def run(requests, policy: str, params: dict | None = None, *, cost=None, kv_tokens: int = 1 << 20,
        block_size: int = 1, workload_hint: WorkloadHint | None = None,
        max_model_len: int = 1 << 16, seed: int = 0, preemption: str = "recompute") -> Run:
    cost = cost or LinearCost.paper(0.01, 1e-6)
    workload_hint = with_cost(workload_hint, cost)
    pol = make_policy(policy, params or {})
    spec = ReplicaSpec(num_blocks=kv_tokens // block_size, block_size=block_size,
                       max_model_len=max_model_len, cost_model=cost,
                       workload_hint=workload_hint, seed=seed)
    engine = Engine(list(requests), pol, cost, spec, preemption=preemption)
    return Run(engine.run(), [], spec, engine.free_blocks, pol)


def typed_requests(types: list[RequestType], n: int, seed: int = 0) -> list[Request]:
    """Poisson arrivals of a type mixture (labels are the type names)."""
    w = synthesize(Poisson(sum(t.rate for t in types)), TypeMixture(tuple(types)), seed,
                   num_requests=n)
    return list(w.requests())
