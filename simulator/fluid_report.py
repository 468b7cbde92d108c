"""The fluid model applied to a run: the workload's types, the linear cost fitted to the run's
cost model, the equilibrium, throughput bound, stable region and WAIT thresholds
(``servesim fluid``, and the bound a sweep records beside each point)."""

from __future__ import annotations

import math

from scheduler.fluid import equilibrium, from_request_types, types_from_lengths, wait_thresholds
from simulator.cost.linear import fit_cost
from simulator.errors import ConfigError
from simulator.runner import build_replica, build_workload, request_types, workload_hint


def workload_fluid_types(cfg, segments: int, clustering: str, workload=None):
    """The workload's types: declared (``--type``), or its sampled lengths clustered (means).
    ``workload``: the one ``cfg`` builds, when the caller already has it."""
    declared = request_types(cfg)
    if declared:
        return from_request_types(declared)
    hint = workload_hint(workload if workload is not None else build_workload(cfg))
    if hint.arrival_rate is None or hint.lengths is None:
        raise ConfigError("fluid: the workload has no arrival rate (give --rate or --type)")
    return types_from_lengths(*hint.lengths, hint.arrival_rate, segments, clustering,
                              representative="mean")


def fluid_report(cfg, d0=None, d1=None, segments=10, clustering="equal-width",
                 convention="engine", slack=0.1, workload=None) -> dict:
    """``servesim fluid``'s report on ``cfg``'s workload (``workload``: the one ``cfg`` builds,
    when the caller has it); d0 and d1 default to the fit to the run's cost model."""
    for name, v in (("d0", d0), ("d1", d1)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"--{name} must be a number >= 0 (seconds), got {v!r}")
    if segments < 1:
        raise ConfigError(f"--segments must be >= 1, got {segments}")
    types = workload_fluid_types(cfg, segments, clustering, workload)
    spec = build_replica(cfg)
    capacity = spec.kv_capacity_tokens
    fit = None
    if d0 is None or d1 is None:
        fit = fit_cost(spec.cost_model, types, capacity, spec.max_model_len)
        d0 = fit.d0 if d0 is None else d0
        d1 = fit.d1 if d1 is None else d1
    if d0 == 0 and d1 == 0:
        raise ConfigError("--d0 and --d1 are both 0: the linear cost needs one of them positive")
    eq = equilibrium(types, d0, d1, capacity, convention)
    out = eq.as_dict()
    out["max_rate"] = out["request_rate"] * eq.max_rate_scale
    out["cost"] = ({"source": "given"} if fit is None else
                   {"source": fit.source, "model": cfg.cost_model, "gpu": cfg.gpu,
                    "model_name": cfg.model, "rmse_s": fit.rmse_s,
                    "max_rel_error": fit.max_rel_error, "batches": fit.batches})
    try:
        plan = wait_thresholds(types, d0, d1, slack, capacity, convention)
        out["wait"] = {"slack": slack, "thresholds": dict(zip([t.name for t in types],
                                                             plan.thresholds)),
                       "M_pi": plan.M_pi, "dT": plan.dT,
                       "conditions_met": plan.time_ok and plan.memory_ok, "capped": plan.capped}
    except ValueError as e:
        out["wait"] = {"error": str(e)}
    return _finite(out)


def _finite(obj):
    """JSON has no infinity: an unbounded quantity (an unstable load) is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
