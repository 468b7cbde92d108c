"""What a worker does with one point: simulate it and send back plain data.

The task carries the whole configuration (and its seed), so the result depends on nothing else:
not on the worker, the process, the executor or the order points run in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

import simulator.vllm  # noqa: F401  (registers the engine "vllm")
from simulator.config import RunConfig
from simulator.runner import build_workload, simulate
from simulator.sweep.fluid_bound import fluid_summary
from simulator.sweep.stability import half_means, pooled_growth
from traces.errors import UserError


@dataclass(frozen=True)
class PointTask:
    index: int
    key: str
    config: dict                  # RunConfig.to_dict()
    keep_requests: bool = False   # send back the per-request table
    keep_timeline: bool = False


@dataclass
class PointOutcome:
    index: int
    key: str
    status: str                   # "ok" or "failed"
    summary: dict = field(default_factory=dict)
    error: str | None = None
    user_error: bool = False      # the failure was bad input (ConfigError, PolicyError, ...)
    requests: pd.DataFrame | None = None
    timeline: pd.DataFrame | None = None


def run_point(task: PointTask) -> PointOutcome:
    """Simulate one point. Any error is caught and returned as one line: a failing point is
    recorded and the sweep goes on."""
    try:
        cfg = RunConfig(**task.config).validate()
        cpu0 = time.process_time()
        workload = build_workload(cfg)    # built once: the simulation and the fluid bound share it
        result = simulate(cfg, workload)
        cpu_s = time.process_time() - cpu0
        first, second = half_means(result.requests)
        summary = {**result.summary,
                   "latency_first_half_ms": first, "latency_second_half_ms": second,
                   "latency_growth": pooled_growth([(first, second)]), "cpu_s": cpu_s}
        fluid = fluid_summary(cfg, workload)
        if fluid:
            summary["fluid"] = fluid
        return PointOutcome(task.index, task.key, "ok", summary,
                            requests=result.requests if task.keep_requests else None,
                            timeline=result.timeline if task.keep_timeline else None)
    except Exception as e:   # noqa: BLE001 - every failure becomes a recorded, failed point
        message = " ".join(str(e).split()) or type(e).__name__
        return PointOutcome(task.index, task.key, "failed", error=f"{type(e).__name__}: {message}",
                            user_error=isinstance(e, UserError))
