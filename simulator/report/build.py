"""``servesim report``: figures and a Markdown report for a sweep's results folder or one run's
output folder (``servesim run --out``)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from simulator.compare import load_run, read_table, run_table
from simulator.errors import ConfigError
from simulator.io import write_text
from simulator.metrics import TIMELINE_COLUMNS
from simulator.report import figures
from simulator.report.figures import col
from simulator.run_folder import MANIFEST, clear, prepare
from simulator.sweep.fluid_bound import bounded_throughput
from simulator.sweep.stability import DEFAULT_GROWTH_LIMIT
from simulator.sweep.store import RESULTS_FILE, ResultsStore

REPORT_FILE = "report.md"
FIGURES = "figures"
METRICS = ("mean_e2el_ms", "p99_e2el_ms", "mean_ttft_ms", "p99_ttft_ms", "request_throughput",
           "output_throughput", "latency_first_half_ms", "latency_second_half_ms")
MAX_TIMELINES = 8


@dataclass
class Report:
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def report(path: str | Path, out: str | Path | None = None, at_rate: float | None = None,
           x: str | None = None, replace: bool = False) -> Report:
    """A sweep's results folder (results.parquet) or a run's output folder (summary.json).

    The report goes into its run's own folder, where it replaces the previous report (the
    run's own figures, which its manifest lists, are redrawn in place), or into a folder that
    holds no other run or report unless ``replace``: never beside another run's files. What the
    previous report had and this one does not redraw is removed once this one is written."""
    p = Path(path)
    sweep = (p / RESULTS_FILE).is_file()
    if not sweep and not (p / "summary.json").is_file():
        raise ConfigError(f"{p}: neither a sweep results folder ({RESULTS_FILE}) nor a run "
                          f"output folder (summary.json)")
    out_dir = Path(out) if out else p
    previous = previous_report(p) if out_dir.resolve() == p.resolve() else \
        prepare(out_dir, replace)[1]
    result = sweep_report(p, out, at_rate, x) if sweep else run_report(p, out)
    written = {f.resolve() for f in (result.markdown, *result.figures)}
    clear([f for f in previous if f.resolve() not in written])
    if not (p / MANIFEST).is_file():
        result.notes.append(f"{p} has no {MANIFEST}: its run was killed or is still being "
                            f"written, so the report may show part of it")
    return result


def previous_report(folder: Path) -> list[Path]:
    """The report files in a run's folder: report.md and the figures its manifest does not
    list as the run's own."""
    try:
        listed = set(json.loads((folder / MANIFEST).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError, TypeError):
        listed = set()
    return [f for f in (folder / REPORT_FILE, *sorted((folder / FIGURES).glob("*.png")))
            if f.is_file() and f.relative_to(folder).as_posix() not in listed]


# ---- one run ------------------------------------------------------------------------------
def run_figures(requests: pd.DataFrame | None, timeline: pd.DataFrame | None, summary: dict,
                fig_dir: Path) -> list[Path]:
    """The single-run figures: timeline of queue, batch and KV; TTFT and E2E CDFs."""
    title = _run_title(summary)
    paths = []
    cluster = summary.get("cluster")
    if timeline is not None and len(timeline) and cluster:
        paths.append(figures.save(figures.replica_load(
            timeline, [r["kv_capacity_tokens"] for r in cluster["per_replica"]], title),
            fig_dir / "replicas.png"))
    elif timeline is not None and len(timeline):
        paths.append(figures.save(figures.run_timeline(timeline, summary.get("kv_capacity_tokens"),
                                                       title), fig_dir / "timeline.png"))
    if requests is not None and len(requests):
        name = (summary.get("policy") or {}).get("policy", "run")
        paths.append(figures.save(figures.latency_cdfs({name: requests}, title),
                                  fig_dir / "latency_cdf.png"))
    return paths


def plot_run(result, out: str | Path | None) -> list[Path]:
    """``servesim run --plot``: the single-run figures in OUT/figures (./servesim-figures when
    the run has no output folder)."""
    fig_dir = Path(out) / FIGURES if out else Path("servesim-figures")
    return run_figures(result.requests, result.timeline, result.summary, fig_dir)


def _run_title(summary: dict) -> str:
    pol = (summary.get("policy") or {}).get("policy", "?")
    w = summary.get("workload") or {}
    rate = w.get("mean_rate")
    return (f"{pol} on {summary.get('model', '?')} / {summary.get('gpu', '?')}, "
            f"{w.get('requests', '?')} requests" + (f" at {rate:g} req/s" if rate else ""))


def run_report(run_dir: Path, out: str | Path | None = None) -> Report:
    out_dir = Path(out or run_dir)
    summary, requests = load_run(run_dir)
    timeline = run_table(run_dir, "timeline", TIMELINE_COLUMNS)
    paths = run_figures(requests, timeline, summary, out_dir / FIGURES)
    notes = []
    if timeline is None:
        notes.append("No timeline.csv in the run folder (run without --no-timeline to get one).")
    lines = [f"# Run report: {_run_title(summary)}", "",
             f"Source: `{run_dir}`.", ""]
    lines += _figure_lines(paths, out_dir)
    lines += ["## Summary", "", _markdown_table(
        ["metric", "value"], [[k, _fmt(v)] for k, v in summary.items()
                              if not isinstance(v, (dict, list))]), ""]
    lines += [f"- {n}" for n in notes]
    md = _write_markdown(out_dir, lines)
    return Report(md, paths, notes)


# ---- a sweep ------------------------------------------------------------------------------
def sweep_report(results_dir: Path, out: str | Path | None = None,
                 at_rate: float | None = None, x: str | None = None) -> Report:
    out_dir = Path(out or results_dir)
    fig_dir = out_dir / FIGURES
    table = read_table(results_dir / RESULTS_FILE, ("point", "point_key", "status", "error"))
    manifest = _manifest(results_dir)
    axes = [a for a in (manifest.get("spec", {}).get("axes") or {}) if a in table.columns]
    x = x or ("rate" if "rate" in axes else "offered_rate")
    if x not in table.columns:
        raise ConfigError(f"--x {x!r}: not a column of {results_dir / RESULTS_FILE}")
    if not pd.api.types.is_numeric_dtype(table[x]):
        raise ConfigError(f"--x {x!r}: not a numeric column (the figures plot against rates)")
    series_cols = [a for a in axes if a not in (x, "seed")]
    ok = table[table["status"] == "ok"].copy()
    notes = []
    if ok.empty:
        raise ConfigError(f"{results_dir}: no successful points to report")
    if ok[x].isna().all():
        raise ConfigError(f"--x {x!r}: no successful point has a value")
    ok["series"] = _series_labels(ok, series_cols)
    bound = None
    if "fluid.throughput_bound" in ok.columns and ok["fluid.throughput_bound"].notna().any():
        scale = ok.get("fluid.max_rate_scale", pd.Series(None, index=ok.index, dtype=object))
        ok["fluid_bound"] = [bounded_throughput(t, None if pd.isna(s) else s)
                             for t, s in zip(ok["fluid.throughput_bound"], scale)]
        bound = "fluid_bound"
    metrics = [m for m in METRICS if m in ok.columns] + ([bound] if bound else [])
    agg = aggregate(ok, x, metrics)
    agg.attrs["series_title"] = ", ".join(series_cols) or None
    # With sessions, the rate starts sessions (offered_rate stays requests: rate x turns).
    sessions = "workload.session_rate" in ok and ok["workload.session_rate"].notna().all()
    x_label = {"rate": "session start rate (sessions/s)" if sessions else "arrival rate (req/s)",
               "offered_rate": "offered arrival rate (req/s)"}.get(x, x)
    paths = [figures.save(figures.latency_vs_rate(agg, x, x_label), fig_dir / "latency_vs_rate.png"),
             figures.save(figures.throughput_vs_rate(agg, x, x_label, bound),
                          fig_dir / "throughput_vs_rate.png")]
    if bound is None:
        notes.append("The fluid throughput bound is not drawn: the results carry no "
                     "`fluid.throughput_bound` (sweeps record it where the fluid model, "
                     "scheduler/fluid.py, can describe the workload).")
    store = ResultsStore(results_dir)
    chosen = _choose_rate(ok[x], at_rate)
    at = ok[ok[x] == chosen]
    samples = {}
    for label, g in at.groupby("series", sort=False):
        frames = [f for f in (store.requests(k) for k in g["point_key"]) if f is not None]
        if frames:
            samples[label] = pd.concat(frames, ignore_index=True)
    if samples:
        paths.append(figures.save(
            figures.latency_cdfs(samples, f"Latency distributions at {x} = {chosen:g} "
                                          f"(seeds pooled)"),
            fig_dir / f"latency_cdf_{_slug(f'{x}_{chosen:g}')}.png"))
    else:
        notes.append("No latency CDFs: the sweep kept no per-request tables "
                     "(set `save: {requests: true}` in the spec).")
    timeline_paths = []
    for label, g in list(at.groupby("series", sort=False))[:MAX_TIMELINES]:
        first = g.iloc[0]
        tl = store.timeline(first["point_key"])
        if tl is not None:
            timeline_paths.append(figures.save(
                figures.run_timeline(tl, first.get("kv_capacity_tokens"),
                                     f"{label}, {x} = {chosen:g}, seed {first.get('seed', '')}"),
                fig_dir / f"timeline_{_slug(str(label))}_{_slug(f'{chosen:g}')}.png"))
    paths += timeline_paths
    lines = _sweep_markdown(results_dir, out_dir, manifest, table, ok, agg, x, x_label,
                            series_cols, chosen, paths, notes)
    md = _write_markdown(out_dir, lines)
    return Report(md, paths, notes)


def aggregate(ok: pd.DataFrame, x: str, metrics: list[str]) -> pd.DataFrame:
    """Per series and x value: mean, min, max and count of each metric over the seeds."""
    g = ok.groupby(["series", x], sort=False)[metrics]
    agg = g.agg(["mean", "min", "max", "count"])
    agg.columns = [col(m, s) for m, s in agg.columns]
    return agg.reset_index()


def stable_rates(agg: pd.DataFrame, x: str, limit: float = DEFAULT_GROWTH_LIMIT) -> dict:
    """Per series, lambda* on the grid: the largest x up to which every point is stable (the
    seeds' pooled second-half / first-half mean latency at most ``limit``), as text."""
    out = {}
    for label, g in agg.groupby("series", sort=False):
        g = g.sort_values(x)
        growth = g[col("latency_second_half_ms", "mean")] / g[col("latency_first_half_ms", "mean")]
        stable = (growth <= limit).to_numpy()
        xs = g[x].to_numpy()
        if stable.all():
            out[label] = f">= {xs[-1]:g} (all stable)"
        elif not stable[0]:
            out[label] = f"< {xs[0]:g} (none stable)"
        else:
            out[label] = f"{xs[stable.argmin() - 1]:g} (unstable from {xs[stable.argmin()]:g})"
    return out


def _sweep_markdown(results_dir, out_dir, manifest, table, ok, agg, x, x_label, series_cols,
                    chosen, paths, notes) -> list[str]:
    spec = manifest.get("spec", {})
    name = spec.get("name") or results_dir.name
    failed = table[table["status"] != "ok"]
    axes = spec.get("axes") or {}
    lines = [f"# Sweep report: {name}", "",
             f"{len(table)} points ({len(ok)} ok, {len(failed)} failed) from "
             f"`{results_dir / RESULTS_FILE}`; axes: "
             + ", ".join(f"`{a}` ({table[a].nunique()} values)" for a in axes if a in table)
             + ". Lines are means over seeds; shaded bands span the lowest to the highest seed.",
             ""]
    lines += _figure_lines(paths, out_dir)
    for metric, label in (("mean_e2el_ms", "Mean E2E latency (ms)"),
                          ("p99_e2el_ms", "p99 E2E latency (ms)"),
                          ("request_throughput", "Request throughput (req/s)")):
        if col(metric, "mean") in agg.columns:
            lines += [f"## {label}, mean over seeds", "", _pivot(agg, x, metric), ""]
    if col("latency_first_half_ms", "mean") in agg.columns and isinstance(chosen, (int, float)):
        lines += ["## Largest stable rate on the grid", "",
                  f"Stable: the mean E2E latency of the second half of the arrivals is at most "
                  f"{DEFAULT_GROWTH_LIMIT} times that of the first half (pooled over seeds).", "",
                  _markdown_table(["series", f"lambda*, {x_label}"],
                                  [[k, v] for k, v in stable_rates(agg, x).items()]), ""]
    if len(failed):
        lines += ["## Failed points", "", _markdown_table(
            ["point", *[a for a in axes if a in failed], "error"],
            [[r["point"], *[r[a] for a in axes if a in failed], r["error"]]
             for r in failed.to_dict("records")]), ""]
    lines += [f"- {n}" for n in notes]
    return lines


def _pivot(agg: pd.DataFrame, x: str, metric: str) -> str:
    p = agg.pivot(index=x, columns="series", values=col(metric, "mean")).sort_index()
    p = p[[s for s in agg["series"].unique() if s in p.columns]]
    return _markdown_table([x, *map(str, p.columns)],
                           [[_fmt(i), *(_fmt(v) for v in row)] for i, row in
                            zip(p.index, p.to_numpy())])


def _series_labels(frame: pd.DataFrame, cols: list[str]) -> pd.Series:
    if not cols:
        return pd.Series("all points", index=frame.index)
    if len(cols) == 1:
        return frame[cols[0]].astype(str)
    return frame[cols].astype(str).apply(lambda r: ", ".join(f"{c}={v}" for c, v in r.items()),
                                         axis=1)


def _choose_rate(values: pd.Series, at_rate: float | None):
    """The grid value nearest ``at_rate``, or the middle of the grid."""
    grid = sorted(values.dropna().unique())
    if at_rate is None:
        return grid[len(grid) // 2]
    return min(grid, key=lambda v: abs(float(v) - at_rate))


def _manifest(results_dir: Path) -> dict:
    try:
        return json.loads((results_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


def _figure_lines(paths: list[Path], out_dir: Path) -> list[str]:
    captions = {"latency_vs_rate": "Latency against arrival rate",
                "throughput_vs_rate": "Throughput against arrival rate",
                "latency_cdf": "TTFT and E2E latency CDFs", "timeline": "Timeline"}
    lines = ["## Figures", ""]
    for p in paths:
        caption = next((v for k, v in captions.items() if p.stem.startswith(k)), p.stem)
        lines += [f"### {caption} ({p.stem})", "", f"![{caption}]({p.relative_to(out_dir)})", ""]
    return lines


def _write_markdown(out_dir: Path, lines: list[str]) -> Path:
    path = out_dir / REPORT_FILE
    text = "\n".join(lines).rstrip() + "\n"
    write_text(path, text)
    return path


def _markdown_table(header: list, rows: list[list]) -> str:
    cells = [[str(h) for h in header]] + [[str(c).replace("|", "\\|") for c in r] for r in rows]
    out = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_") or "x"
