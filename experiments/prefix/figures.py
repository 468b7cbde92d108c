"""The prefix-caching experiment's figures (PNG, next to its CSVs): the Mooncake trace with the
cache off and on, and the session sweep against session length. Drawn with matplotlib's object
interface in the report's style (simulator/report/figures.py)."""

from __future__ import annotations

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from simulator.report.figures import STYLE

CLOSED_FORM = "closed form (no eviction)"


def _config_label(row) -> str:
    if not row["prefix_caching"]:
        return "cache off"
    return "cache on,\nGPU KV" if row["kv_capacity"] == "gpu" else "cache on,\nunbounded KV"


def mooncake_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Hit rate, TTFT (mean and p90), mean E2E latency and output throughput, one bar per
    configuration; the hit rate's closed form as a dashed line."""
    labels = [_config_label(r) for _, r in frame.iterrows()]
    x = range(len(frame))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(14, 3.8), layout="constrained")
        hit, ttft, e2e, thr = fig.subplots(1, 4)
        hit.bar(x, 100 * frame["prefix_cache_hit_rate"].fillna(0.0), color="C0")
        hit.axhline(100 * frame["expected_hit_rate"].max(), color="black", linestyle="--",
                    linewidth=1.2, label=CLOSED_FORM)
        hit.set_ylabel("prefix-cache hit rate (% of prompt tokens)")
        hit.set_ylim(0, 130 * max(frame["expected_hit_rate"].max(),
                                  frame["prefix_cache_hit_rate"].max()))
        hit.legend(loc="upper left")
        width = 0.38
        ttft.bar([i - width / 2 for i in x], frame["mean_ttft_ms"] / 1000, width, label="mean")
        ttft.bar([i + width / 2 for i in x], frame["p90_ttft_ms"] / 1000, width, label="p90")
        ttft.set_ylabel("TTFT (s)")
        ttft.legend()
        e2e.bar(x, frame["mean_e2el_ms"] / 1000, color="C2")
        e2e.set_ylabel("mean E2E latency (s)")
        thr.bar(x, frame["output_throughput"], color="C3")
        thr.set_ylabel("output throughput (tokens/s)")
        for ax in (hit, ttft, e2e, thr):
            ax.set_xticks(list(x), labels, fontsize=8)
        fig.suptitle(title)
    return fig


def sessions_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Hit rate (with its closed form), TTFT and E2E latency against turns per session, the
    cache on (solid) and off (dotted)."""
    on, off = frame[frame["prefix_caching"]], frame[~frame["prefix_caching"]]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(13, 3.8), layout="constrained")
        hit, ttft, e2e = fig.subplots(1, 3, sharex=True)
        hit.plot(on["turns"], 100 * on["prefix_cache_hit_rate"], marker="o", label="simulated")
        hit.plot(on["turns"], 100 * on["expected_hit_rate"], color="black", linestyle="--",
                 linewidth=1.2, label=CLOSED_FORM)
        hit.set_ylabel("prefix-cache hit rate (% of prompt tokens)")
        hit.legend()
        for part, style, name in ((on, "-", "cache on"), (off, ":", "cache off")):
            ttft.plot(part["turns"], part["mean_ttft_ms"], marker="o", linestyle=style,
                      color="C0", label=f"mean, {name}")
            ttft.plot(part["turns"], part["p90_ttft_ms"], marker="o", linestyle=style,
                      color="C1", label=f"p90, {name}")
            e2e.plot(part["turns"], part["mean_e2el_ms"] / 1000, marker="o", linestyle=style,
                     color="C2", label=name)
        ttft.set_ylabel("TTFT (ms)")
        ttft.legend()
        e2e.set_ylabel("mean E2E latency (s)")
        e2e.legend()
        turns = sorted(frame["turns"].unique())
        for ax in (hit, ttft, e2e):
            ax.set_xlabel("turns per session")
            ax.set_xscale("log", base=2)
            ax.set_xticks(turns, [str(t) for t in turns])
            ax.set_ylim(bottom=0)
        fig.suptitle(title)
    return fig


def sessions_load_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Hit rate, mean TTFT and mean E2E latency against the offered load, one colour per session
    length, the cache on (solid) and off (dotted); the hit rate's closed forms dashed."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(13, 3.8), layout="constrained")
        hit, ttft, e2e = fig.subplots(1, 3, sharex=True)
        for i, turns in enumerate(sorted(frame["turns"].unique())):
            mine = frame[frame["turns"] == turns]
            on, off = mine[mine["prefix_caching"]], mine[~mine["prefix_caching"]]
            color = f"C{i}"
            hit.plot(on["request_rate"], 100 * on["prefix_cache_hit_rate"], marker="o",
                     color=color, label=f"{turns} turns")
            hit.plot(on["request_rate"], 100 * on["expected_hit_rate"], color=color,
                     linestyle="--", linewidth=1.0)
            for part, style, name in ((on, "-", "on"), (off, ":", "off")):
                ttft.plot(part["request_rate"], part["mean_ttft_ms"], marker="o",
                          linestyle=style, color=color, label=f"{turns} turns, cache {name}")
                e2e.plot(part["request_rate"], part["mean_e2el_ms"] / 1000, marker="o",
                         linestyle=style, color=color)
        hit.set_ylabel("prefix-cache hit rate (% of prompt tokens)")
        hit.legend(title=f"dashed: {CLOSED_FORM}", fontsize=8, title_fontsize=8)
        ttft.set_ylabel("mean TTFT (ms, log scale)")
        ttft.set_yscale("log")          # (from tens of ms to seconds once a queue builds up)
        ttft.legend(fontsize=7)
        e2e.set_ylabel("mean E2E latency (s)")
        rates = sorted(frame["request_rate"].unique())
        for ax in (hit, ttft, e2e):
            ax.set_xlabel("offered load (requests/s: sessions/s x turns)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
        hit.set_ylim(bottom=0)
        e2e.set_ylim(bottom=0)
        fig.suptitle(title)
    return fig
