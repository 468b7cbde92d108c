"""Profile cost: measured per-operator GPU times plus an analytic attention term.

Reads per-layer operator tables in the format of Vidur's ``mlp.csv`` (``../shared/profiles``):
one row per ``num_tokens`` with ``time_stats.<op>.median`` in milliseconds for one layer's
operators (QKV / output projections, MLP, norms, RoPE, activation, add) and ``emb``. An iteration
with T tokens costs

    overhead + layers x layer_ops(T) + emb(T) + LM head + attention,

where layer_ops and emb are linearly interpolated in T (extrapolated linearly past the table),
and the LM head and attention come from the roofline model (the tables hold no attention
measurements).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulator.cost.base import BatchShape, CostModel
from simulator.cost.roofline import RooflineCost
from simulator.errors import ConfigError
from simulator.hardware import GPUSpec, ModelSpec, Parallelism

LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
SHAPE_COLUMNS = {"n_embd": "hidden_size", "n_expanded_embd": "intermediate_size",
                 "n_head": "num_heads", "n_kv_head": "num_kv_heads"}
# Our GPU preset name -> the folder name used by the shared profiles.
PROFILE_GPU_DIRS = {"a100-80gb": "a100", "a100-40gb": "a100", "h100-80gb": "h100"}
DEFAULT_PROFILE_ROOT = Path("../shared/profiles")


def default_profile_path(model: ModelSpec, gpu: GPUSpec, root: Path = DEFAULT_PROFILE_ROOT) -> Path:
    gdir = PROFILE_GPU_DIRS.get(gpu.name)
    if gdir is None:
        raise ConfigError(f"no measured profile for gpu {gpu.name}; profiles exist for "
                          f"{', '.join(PROFILE_GPU_DIRS)} (or give cost_params.path)")
    return root / gdir / model.name / "mlp.csv"


def read_profile(path: str | Path, model: ModelSpec, tensor_parallel: int = 1,
                 statistic: str = "median"):
    """A per-operator table checked against ``model``: the rows of one tensor-parallel degree,
    one row per ``num_tokens`` (the median of repeated measurements), sorted by token count."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"profile {path} does not exist")
    try:
        table = pd.read_csv(path)
    except Exception as e:
        raise ConfigError(f"profile {path}: cannot read CSV: {str(e).splitlines()[0]}")
    needed = [f"time_stats.{op}.{statistic}" for op in LAYER_OPS] + ["num_tokens"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ConfigError(f"profile {path}: missing column {missing[0]}")
    if "num_tensor_parallel_workers" in table.columns:
        table = table[table["num_tensor_parallel_workers"] == tensor_parallel]
        if table.empty:
            raise ConfigError(f"profile {path}: no rows for tensor parallel degree "
                              f"{tensor_parallel}")
    for col, attr in SHAPE_COLUMNS.items():
        if col in table.columns and not (table[col] == getattr(model, attr)).all():
            raise ConfigError(f"profile {path}: column {col} does not match model "
                              f"{model.name} ({attr} = {getattr(model, attr)})")
    return table.groupby("num_tokens", as_index=False).median(numeric_only=True)


class ProfileCost(CostModel):
    name = "profile"

    def __init__(self, path: str | Path, model: ModelSpec, gpu: GPUSpec,
                 overhead_s: float | None = None, tensor_parallel: int | None = None,
                 statistic: str = "median", parallel: Parallelism = Parallelism(), **link):
        """The table's rows of ``tensor_parallel`` (default ``parallel.tp``) price one GPU's
        share of each layer; attention, the LM head, all-reduces and pipeline stages come from
        the roofline model of ``parallel`` (``link``: its link_latency_s, link_bandwidth_gbs)."""
        self.path = Path(path)
        self.model, self.gpu, self.parallel = model, gpu, parallel
        self.analytic = RooflineCost(model, gpu, parallel=parallel, **link)
        self.overhead_s = self.analytic.overhead_s if overhead_s is None else float(overhead_s)
        table = read_profile(self.path, model, tensor_parallel or parallel.tp, statistic)
        tokens = table["num_tokens"].to_numpy(dtype=float)
        if len(tokens) < 2 or tokens.min() < 1:
            raise ConfigError(f"profile {self.path}: needs at least two num_tokens rows >= 1")
        layer_ms = table[[f"time_stats.{op}.{statistic}" for op in LAYER_OPS]].sum(axis=1)
        emb_col = f"time_stats.emb.{statistic}"
        emb_ms = table[emb_col] if emb_col in table.columns else 0.0 * layer_ms
        self._tokens = tokens
        self._layer_s = layer_ms.to_numpy(dtype=float) * 1e-3
        self._emb_s = np.asarray(emb_ms, dtype=float) * 1e-3
        self._cache: dict[int, float] = {}

    def _interp(self, values: np.ndarray, t: float) -> float:
        x = self._tokens
        if t <= x[-1]:
            return float(np.interp(t, x, values))
        slope = (values[-1] - values[-2]) / (x[-1] - x[-2])
        return float(values[-1] + slope * (t - x[-1]))

    def layers_time(self, num_tokens: int) -> float:
        """The measured per-layer operators, times the number of layers (of the largest
        stage)."""
        return self.parallel.stage_layers(self.model) * self._interp(self._layer_s, num_tokens)

    def dense_time(self, num_tokens: int) -> float:
        """Measured layers (x num_layers) plus embedding for a batch of ``num_tokens`` tokens."""
        cached = self._cache.get(num_tokens)
        if cached is None:
            cached = self.layers_time(num_tokens) + self._interp(self._emb_s, num_tokens)
            if len(self._cache) < 65536:
                self._cache[num_tokens] = cached
        return cached

    def stage_layers_time(self, shape: BatchShape) -> float:
        """The largest stage's measured layers, with the roofline's attention and
        all-reduces."""
        analytic = self.analytic
        return (self.layers_time(shape.num_tokens) + analytic.attention_time(shape)
                + analytic.allreduce_time(shape.num_tokens))

    def iteration_time(self, shape: BatchShape) -> float:
        analytic = self.analytic
        if self.parallel.gpus == 1:
            return (self.overhead_s + self.dense_time(shape.num_tokens)
                    + analytic.lm_head_time(shape.num_requests) + analytic.attention_time(shape))
        # The embedding lookup runs once, on the first stage, before the stages' layers.
        embedding = self._interp(self._emb_s, shape.num_tokens)
        return analytic.pipelined(self.stage_layers_time, shape, self.overhead_s + embedding)

    def describe(self) -> dict:
        out = {"cost_model": "profile", "path": str(self.path), "model": self.model.name,
               "gpu": self.gpu.name, "overhead_s": self.overhead_s}
        if self.parallel.gpus > 1:
            out.update(tp=self.parallel.tp, pp=self.parallel.pp)
        return out
