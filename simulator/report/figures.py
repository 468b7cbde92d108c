"""The figures: latency and throughput against the arrival rate, latency CDFs, a run's timeline.

Drawn with matplotlib's object interface on the Agg canvas (no pyplot state, no display), each
saved atomically as a PNG. Every axis is labeled with its unit.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from simulator.io import atomic_write

STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110, "lines.linewidth": 1.6,
         "lines.markersize": 4}
# Latencies near overload span decades: switch to a log axis past this max/min ratio.
LOG_SCALE_RATIO = 30
MAX_TIMELINE_POINTS = 2000
BATCH_BINS = 200


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    return path


def _new(rows: int, cols: int, size: tuple[float, float], **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def col(metric: str, stat: str) -> str:
    """Column of an aggregated table: ``mean_e2el_ms:mean`` is the mean over seeds."""
    return f"{metric}:{stat}"


def _styled(draw):
    """Run a drawing function under the report's style (rc settings apply as artists are made)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def _wide(values) -> bool:
    """Values spanning more than LOG_SCALE_RATIO: drawn on a log axis."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return bool(len(v)) and v.max() / v.min() > LOG_SCALE_RATIO


def _series_lines(ax, agg: pd.DataFrame, x: str, metric: str) -> None:
    """One line per series: the mean over seeds, a band from the lowest to the highest seed."""
    for label, g in agg.groupby("series", sort=False):
        g = g.sort_values(x)
        line, = ax.plot(g[x], g[col(metric, "mean")], marker="o", label=str(label))
        if (g[col(metric, "count")] > 1).any():
            ax.fill_between(g[x], g[col(metric, "min")], g[col(metric, "max")],
                            color=line.get_color(), alpha=0.15, linewidth=0)


@_styled
def latency_vs_rate(agg: pd.DataFrame, x: str, x_label: str) -> Figure:
    """Mean and p99 of TTFT and E2E latency against the rate, one line per series."""
    fig, axes = _new(2, 2, (10, 7), sharex=True)
    panels = (("mean_e2el_ms", "mean E2E latency (ms)"), ("p99_e2el_ms", "p99 E2E latency (ms)"),
              ("mean_ttft_ms", "mean TTFT (ms)"), ("p99_ttft_ms", "p99 TTFT (ms)"))
    for ax, (metric, label) in zip(axes.flat, panels):
        _series_lines(ax, agg, x, metric)
        ax.set_ylabel(label)
        if _wide(agg[col(metric, "max")]):
            ax.set_yscale("log")
    for ax in axes[-1]:
        ax.set_xlabel(x_label)
    axes[0, 0].legend(title=agg.attrs.get("series_title"))
    fig.suptitle("Latency against arrival rate (line: mean over seeds; band: seed range)")
    return fig


@_styled
def throughput_vs_rate(agg: pd.DataFrame, x: str, x_label: str, bound: str | None) -> Figure:
    """Request throughput with the offered load, and output-token throughput with the fluid
    bound when the results carry it."""
    fig, axes = _new(1, 2, (11, 4.2))
    left, right = axes[0]
    _series_lines(left, agg, x, "request_throughput")
    xs = np.sort(agg[x].unique())
    if x in ("rate", "offered_rate"):
        left.plot(xs, xs, color="0.4", linestyle=":", label="offered load")
    left.set_xlabel(x_label)
    left.set_ylabel("request throughput (req/s)")
    left.legend(title=agg.attrs.get("series_title"))
    _series_lines(right, agg, x, "output_throughput")
    if bound is not None:
        for label, g in agg.groupby("series", sort=False):
            g = g.sort_values(x)
            right.plot(g[x], g[col(bound, "mean")], linestyle="--", color="black", linewidth=1.2,
                       label="fluid bound" if label == agg["series"].iloc[0] else None)
        right.legend()
    right.set_xlabel(x_label)
    right.set_ylabel("output throughput (tokens/s)")
    fig.suptitle("Throughput against arrival rate" +
                 (" (dashed: fluid throughput bound)" if bound else ""))
    return fig


def _ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(values[np.isfinite(values)])
    return v, np.arange(1, len(v) + 1) / max(len(v), 1)


@_styled
def latency_cdfs(samples: dict[str, pd.DataFrame], title: str) -> Figure:
    """Empirical CDFs of TTFT and E2E latency, one line per series (completed requests)."""
    fig, axes = _new(1, 2, (11, 4.2))
    for ax, (col, label) in zip(axes[0], (("ttft_ms", "TTFT (ms)"),
                                          ("e2el_ms", "E2E latency (ms)"))):
        everything = []
        for name, frame in samples.items():
            done = frame[frame["status"] == "completed"]
            v, p = _ecdf(done[col].to_numpy(dtype=float))
            ax.step(v, p, where="post", label=f"{name} (n={len(v):,})")
            everything.append(v)
        if everything and _wide(np.concatenate(everything)):
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
    axes[0, 0].legend(loc="lower right")
    fig.suptitle(title)
    return fig


def _binned(timeline: pd.DataFrame, columns: list[str], bins: int) -> tuple[pd.DataFrame, bool]:
    """At most ``bins`` rows: per equal time bin, the mean of each column weighted by iteration
    duration (the time-average over the bin)."""
    if len(timeline) <= bins:
        return timeline, False
    edges = np.linspace(timeline["start_s"].min(), timeline["start_s"].max(), bins + 1)
    which = np.clip(np.searchsorted(edges, timeline["start_s"], side="right") - 1, 0, bins - 1)
    w = timeline["duration_s"].to_numpy()
    out = {"start_s": edges[:-1]}
    total = np.bincount(which, weights=w, minlength=bins)
    for c in columns:
        summed = np.bincount(which, weights=w * timeline[c].to_numpy(dtype=float), minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = summed / total
    return pd.DataFrame(out).dropna(), True


@_styled
def run_timeline(timeline: pd.DataFrame, kv_capacity: int | None, title: str) -> Figure:
    """Queue length, batch size (prefill and decode requests) and KV usage over simulated time.

    The batch size is drawn as a time-average over BATCH_BINS bins: policies that alternate
    prefill-only and decode iterations (vLLM V0) would otherwise fill the panel with spikes.
    A cluster's timeline (a ``replica`` column) is drawn per replica (``replica_load``).
    """
    if "replica" in timeline.columns:
        return replica_load(timeline, None, title)
    t = timeline.assign(batch=timeline["prefill_requests"] + timeline["decode_requests"])
    state, binned = _binned(t, ["waiting", "kv_used_tokens"], MAX_TIMELINE_POINTS)
    batch, batch_binned = _binned(t, ["batch", "decode_requests"], BATCH_BINS)
    fig, axes = _new(3, 1, (10, 7.5), sharex=True)
    q, b, kv = axes[:, 0]
    q.plot(state["start_s"], state["waiting"], color="tab:red", drawstyle="steps-post")
    q.set_ylabel("queue length\n(waiting requests)")
    b.plot(batch["start_s"], batch["batch"], color="tab:blue", drawstyle="steps-post",
           label="all requests in the batch")
    b.plot(batch["start_s"], batch["decode_requests"], color="tab:green", drawstyle="steps-post",
           linewidth=1, label="decode requests")
    b.set_ylabel("batch size (requests)" + ("\n(time-average per bin)" if batch_binned else ""))
    b.legend(loc="best", fontsize=8)
    used = state["kv_used_tokens"]
    if kv_capacity:
        kv.plot(state["start_s"], 100 * used / kv_capacity, color="tab:purple",
                drawstyle="steps-post")
        kv.set_ylabel("KV cache used\n(% of capacity)")
        kv.set_ylim(0, 105)
    else:
        kv.plot(state["start_s"], used, color="tab:purple", drawstyle="steps-post")
        kv.set_ylabel("KV cache used\n(tokens)")
    kv.set_xlabel("simulated time (s)")
    fig.suptitle(title + (f" (time-averages over {MAX_TIMELINE_POINTS} bins)" if binned else ""))
    return fig


@_styled
def replica_load(timeline: pd.DataFrame, kv_capacities: list[int] | None, title: str) -> Figure:
    """A cluster's load per replica: the iterations' share of simulated time each replica was
    busy, its queue length and its KV usage over simulated time (``kv_capacities``: each
    replica's, for a percentage; None: tokens). One line per replica."""
    fig, axes = _new(3, 1, (10, 8))
    busy, q, kv = axes[:, 0]
    span = timeline["start_s"].max() + timeline["duration_s"].max() - timeline["start_s"].min()
    replicas = sorted(timeline["replica"].unique())
    per = {r: timeline[timeline["replica"] == r] for r in replicas}
    share = [per[r]["duration_s"].sum() / span if span > 0 else 0.0 for r in replicas]
    busy.bar([str(r) for r in replicas], [100 * x for x in share], color="tab:blue")
    busy.set_xlabel("replica")
    busy.set_ylabel("busy (% of\nsimulated time)")
    binned = False
    for r in replicas:
        state, b = _binned(per[r], ["waiting", "kv_used_tokens"], MAX_TIMELINE_POINTS)
        binned |= b
        q.plot(state["start_s"], state["waiting"], drawstyle="steps-post", linewidth=1,
               label=f"replica {r}")
        used = state["kv_used_tokens"]
        if kv_capacities:
            kv.plot(state["start_s"], 100 * used / kv_capacities[r], drawstyle="steps-post",
                    linewidth=1)
        else:
            kv.plot(state["start_s"], used, drawstyle="steps-post", linewidth=1)
    q.set_ylabel("queue length\n(waiting requests)")
    if len(replicas) <= 16:
        q.legend(loc="best", fontsize=7, ncol=4)
    kv.set_ylabel("KV cache used\n(% of capacity)" if kv_capacities else "KV cache used\n(tokens)")
    if kv_capacities:
        kv.set_ylim(0, 105)
    kv.set_xlabel("simulated time (s)")
    fig.suptitle(title + (f" (time-averages over {MAX_TIMELINE_POINTS} bins)" if binned else ""))
    return fig
