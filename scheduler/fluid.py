"""The fluid model of LLM inference and the thresholds of WAIT and Nested WAIT.

Source: R. Ao, G. Luo, D. Simchi-Levi, X. Wang, "Optimizing LLM Inference: Fluid-Guided Online
Scheduling with Memory Constraints", arXiv:2504.11320. Pure arithmetic: no SimPy, no engine.

Stage conventions (``convention``). In the paper a type-j request with output length l'_j runs
l'_j + 1 iterations, at stages s = 0..l'_j, holding l_j + s KV tokens at stage s, so its lifetime
KV work is w_j = (l'_j + 1)(l_j + l'_j / 2). Our engine follows vLLM: the prefill iteration
already emits the first output token, so a request with o output tokens runs o iterations, at
stages s = generated tokens = 0..o-1, holding l + s tokens while computing at stage s. That is
exactly the paper's model with l' = o - 1, so:

- ``"engine"`` (the default, used by the policies): every formula below is the paper's with
  l'_j = o_j - 1 stages of decode. It is exact for our engine (a test checks w against the
  engine's measured KV work).
- ``"paper"``: the paper's formulas read literally with l'_j = o_j (one extra iteration per
  request): a conservative bound for our engine, and what the hand-computed tests check.

The throughput bound counts output tokens either way: Thr* = sum_j lambda_j o_j.

Prefix caching. A type's ``cached`` prompt tokens (its prompt x the workload's expected hit
rate, ``WorkloadHint.hit_rate``) are found in the cache at admission: its prefill computes
l - c tokens. In the paper's cost tau = d0 + d1 sum (l + s) a prefill of l tokens costs d1 l,
so the iterations charge the *compute work* w_j - c_j per request, while its KV stays w_j (the
cached blocks are held like computed ones). Time terms (dT, the load d1 rho, the time
conditions) use rho_c = sum_j lambda_j (w_j - c_j); memory terms (M*, M_pi, C) use rho and w_j.
With c = 0 every formula is the paper's. A disaggregated decode replica receives every prompt
computed on the prefill side (c = l, hit rate 1): its iterations charge only the decode work
w - l, the decode-only setting of the paper's own simulator, while memory keeps w.

All memory figures are in KV tokens; the engine allocates in blocks, so a policy that must never
exceed its capacity also checks blocks (see scheduler/policies/wait.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

CONVENTIONS = ("engine", "paper")


@dataclass(frozen=True)
class FluidType:
    """A request type of the fluid model: prompt l, output o (tokens; may be averages), rate,
    and the prompt tokens c found in the prefix cache at admission (the prefill computes l - c).
    """

    name: str
    prompt: float
    output: float
    rate: float
    cached: float = 0.0

    def decode_stages(self, convention: str = "engine") -> float:
        """The paper's l': stages after the first (the engine's o - 1, or the paper's o)."""
        _check_convention(convention)
        return self.output - 1 if convention == "engine" else self.output

    def iterations(self, convention: str = "engine") -> float:
        """Iterations a request runs: l' + 1."""
        return self.decode_stages(convention) + 1

    def work(self, convention: str = "engine") -> float:
        """Lifetime KV work w = sum_{s=0}^{l'} (l + s) = (l' + 1)(l + l'/2)."""
        lp = self.decode_stages(convention)
        return (lp + 1) * (self.prompt + lp / 2)

    def compute_work(self, convention: str = "engine") -> float:
        """What the iterations charge: w - c (the prefill stage computes l - c tokens)."""
        return self.work(convention) - self.cached


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def from_request_types(types) -> list[FluidType]:
    """FluidTypes from ``traces.lengths.RequestType`` records (name, prompt_tokens, output_tokens,
    rate)."""
    return [FluidType(t.name, float(t.prompt_tokens), float(t.output_tokens), float(t.rate))
            for t in types]


def with_hit_rate(types: Sequence[FluidType], hit_rate: float) -> list[FluidType]:
    """``types`` whose prefills find ``hit_rate`` of their prompt tokens cached (c = h l)."""
    if not 0 <= hit_rate <= 1:   # 1: a disaggregated decode replica's prompts arrive computed
        raise ValueError(f"hit_rate must be in [0, 1], got {hit_rate!r}")
    return [dataclasses.replace(t, cached=hit_rate * t.prompt) for t in types]


# --------------------------------------------------------------------------------------------
# Equilibrium and stable region

@dataclass(frozen=True)
class Equilibrium:
    """The fluid equilibrium of a workload under tau = d0 + d1 * (KV tokens of the batch)."""

    types: tuple[FluidType, ...]
    d0: float
    d1: float
    capacity: float | None          # C, KV tokens (None: memory unconstrained)
    convention: str
    work: tuple[float, ...]         # w_j
    rho: float                      # sum_j lambda_j w_j, KV tokens per second
    rho_compute: float              # rho_c = sum_j lambda_j (w_j - c_j): what the time charges
    M_star: float                   # d0 rho / (1 - d1 rho_c); inf when d1 rho_c >= 1
    dT_star: float                  # d0 / (1 - d1 rho_c)
    n_star: tuple[float, ...]       # lambda_j dT*: type-j requests per stage
    throughput_bound: float         # Thr* = sum_j lambda_j o_j, output tokens per second
    max_rate_scale: float           # largest a such that rates a * lambda are stable

    @property
    def compute_stable(self) -> bool:
        return self.d1 * self.rho_compute < 1

    @property
    def memory_stable(self) -> bool:
        return self.capacity is None or self.M_star <= self.capacity

    @property
    def stable(self) -> bool:
        """Fluid stability: d1 rho < 1 and M* <= C."""
        return self.compute_stable and self.memory_stable

    @property
    def concurrency(self) -> float:
        """Requests on the GPU at equilibrium: sum_j n_j* (l'_j + 1)."""
        return sum(n * t.iterations(self.convention) for n, t in zip(self.n_star, self.types))

    def as_dict(self) -> dict:
        return {
            "types": [{"name": t.name, "prompt": t.prompt, "output": t.output, "rate": t.rate,
                       "cached": t.cached, "work": w, "n_star": n}
                      for t, w, n in zip(self.types, self.work, self.n_star)],
            "d0": self.d0, "d1": self.d1, "capacity": self.capacity,
            "convention": self.convention, "rho": self.rho, "rho_compute": self.rho_compute,
            "load": self.d1 * self.rho_compute,
            "M_star": self.M_star, "dT_star": self.dT_star,
            "n_star": {t.name: n for t, n in zip(self.types, self.n_star)},
            "concurrency": self.concurrency,
            "throughput_bound": self.throughput_bound,
            "request_rate": sum(t.rate for t in self.types),
            "stable": self.stable, "compute_stable": self.compute_stable,
            "memory_stable": self.memory_stable, "max_rate_scale": self.max_rate_scale,
        }


def equilibrium(types: Sequence[FluidType], d0: float, d1: float, capacity: float | None = None,
                convention: str = "engine") -> Equilibrium:
    """M*, dT*, n*, Thr*, stability and the largest stable scaling of the rates.

    Scaling every rate by a scales rho and rho_c by a; M*(a) <= C  <=>  a (d0 rho + d1 rho_c C)
    <= C, which also implies d1 a rho_c < 1, so the largest stable scale is C / (d0 rho + d1
    rho_c C) (the paper's C / (rho (d0 + d1 C)) without caching); without a memory limit it is
    1 / (d1 rho_c).
    """
    _check_convention(convention)
    if not types:
        raise ValueError("the fluid model needs at least one request type")
    if d0 < 0 or d1 < 0 or (d0 == 0 and d1 == 0):
        raise ValueError(f"need d0, d1 >= 0, not both 0; got d0={d0}, d1={d1}")
    work = tuple(t.work(convention) for t in types)
    rho = sum(t.rate * w for t, w in zip(types, work))
    rho_c = sum(t.rate * t.compute_work(convention) for t in types)
    load = d1 * rho_c
    if load < 1:
        dT = d0 / (1 - load)
        M = d0 * rho / (1 - load)
    else:
        dT = M = math.inf
    n_star = tuple(t.rate * dT for t in types)
    thr = sum(t.rate * t.output for t in types)
    if rho == 0:
        scale = math.inf
    elif capacity is not None:
        scale = capacity / (d0 * rho + d1 * rho_c * capacity)
    else:
        scale = 1 / load if load > 0 else math.inf
    return Equilibrium(tuple(types), d0, d1, capacity, convention, work, rho, rho_c, M, dT,
                       n_star, thr, scale)


# --------------------------------------------------------------------------------------------
# WAIT thresholds (output lengths known)

# When the workload is outside the stable region no thresholds meet the conditions; a threshold
# policy then fills this share of the KV capacity (the rest absorbs block rounding and the
# rotation of fractional thresholds) and serves as much as that memory allows.
OVERLOAD_MEMORY_SHARE = 0.95


@dataclass(frozen=True)
class WaitPlan:
    """Per-type thresholds n_j with their memory M_pi = sum n_j w_j and iteration time."""

    thresholds: tuple[float, ...]
    M_pi: float
    dT: float                        # d0 + d1 sum_j n_j (w_j - c_j): d0 + d1 M_pi uncached
    time_ok: bool                    # dT <= n_j / lambda_j for every j
    memory_ok: bool                  # M* <= M_pi <= C
    capped: bool = False             # outside the stable region: thresholds sized to memory


def wait_memory(types: Sequence[FluidType], thresholds: Sequence[float],
                convention: str = "engine") -> float:
    return sum(n * t.work(convention) for n, t in zip(thresholds, types))


def check_wait(types: Sequence[FluidType], thresholds: Sequence[float], d0: float, d1: float,
               capacity: float | None = None, convention: str = "engine",
               capped: bool = False) -> WaitPlan:
    """The paper's conditions: dT(n) = d0 + d1 M_pi <= n_j / lambda_j and M* <= M_pi <= C (with
    cached prompt tokens dT charges the compute work: d0 + d1 sum_j n_j (w_j - c_j))."""
    M_pi = wait_memory(types, thresholds, convention)
    dT = d0 + d1 * sum(n * t.compute_work(convention) for n, t in zip(thresholds, types))
    time_ok = all(dT <= n / t.rate * (1 + 1e-12) for n, t in zip(thresholds, types))
    eq = equilibrium(types, d0, d1, capacity, convention)
    memory_ok = eq.M_star <= M_pi * (1 + 1e-12) and (capacity is None or M_pi <= capacity)
    return WaitPlan(tuple(thresholds), M_pi, dT, time_ok, memory_ok, capped)


def _round_threshold(x: float, integer: bool) -> float:
    """The paper rounds thresholds up to integers >= 1 (up keeps n / lambda >= c)."""
    return float(max(1, math.ceil(x - 1e-9))) if integer else x


def _smallest_scale(base: Sequence[float], rates: Sequence[float], work_per_unit: Sequence[float],
                    d0: float, d1: float, slack: float, integer: bool) -> tuple[float, ...] | None:
    """Thresholds n_g = round(c base_g), starting from the fluid value c = (1 + slack) d0 /
    (1 - d1 rho_c) and raised (c <- (1 + slack) dT(n)) until the paper's condition dT(n) = d0 +
    d1 sum n_g m_g <= n_g / rate_g holds for every group g with a rate after rounding, m_g the
    compute work one request of g charges the iterations. None when the load is fluid-unstable."""
    load = d1 * sum(b * m for b, m in zip(base, work_per_unit))
    if load >= 1:
        return None
    # Near the edge of stability (1 + slack) d1 rho >= 1 would leave no c: shrink the slack.
    slack = min(slack, 0.5 * (1 / load - 1)) if load > 0 else slack
    c = (1 + slack) * d0 / (1 - load)
    for _ in range(10_000):
        n = tuple(_round_threshold(c * b, integer) for b in base)
        dT = d0 + d1 * sum(k * m for k, m in zip(n, work_per_unit))
        if all(dT <= k / r * (1 + 1e-12) for k, r in zip(n, rates) if r > 0):
            return n
        c = max(c * (1 + 1e-6), (1 + slack) * dT)
    return None


def wait_thresholds(types: Sequence[FluidType], d0: float, d1: float, slack: float = 0.1,
                    capacity: float | None = None, convention: str = "engine",
                    integer: bool = True) -> WaitPlan:
    """The fluid-consistent choice n_j = c lambda_j, c = (1 + eps) d0 / (1 - d1 rho), rounded up to
    integers >= 1, with c raised until the conditions hold after rounding.

    Outside the stable region (no such c, or M_pi > C) the thresholds are n_j = a lambda_j with
    a sized so that M_pi fills OVERLOAD_MEMORY_SHARE of C: the most the memory can serve."""
    work = [t.work(convention) for t in types]
    compute = [t.compute_work(convention) for t in types]
    rates = [t.rate for t in types]
    # Integers first (the paper's rule); when a whole request per stage does not fit in memory
    # (long outputs: one p512d1000 pipeline holds 1.0e6 KV tokens) keep the fluid's fractional
    # thresholds, which a policy realises by rotating admissions.
    for whole in ((True, False) if integer else (False,)):
        n = _smallest_scale(rates, rates, compute, d0, d1, slack, whole)
        if n is not None:
            plan = check_wait(types, n, d0, d1, capacity, convention)
            if capacity is None or plan.M_pi <= capacity:
                return plan
    if capacity is None:
        raise ValueError("the fluid model is unstable (d1 rho >= 1/(1 + slack)) and no memory "
                         "capacity bounds the thresholds")
    a = OVERLOAD_MEMORY_SHARE * capacity / sum(r * w for r, w in zip(rates, work))
    return check_wait(types, [a * r for r in rates], d0, d1, capacity, convention, capped=True)


# --------------------------------------------------------------------------------------------
# Nested WAIT (output lengths unknown, distribution known)

@dataclass(frozen=True)
class Segment:
    """Segment k covers the engine's stages [start, end): the iterations at generated tokens
    start..end-1. Segment 1 starts at 0 (the prefill); segment k >= 2 starts where the previous
    type's requests finish, and that type's survivors wait there with their KV resident."""

    index: int
    start: int
    end: int                         # exclusive; the last segment ends at the longest output
    rate: float                      # Lambda_k: rate of requests that reach this segment
    survival: float                  # p_k = Lambda_k / Lambda_{k-1} (1 for the first)
    prompt: float                    # largest prompt among the types this segment serves
    cached: float = 0.0              # of it, found cached by the prefill (segment 1 only)

    @property
    def stages(self) -> int:
        return self.end - self.start

    @property
    def work(self) -> float:
        """(l + sbar_k) delta_k: one request's KV work through the segment, sum over its stages of
        l + s; the paper's delta_1 = l'_1 + 1, sbar_1 = l'_1 / 2 and delta_k = l'_k - l'_{k-1},
        sbar_k = (l'_{k-1} + 1 + l'_k) / 2 in stage coordinates."""
        return (self.prompt + (self.start + self.end - 1) / 2) * self.stages

    @property
    def compute_work(self) -> float:
        """What the iterations charge for it: work - cached (the prefill computes l - c)."""
        return self.work - self.cached


@dataclass(frozen=True)
class NestedPlan:
    segments: tuple[Segment, ...]
    thresholds: tuple[float, ...]    # n_k, per-stage caps (fractional: rotated admissions)
    M_pi: float
    dT: float                        # d0 + d1 sum_k n_k (work_k - cached_k)
    capped: bool = False

    @property
    def time_ok(self) -> bool:
        """dT(n) < n_1 / Lambda_1."""
        return self.dT < self.thresholds[0] / self.segments[0].rate

    @property
    def ratios_ok(self) -> bool:
        """p_k < n_k / n_{k-1} < 1 for k >= 2."""
        n, segs = self.thresholds, self.segments
        return all(segs[k].survival < n[k] / n[k - 1] < 1 for k in range(1, len(segs)))

    @property
    def tl(self) -> float:
        """Cap on concurrent requests: sum_k (stages of k) n_k."""
        return sum(s.stages * n for s, n in zip(self.segments, self.thresholds))


def nested_segments(types: Sequence[FluidType], convention: str = "engine"
                    ) -> tuple[Segment, ...]:
    """Segments from the types' distinct output lengths (sorted). Each segment's prompt is the
    largest among the types it serves (the paper: with heterogeneous prompts use the per-segment
    maximum), and segment 1's cached tokens the largest among its types (the prefill is in it).

    In the engine convention segment k covers stages [o_{k-1}, o_k) (o_0 = 0). In the paper's
    convention (l' = o) segment 1 covers stages 0..l'_1 and segment k covers (l'_{k-1}, l'_k],
    i.e. [o_{k-1} + 1, o_k + 1).
    """
    _check_convention(convention)
    outputs = sorted({int(round(t.output)) for t in types})
    total = sum(t.rate for t in types)
    if total <= 0:
        raise ValueError("nested segments need a positive total rate")
    segs = []
    prev_end, prev_rate = 0, total
    for k, o in enumerate(outputs):
        served = [t for t in types if t.output > (outputs[k - 1] if k else 0)]
        rate = sum(t.rate for t in served)
        end = o if convention == "engine" else o + 1
        segs.append(Segment(k + 1, prev_end, end, rate, rate / prev_rate if k else 1.0,
                            max(t.prompt for t in served),
                            0.0 if k else max(t.cached for t in served)))
        prev_end, prev_rate = end, rate
    return tuple(segs)


def nested_memory(segments: Sequence[Segment], thresholds: Sequence[float]) -> float:
    """M_pi = sum_k n_k (l_k + sbar_k) delta_k."""
    return sum(n * s.work for s, n in zip(segments, thresholds))


def _ratios(segments: Sequence[Segment], eta: float) -> list[float]:
    """Cumulative products of q_k = min(p_k + eta, 0.99): n_k = n_1 * prod_{r=2..k} q_r."""
    out, acc = [1.0], 1.0
    for s in segments[1:]:
        acc *= min(s.survival + eta, 0.99)
        out.append(acc)
    return out


def nested_plan(types: Sequence[FluidType], d0: float, d1: float, *, tl: float | None = None,
                thresholds: Sequence[float] | None = None, eta: float = 0.05, slack: float = 0.1,
                capacity: float | None = None, convention: str = "engine") -> NestedPlan:
    """Per-segment caps n_k for Nested WAIT (real numbers; a policy rotates fractional ones).

    - ``thresholds`` given: used as they are.
    - ``tl`` given (the paper's practical knob): n_k = n_1 prod q_r with q_k = min(p_k + eta, 0.99)
      and n_1 such that sum_k delta_k n_k = tl.
    - neither: the same ratios with the smallest n_1 meeting (1 + slack) dT(n) <= n_1 / Lambda_1
      (the fluid choice n_1 = (1 + slack) Lambda_1 dT), raised to 1 if smaller and memory allows;
      outside the stable region, or when that M_pi exceeds C, n_1 sized so that M_pi fills
      OVERLOAD_MEMORY_SHARE of C.
    """
    segs = nested_segments(types, convention)
    capped = False
    n: tuple[float, ...] | None
    if thresholds is not None:
        if len(thresholds) != len(segs):
            raise ValueError(f"need {len(segs)} segment thresholds, got {len(thresholds)}")
        n = tuple(float(x) for x in thresholds)
    else:
        cum = _ratios(segs, eta)
        per_unit = [s.work for s in segs]
        compute = [s.compute_work for s in segs]
        if tl is not None:
            n1 = tl / sum(s.stages * c for s, c in zip(segs, cum))
            n = tuple(n1 * c for c in cum)
        else:
            rates = [segs[0].rate] + [0.0] * (len(segs) - 1)
            n = _smallest_scale([segs[0].rate * c for c in cum], rates, compute, d0, d1, slack,
                                integer=False)
            if n is not None and n[0] < 1:
                # At least one request per stage in segment 1 when it fits (as WAIT rounds up);
                # the time condition is linear in n_1, so raising n_1 keeps it.
                whole = tuple(c / cum[0] * 1.0 for c in cum)
                if capacity is None or nested_memory(segs, whole) <= capacity:
                    n = whole
            if n is None or (capacity is not None and nested_memory(segs, n) > capacity):
                if capacity is None:
                    raise ValueError("the fluid model is unstable and no memory capacity bounds "
                                     "the thresholds")
                n1 = OVERLOAD_MEMORY_SHARE * capacity / sum(c * w for c, w in zip(cum, per_unit))
                n = tuple(n1 * c for c in cum)
                capped = True
    M_pi = nested_memory(segs, n)
    dT = d0 + d1 * sum(k * s.compute_work for s, k in zip(segs, n))
    return NestedPlan(segs, n, M_pi, dT, capped)


def _theta(n_k: float, n_prev: float, p: float) -> float:
    """theta > 0 solving exp(-theta n_k) (1 - p + p e^theta)^{n_prev} = 1, by bisection on
    f(theta) = n_prev log(1 - p + p e^theta) - theta n_k (convex, f(0) = 0, f'(0) < 0 when
    n_k > p n_prev, and f -> +inf when n_k < n_prev)."""
    if not (p * n_prev < n_k < n_prev) or p <= 0:
        return math.inf if p <= 0 or n_k >= n_prev else math.nan

    def f(th):
        return n_prev * (th + math.log(p + (1 - p) * math.exp(-th))) - th * n_k

    lo, hi = 0.0, 1.0
    while f(hi) <= 0:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12 * hi:
            break
    return hi


def nested_buffer(plan: NestedPlan, d0: float, horizon_s: float, delta: float = 0.01) -> float:
    """Safety buffer: sum_{k>=2} (l + l'_{k-1}) (n_k + ln(m (1 + T/d0) / delta) / theta_k).

    With C >= M_pi + buffer the boundary queues fit in memory over horizon T with probability at
    least 1 - delta. A request waiting at the entry of segment k holds the KV of its stage
    start_k - 1 and needs l + start_k when it runs; we charge l + start_k (the paper's
    l + l'_{k-1} in engine coordinates, plus one token: conservative).
    """
    segs, n = plan.segments, plan.thresholds
    m = len(segs)
    log_term = math.log(m * (1 + horizon_s / d0) / delta)
    total = 0.0
    for k in range(1, m):
        th = _theta(n[k], n[k - 1], segs[k].survival)
        extra = 0.0 if math.isinf(th) else (math.inf if math.isnan(th) else log_term / th)
        total += (segs[k].prompt + segs[k].start) * (n[k] + extra)
    return total


# --------------------------------------------------------------------------------------------
# Types from data

CLUSTERINGS = ("equal-width", "quantile")


def types_from_lengths(prompts, outputs, total_rate: float, segments: int,
                       method: str = "equal-width", representative: str = "max"
                       ) -> list[FluidType]:
    """Cluster observed output lengths into at most ``segments`` groups.

    Edges are equal-width over [min, max] output, or at quantiles. Each non-empty group becomes a
    type with rate total_rate x (its share of the data). ``representative`` picks its lengths:
    ``"max"`` (the group's longest output and prompt: segment boundaries for Nested WAIT, and
    memory bounds that hold for every member) or ``"mean"`` (the group's mean prompt and output:
    the fluid equilibrium of the mixture).
    """
    # NumPy only here: the rest is arithmetic, and servesim imports this module at start-up
    # (for CLUSTERINGS and CONVENTIONS).
    import numpy as np
    p = np.asarray(prompts, dtype=float)
    o = np.asarray(outputs, dtype=float)
    if len(o) == 0 or len(p) != len(o):
        raise ValueError("types_from_lengths needs matching, non-empty prompt and output lists")
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    if method not in CLUSTERINGS:
        raise ValueError(f"clustering must be one of {CLUSTERINGS}, got {method!r}")
    if representative not in ("max", "mean"):
        raise ValueError(f"representative must be max or mean, got {representative!r}")
    lo, hi = float(o.min()), float(o.max())
    if method == "equal-width":
        edges = np.linspace(lo, hi, segments + 1)
    else:
        edges = np.quantile(o, np.linspace(0, 1, segments + 1))
    edges = np.unique(np.ceil(edges[1:]))         # upper edges, integer, increasing
    group = np.searchsorted(edges, o, side="left")
    out = []
    for g in range(len(edges)):
        mask = group == g
        count = int(mask.sum())
        if not count:
            continue
        if representative == "max":
            prompt, output = float(p[mask].max()), float(o[mask].max())
        else:
            prompt, output = float(p[mask].mean()), float(o[mask].mean())
        lo_g = int(o[mask].min())
        out.append(FluidType(f"o{lo_g}-{int(o[mask].max())}", prompt, output,
                             total_rate * count / len(o)))
    return out
