"""Descriptive statistics of a workload: size, time span, rate, burstiness, length quantiles,
and a per-minute rate profile (``servesim trace stats``)."""

from __future__ import annotations

import numpy as np

from traces.workload import Workload

QUANTILES = (("median", 50), ("p90", 90), ("p99", 99))


def _lengths(values: np.ndarray) -> dict:
    out = {"mean": float(values.mean()), "min": int(values.min())}
    out.update({label: float(np.percentile(values, q)) for label, q in QUANTILES})
    out["max"] = int(values.max())
    return out


def trace_stats(w: Workload) -> dict:
    """Statistics of ``w``. Arrival statistics are None for a length-only file.

    - mean rate: (n - 1) / span, the reciprocal of the mean inter-arrival gap;
    - inter-arrival CV: standard deviation / mean of the gaps (1 for Poisson, > 1 bursty);
    - per-minute profile: requests arriving in each minute from the first request, divided by
      60 (requests/s); the last, partial minute is divided by 60 too.
    """
    f = w.frame
    t = f["arrival_s"].to_numpy()
    out: dict = {k: w.meta[k] for k in ("path", "format", "rows", "sha256") if k in w.meta}
    out["requests"] = len(f)
    has_times = len(t) > 0 and bool(np.isfinite(t).all())
    if has_times:
        gaps = np.diff(t)
        span = float(t[-1] - t[0])
        out.update(span_s=span,
                   mean_rate=(len(t) - 1) / span if span > 0 else None,
                   interarrival_cv=float(gaps.std() / gaps.mean())
                   if len(gaps) and gaps.mean() > 0 else None)
        minutes = np.floor((t - t[0]) / 60.0).astype(np.int64)
        counts = np.bincount(minutes)
        out["per_minute_rate"] = (counts / 60.0).tolist()
        out["peak_minute_rate"] = float(counts.max()) / 60.0
        out["idle_minutes"] = int((counts == 0).sum())
        out["max_gap_s"] = float(gaps.max()) if len(gaps) else 0.0
    else:
        out.update(span_s=None, mean_rate=None, interarrival_cv=None, per_minute_rate=None)
    out["prompt_tokens"] = _lengths(f["prompt_tokens"].to_numpy())
    out["output_tokens"] = _lengths(f["output_tokens"].to_numpy())
    if w.meta.get("dropped"):
        out["dropped"] = w.meta["dropped"]
    out["warnings"] = list(w.meta.get("warnings", []))
    return out
