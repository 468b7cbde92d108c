"""Build a cost model from a run's configuration."""

from __future__ import annotations

import math

from simulator.cost.base import CostModel
from simulator.cost.linear import TERMS, LinearCost, fit_linear, representative_batches
from simulator.cost.profile import ProfileCost, default_profile_path
from simulator.cost.roofline import EFFICIENCY_DEFAULTS, LINK_DEFAULTS, RooflineCost
from simulator.errors import ConfigError
from simulator.hardware import GPUSpec, ModelSpec, Parallelism

ROOFLINE_KEYS = tuple(EFFICIENCY_DEFAULTS) + tuple(LINK_DEFAULTS)
PROFILE_KEYS = ("path", "overhead_s", "tensor_parallel", "statistic") + tuple(LINK_DEFAULTS)
LINEAR_KEYS = TERMS + ("d0", "d1")


def _check_keys(kind: str, params: dict, allowed: tuple) -> None:
    for k in params:
        if k not in allowed:
            raise ConfigError(f"cost_params for {kind}: unknown key {k!r}; allowed: "
                              f"{', '.join(allowed)}")


# Cost parameters are seconds (per iteration, per token) or efficiency factors: past this an
# iteration is priced beyond any hardware and every latency is absurd (or infinite).
MAX_PARAM = 1e3


def _number(kind: str, key: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"cost_params for {kind}: {key} must be a number, got {value!r}")
    if not (math.isfinite(x) and abs(x) <= MAX_PARAM):
        raise ConfigError(f"cost_params for {kind}: {key} must be a finite number up to "
                          f"{MAX_PARAM:g}, got {value!r}")
    return x


def build_cost_model(kind: str, model: ModelSpec, gpu: GPUSpec, params: dict | None = None,
                     parallel: Parallelism = Parallelism()) -> CostModel:
    """``linear`` takes c0/c_prefill/c_decode/c_kv (or the paper's d0/d1) in seconds; without
    coefficients it is fitted to the roofline model of the chosen model, GPU and parallelism
    (given coefficients describe the replica as measured, whatever its parallelism).
    ``roofline`` takes efficiency and link overrides; ``profile`` a table path (default: the
    shared measured profile) whose rows of tensor-parallel degree ``parallel.tp`` it reads.
    """
    params = dict(params or {})
    if kind == "roofline":
        _check_keys(kind, params, ROOFLINE_KEYS)
        return RooflineCost(model, gpu, parallel=parallel,
                            **{k: _number(kind, k, v) for k, v in params.items()})
    if kind == "profile":
        _check_keys(kind, params, PROFILE_KEYS)
        path = params.pop("path", None) or default_profile_path(model, gpu)
        kw = {k: _number(kind, k, params[k]) for k in ("overhead_s", *LINK_DEFAULTS)
              if k in params}
        if "tensor_parallel" in params:
            tp = int(_number(kind, "tensor_parallel", params["tensor_parallel"]))
            if parallel.tp not in (1, tp):
                raise ConfigError(f"cost_params for profile: tensor_parallel {tp} differs from "
                                  f"tp {parallel.tp}; give tp alone")
            if parallel.tp == 1:     # the table's rows of that degree, for one GPU's replica
                kw["tensor_parallel"] = tp
        if "statistic" in params:
            kw["statistic"] = str(params["statistic"])
        return ProfileCost(path, model, gpu, parallel=parallel, **kw)
    if kind == "linear":
        _check_keys(kind, params, LINEAR_KEYS)
        values = {k: _number(kind, k, v) for k, v in params.items()}
        if "d0" in values or "d1" in values:
            if set(values) - {"d0", "d1"}:
                raise ConfigError("cost_params for linear: give d0/d1 or c0/c_prefill/c_decode/"
                                  "c_kv, not both")
            return LinearCost.paper(values.get("d0", 0.0), values.get("d1", 0.0))
        if values:
            return LinearCost(**values)
        reference = RooflineCost(model, gpu, parallel=parallel)
        return fit_linear(reference, representative_batches(model.max_model_len)).cost
    raise ConfigError(f"cost_model must be one of: linear, roofline, profile; got {kind!r}")
