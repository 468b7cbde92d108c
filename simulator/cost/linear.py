"""Linear cost: t = c0 + c_prefill * prefill tokens + c_decode * decode requests + c_kv * KV tokens.

The paper's model, tau = d0 + d1 * sum (l + s), is the special case c_prefill = c_decode = 0,
c0 = d0, c_kv = d1. ``fit_linear`` fits any subset of the four coefficients to another cost model
by least squares over representative batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scheduler.state import CostFit, TypeRates
from simulator.cost.base import BatchShape, CostModel
from simulator.errors import ConfigError

TERMS = ("c0", "c_prefill", "c_decode", "c_kv")


@dataclass(frozen=True)
class LinearCost(CostModel):
    c0: float = 0.0
    c_prefill: float = 0.0
    c_decode: float = 0.0
    c_kv: float = 0.0
    name = "linear"

    def __post_init__(self):
        for term in TERMS:
            v = getattr(self, term)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"linear cost coefficient {term} must be a number >= 0, got {v!r}")
        if self.c0 == 0 and self.c_prefill == 0 and self.c_decode == 0 and self.c_kv == 0:
            raise ConfigError("linear cost model: all coefficients are 0; give at least one")

    @classmethod
    def paper(cls, d0: float, d1: float) -> "LinearCost":
        """The paper's tau = d0 + d1 * (KV tokens of the batch)."""
        return cls(c0=d0, c_kv=d1)

    @property
    def d0(self) -> float:
        return self.c0

    @property
    def d1(self) -> float:
        return self.c_kv

    def iteration_time(self, shape: BatchShape) -> float:
        return (self.c0 + self.c_prefill * shape.prefill_tokens
                + self.c_decode * shape.decode_requests
                + self.c_kv * (shape.prefill_kv_tokens + shape.decode_kv_tokens))

    def decode_stretch_times(self, requests: int, kv_tokens: int, iterations: int) -> np.ndarray:
        # iteration_time's operations in its order, on the KV of every iteration at once.
        base = self.c0 + self.c_prefill * 0 + self.c_decode * requests
        kv = np.arange(kv_tokens, kv_tokens + iterations * requests, requests, dtype=np.int64)
        return base + self.c_kv * (0 + kv)

    def describe(self) -> dict:
        return {"cost_model": "linear", "c0": self.c0, "c_prefill": self.c_prefill,
                "c_decode": self.c_decode, "c_kv": self.c_kv}


def _features(shape: BatchShape) -> list[float]:
    return [1.0, shape.prefill_tokens, shape.decode_requests, shape.kv_tokens]


def representative_batches(max_model_len: int = 4096, max_kv_tokens: int | None = None
                           ) -> list[BatchShape]:
    """A grid of batches like those a server runs: pure decode steps (1 to 256 requests at
    contexts 128 to 4k), whole-prompt prefills (64 to 4k tokens), and mixed chunked steps.
    Batches whose KV would exceed ``max_kv_tokens`` are left out."""
    out = []
    ctxs = [c for c in (128, 512, 1024, 2048, 4096) if c <= max_model_len]
    for n in (1, 4, 16, 32, 64, 128, 256):
        for ctx in ctxs:
            out.append(BatchShape.of(decode_kv=[ctx] * n))
    for p in (64, 256, 512, 1024, 2048, 4096):
        if p <= max_model_len:
            out.append(BatchShape.of(prefill=[(p, 0)]))
    for n in (8, 32, 128):
        for ctx in ctxs[:3]:
            out.append(BatchShape.of(prefill=[(512, 0)], decode_kv=[ctx] * n))
    if max_kv_tokens:
        out = [b for b in out if b.kv_tokens <= max_kv_tokens] or out[:1]
    return out


def pipeline_batch(groups) -> BatchShape:
    """The batch of a full pipeline: for each ``(count, prompt, output)`` group, ``count`` requests
    at every stage of a request's life: one whole-prompt prefill (ctx 0) and decodes at KV
    prompt + s for s = 1..output-1 (the engine's token accounting). Aggregated in closed form;
    counts may be fractional (the fluid model's per-stage populations)."""
    shape = BatchShape()
    for count, prompt, output in groups:
        if count <= 0:
            continue
        decodes = max(0.0, output - 1)
        shape.prefill_tokens += count * prompt
        shape.prefill_requests += count
        shape.prefill_kv_tokens += count * prompt
        shape.prefill_attn_pairs += count * prompt * (prompt + 1) / 2
        shape.decode_requests += count * decodes
        shape.decode_kv_tokens += count * (decodes * prompt + decodes * (decodes + 1) / 2)
    return shape


def pipeline_batches(types, max_kv_tokens: float | None = None, points: int = 12
                     ) -> list[BatchShape]:
    """Batches shaped like a threshold policy's (WAIT) on a workload of ``(prompt, output, rate)``
    types: every type with requests at every stage in proportion to its rate, at ``points``
    geometrically spaced sizes whose KV spans 1/256 of ``max_kv_tokens`` to all of it (without a
    capacity: one to 256 requests per stage of the most frequent type). Along this family a
    threshold policy's iteration time is what the fluid model's d0 + d1 M describes."""
    types = [(float(p), float(o), float(r)) for p, o, r in types]
    top = max(r for _, _, r in types)
    unit = pipeline_batch([(r / top, p, o) for p, o, r in types]).kv_tokens
    if max_kv_tokens:
        sizes = np.geomspace(max_kv_tokens / 256, max_kv_tokens, points) / unit
    else:
        sizes = np.geomspace(1, 256, points)
    return [pipeline_batch([(k * r / top, p, o) for p, o, r in types]) for k in sizes]


@dataclass(frozen=True)
class LinearFit:
    cost: LinearCost
    rmse_s: float               # root-mean-square error over the batches, seconds
    max_rel_error: float        # worst |fit - model| / model over the batches
    batches: int


def fit_linear(model: CostModel, batches: list[BatchShape] | None = None,
               terms: tuple[str, ...] = TERMS, relative: bool = False) -> LinearFit:
    """Least-squares linear coefficients (only ``terms``; the others stay 0) for ``model``,
    constrained to be >= 0 (scipy-free: non-negative least squares by active-set elimination).
    ``relative`` minimises relative instead of absolute errors (each batch weighted by 1 /
    its time), so short steps count as much as long ones."""
    unknown = [t for t in terms if t not in TERMS]
    if unknown or not terms:
        raise ConfigError(f"fit_linear terms must be among {TERMS}, got {terms}")
    batches = batches or representative_batches()
    cols = [TERMS.index(t) for t in terms]
    X = np.array([[_features(b)[i] for i in cols] for b in batches], dtype=float)
    y = np.array([model.iteration_time(b) for b in batches], dtype=float)
    # A batch family scaled from an extreme rate (two arrivals a denormal gap apart make the
    # measured rate overflow) can hold non-finite sizes; fit on the batches that are finite.
    finite = np.isfinite(X).all(axis=1) & np.isfinite(y) & (y > 0)
    if not finite.any():
        return fit_linear(model, representative_batches(), terms, relative)
    if not finite.all():
        batches = [b for b, ok in zip(batches, finite) if ok]
        X, y = X[finite], y[finite]
    w = 1.0 / y if relative else np.ones_like(y)
    active = list(range(len(cols)))
    while True:
        coef_a, *_ = np.linalg.lstsq(X[:, active] * w[:, None], y * w, rcond=None)
        if (coef_a >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(coef_a)))   # drop the most negative term and refit
    coef = np.zeros(len(cols))
    coef[active] = np.maximum(coef_a, 0.0)
    # The solution's last bits depend on the BLAS kernels this CPU gets (OpenBLAS picks them
    # per CPU model): rounded to 12 significant digits, far below the fit's own error, the
    # coefficients, and so every iteration a run prices with them, are the same on every
    # machine (but where a coefficient falls within 1e-16 of a rounding boundary). The
    # residuals are summed without BLAS, exactly (math.fsum), for the same reason.
    coef = np.array([float(f"{c:.12g}") for c in coef.tolist()])
    values = dict(zip(terms, coef.tolist()))
    cost = LinearCost(**values)
    err = ((X * coef).sum(axis=1) - y).tolist()
    return LinearFit(cost, math.sqrt(math.fsum(e * e for e in err) / len(err)),
                     max(abs(e) / t for e, t in zip(err, y.tolist())), len(batches))


def fit_cost(cost_model: CostModel, types: Sequence[TypeRates] | None = None,
             capacity: float | None = None, max_model_len: int = 4096) -> CostFit:
    """(d0, d1) of the fluid model's tau = d0 + d1 * KV for ``cost_model``.

    A linear model with only c0 and c_kv is the paper's model and is taken as it is. Anything else
    is fitted by non-negative least squares (``fit_linear``) over batches shaped like the ones a
    threshold policy runs on this workload: every type contributing requests in proportion to its
    rate at every stage (``pipeline_batches``), at scales up to the KV capacity; without types,
    over the generic representative batches. Policies receive it bound to the run's cost model
    (``WorkloadHint.cost_fit``).
    """
    if isinstance(cost_model, LinearCost) and cost_model.c_prefill == 0 and \
            cost_model.c_decode == 0:
        return CostFit(cost_model.c0, cost_model.c_kv, 0.0, 0.0, "exact")
    if types:
        batches = pipeline_batches([(t.prompt, t.output, t.rate) for t in types],
                                   max_kv_tokens=capacity)
    else:
        batches = representative_batches(max_model_len, capacity)
    fit = fit_linear(cost_model, batches, terms=("c0", "c_kv"))
    return CostFit(fit.cost.c0, fit.cost.c_kv, fit.rmse_s, fit.max_rel_error, "fit", fit.batches)
