"""Transformations of a workload: time window, first N, rate scaling, length filters,
truncation to the model's maximum length, and resampling (generated arrivals for the trace's
lengths, or the trace's arrivals with lengths drawn from another file).

Each returns a new Workload (request ids renumbered 0..n-1 in arrival order) and appends a
record of what it did, with its counts and seed, to ``meta['transforms']``, which ends up in
the run's summary. Random ones draw from the named streams of ``traces.workload.stream_rng``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.arrivals import ArrivalProcess
from traces.errors import WorkloadError
from traces.lengths import EmpiricalLengths
from traces.workload import HASH_IDS, TEXT_BLOCKS, Workload, stream_rng


def stamp(meta: dict, frame: pd.DataFrame) -> dict:
    """Refresh the request count, span and mean rate that describe the workload (a length-only
    one, without times, has span 0 and no rate)."""
    s = Workload(frame).summary()
    timed = s["span_s"] == s["span_s"]          # NaN without arrival times
    meta.update(requests=s["requests"], span_s=s["span_s"] if timed else 0.0,
                mean_rate=s["mean_rate"] if timed else None)
    if "session_rate" in s:
        meta["session_rate"] = s["session_rate"] if timed else None
    return meta


def _derive(w: Workload, frame: pd.DataFrame, record: dict, restamp: bool = True,
            **meta_updates) -> Workload:
    """``w`` with a new frame, ``record`` appended to its transforms; its count, span and rate
    measured again (``stamp``) unless ``restamp`` is False (the arrivals did not change: a
    process's nominal rate stays)."""
    frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise WorkloadError(f"{record['op']}: no requests left ({_describe(record)})")
    frame["request_id"] = np.arange(len(frame), dtype=np.int64)
    meta = {**w.meta, **meta_updates, "transforms": [*w.meta.get("transforms", []), record]}
    return Workload(frame, stamp(meta, frame) if restamp else meta)


def _describe(record: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in record.items() if k != "op")


def _arrivals(w: Workload, op: str) -> np.ndarray:
    t = w.frame["arrival_s"].to_numpy()
    if len(t) and not np.isfinite(t).all():
        raise WorkloadError(f"{op} needs arrival times; this workload has none (lengths only)")
    return t


def time_window(w: Workload, start: float | None = None, end: float | None = None) -> Workload:
    """Requests arriving in [start, end) seconds of the trace; times then count from ``start``."""
    t = _arrivals(w, "time window")
    lo = 0.0 if start is None else float(start)
    hi = np.inf if end is None else float(end)
    if lo < 0 or not hi > lo:
        raise WorkloadError(f"time window needs 0 <= start < end, got start={start}, end={end}")
    keep = (t >= lo) & (t < hi)
    frame = w.frame[keep].copy()
    frame["arrival_s"] = frame["arrival_s"] - lo
    span = float(t[-1]) if len(t) else 0.0
    record = {"op": "time_window", "start_s": lo, "end_s": None if end is None else hi,
              "kept": int(keep.sum()), "dropped": int((~keep).sum()), "trace_span_s": span}
    return _derive(w, frame, record)


def first_n(w: Workload, n: int) -> Workload:
    """The first ``n`` requests (all of them, with a warning, if there are fewer)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise WorkloadError(f"first N requests needs N >= 1, got {n!r}")
    warnings = list(w.meta.get("warnings", []))
    if n > len(w):
        warnings.append(f"asked for the first {n} requests; the trace has only {len(w)}")
    record = {"op": "first_n", "n": int(n), "kept": min(int(n), len(w))}
    return _derive(w, w.frame.iloc[:n].copy(), record, warnings=warnings)


def scale_rate(w: Workload, speedup: float | None = None,
               target_rate: float | None = None) -> Workload:
    """Compress time by ``speedup`` (2 = twice the rate), or to a mean rate of ``target_rate``
    requests/s (mean rate = (n - 1) / span, as everywhere in servesim)."""
    if (speedup is None) == (target_rate is None):
        raise WorkloadError("rate scaling needs exactly one of speedup and target_rate")
    t = _arrivals(w, "rate scaling")
    before = stamp({}, w.frame)["mean_rate"]
    if speedup is not None:
        factor = _positive("speedup", speedup)
    else:
        _positive("target_rate", target_rate)
        if before is None:
            raise WorkloadError("target_rate: the trace spans 0 s, so it has no rate to scale")
        factor = target_rate / before
    frame = w.frame.copy()
    frame["arrival_s"] = t / factor
    record = {"op": "scale_rate", "factor": factor, "mean_rate_before": before,
              "mean_rate_after": None if before is None else before * factor}
    return _derive(w, frame, record)


def filter_lengths(w: Workload, prompt: tuple[int | None, int | None] | None = None,
                   output: tuple[int | None, int | None] | None = None) -> Workload:
    """Keep requests whose prompt and output token counts lie in the given inclusive ranges
    (None: no bound on that side)."""
    keep = np.ones(len(w), dtype=bool)
    record: dict = {"op": "filter_lengths"}
    for name, bounds, column in (("prompt", prompt, "prompt_tokens"),
                                 ("output", output, "output_tokens")):
        if bounds is None:
            continue
        lo, hi = bounds
        v = w.frame[column].to_numpy()
        if lo is not None:
            keep &= v >= lo
        if hi is not None:
            keep &= v <= hi
        record[name] = [lo, hi]
    record.update(kept=int(keep.sum()), dropped=int((~keep).sum()))
    return _derive(w, w.frame[keep].copy(), record)


def truncate(w: Workload, max_model_len: int) -> Workload:
    """Fit every request into ``max_model_len`` (prompt + output) tokens.

    The output is kept and the prompt cut to the rest: the output sets the number of decode
    iterations and the per-token latency samples, while an over-long context is what clients
    trim (they keep the recent end of a conversation). An output of ``max_model_len`` or more
    is cut to ``max_model_len - 1`` with a 1-token prompt. Counted and reported.
    """
    if not max_model_len >= 2:
        raise WorkloadError(f"truncation needs max_model_len >= 2, got {max_model_len}")
    p = w.frame["prompt_tokens"].to_numpy()
    o = w.frame["output_tokens"].to_numpy()
    new_o = np.minimum(o, max_model_len - 1)
    new_p = np.minimum(p, max_model_len - new_o)
    cut = (new_p != p) | (new_o != o)
    frame = w.frame.copy()
    frame["prompt_tokens"] = new_p
    frame["output_tokens"] = new_o
    record = {"op": "truncate", "max_model_len": int(max_model_len), "truncated": int(cut.sum()),
              "prompt_tokens_cut": int((p - new_p).sum()),
              "output_tokens_cut": int((o - new_o).sum())}
    return _derive(w, frame, record)


def jitter(w: Workload, width: float, seed: int) -> Workload:
    """Spread each request uniformly over [t, t + width) after its timestamp t, seeded: for
    traces whose timestamps are coarse buckets (Mooncake: 3 s; BurstGPT: whole seconds), so a
    replay does not see each bucket's requests arrive at once. Re-sorted by the new times."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or \
            not (np.isfinite(width) and width >= 0):
        raise WorkloadError(f"jitter must be a number of seconds >= 0, got {width!r}")
    t = _arrivals(w, "jitter")
    frame = w.frame.copy()
    frame["arrival_s"] = t + stream_rng(seed, "jitter").uniform(0.0, width, size=len(t))
    frame = frame.sort_values("arrival_s", kind="stable")
    return _derive(w, frame, {"op": "jitter", "width_s": float(width), "seed": int(seed)})


def generate_arrivals(w: Workload, process: ArrivalProcess, seed: int) -> Workload:
    """Keep the requests' lengths in order; replace their arrival times by ``process``'s."""
    times = process.sample(stream_rng(seed, "arrivals"), n=len(w))
    frame = w.frame.copy()
    frame["arrival_s"] = times
    record = {"op": "generate_arrivals", "arrival": process.name,
              "mean_rate": process.mean_rate, "seed": int(seed)}
    return _derive(w, frame, record, arrival=process.name)


def sample_lengths(w: Workload, lengths: EmpiricalLengths, seed: int) -> Workload:
    """Keep the arrival times; draw each request's (prompt, output) pair from ``lengths``."""
    prompts, outputs, _ = lengths.sample(stream_rng(seed, "lengths"), len(w))
    frame = w.frame.copy()
    frame["prompt_tokens"] = prompts
    frame["output_tokens"] = outputs
    # Prefix-block hashes describe the original prompts, not the drawn ones.
    frame = frame.drop(columns=[c for c in (HASH_IDS, TEXT_BLOCKS) if c in frame.columns])
    record = {"op": "sample_lengths", "source": lengths.source, "pairs": len(lengths.prompts),
              "seed": int(seed)}
    return _derive(w, frame, record, lengths=lengths.describe())


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not np.isfinite(value) or value <= 0:
        raise WorkloadError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def parse_range(text: str | None, field: str) -> tuple[int | None, int | None] | None:
    """``LOW:HIGH`` token range, either side optional (``128:``, ``:4096``); None if not given."""
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise WorkloadError(f"{field}: expected a token range LOW:HIGH (either side may be "
                            f"empty), got {text!r}")
    if (lo is not None and lo < 0) or (hi is not None and lo is not None and hi < lo):
        raise WorkloadError(f"{field}: need 0 <= LOW <= HIGH, got {text!r}")
    return lo, hi
