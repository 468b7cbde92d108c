"""Shared machinery of the paper's experiments: the setting (Llama-2-7B on an A100-80GB, KV
capacity 1.37e5 tokens, roofline cost by default, or another cost model with ``--cost``),
workloads, a parallel grid runner, the lambda* criterion, and CSV / Markdown / PNG outputs.

Criterion for lambda* (the largest rate whose latency stays bounded): each point runs the same
seed at a horizon of N and of 2N requests; a rate is *bounded* when every request completes and
the mean end-to-end latency over the seeds grows by less than GROWTH_LIMIT when the horizon
doubles (a queue that grows without bound roughly doubles it). lambda* is the largest rate of the
grid below which every rate is bounded.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

KV_CAPACITY = 137_000
SETTING = dict(model="llama-2-7b", gpu="a100-80gb", cost_model="roofline",
               kv_capacity=KV_CAPACITY, timeline=False)
GROWTH_LIMIT = 1.15
RESULTS = Path(__file__).resolve().parent / "results"

# The paper's own fit of tau = d0 + d1 * KV on an A100 with Llama-2-7B (arXiv:2504.11320, the
# calibration with 256-token prompts and 20 output tokens; ../shared/docs/scheduling-algorithms.md
# section 7): d0 ~ 276 ms, d1 ~ 0.0115 ms per KV token. Those are whole-request figures, the sum
# over the 21 iterations of such a request (tests/test_fluid.py checks that 276 ms / 21 is one
# batch-1 decode step of this model and GPU), so per iteration: d0 = 13.1 ms, d1 = 0.55 us/token.
PAPER_ITERATIONS = 21
PAPER_D0_S = 0.276 / PAPER_ITERATIONS
PAPER_D1_S = 0.0115e-3 / PAPER_ITERATIONS
# --cost: the cost model every run (and the fluid model its grid and WAIT follow) uses.
# roofline is the setting of record; paper-linear is the paper's linear model above (prefill is
# as cheap per KV token as decode, a large fixed cost per iteration); profile is the measured
# operator profile of ../shared/profiles with an analytic attention term.
COSTS = {
    "roofline": {"cost_model": "roofline"},
    "paper-linear": {"cost_model": "linear",
                     "cost_params": {"d0": PAPER_D0_S, "d1": PAPER_D1_S}},
    "profile": {"cost_model": "profile"},
}
DEFAULT_COST = "roofline"


def setting(cost: str = DEFAULT_COST) -> dict:
    """RunConfig fields of the experiments' replica under ``cost`` (a key of COSTS)."""
    return {**SETTING, **COSTS[cost]}


@dataclass(frozen=True)
class Policy:
    label: str
    name: str
    params: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)     # other RunConfig fields (e.g. preemption)


@dataclass(frozen=True)
class Task:
    experiment: str
    policy: Policy
    x: float                          # the swept quantity (lambda, or a rate scale)
    workload: dict                    # how to build it (see build_workload)
    seed: int
    requests: int
    horizon: str = "2N"               # "N" or "2N"
    cost: str = DEFAULT_COST          # a key of COSTS


def build_workload(spec: dict, seed: int, n: int):
    """(RunConfig fields, Workload or None) for a workload spec."""
    kind = spec["kind"]
    if kind == "types":
        return {"types": list(spec["types"]), "num_requests": n, "seed": seed}, None
    from experiments.paper import data
    if kind == "sharegpt":
        return {"seed": seed}, data.sharegpt_workload(spec["rate"], n, seed, spec.get("max_total"))
    if kind == "azure":      # the trace's own arrivals, compressed by the speed-up
        return {"seed": seed, "trace": str(data.AZURE_CONV), "num_requests": n,
                "speedup": spec["speedup"]}, None
    raise ValueError(f"unknown workload kind {kind!r}")


def run_task(task: Task) -> dict:
    from simulator.config import RunConfig
    from simulator.runner import simulate

    fields, workload = build_workload(task.workload, task.seed, task.requests)
    cfg = RunConfig(policy=task.policy.name, policy_params=dict(task.policy.params),
                    **{**setting(task.cost), **task.policy.config}, **fields).validate()
    t0 = time.perf_counter()
    s = simulate(cfg, workload).summary
    pol = s["policy"]
    return {
        "experiment": task.experiment, "policy": task.policy.label, "x": task.x,
        "seed": task.seed, "horizon": task.horizon, "requests": task.requests,
        "completed": s["completed"], "rejected": s["rejected"], "unfinished": s["unfinished"],
        "preemptions": s["preemptions"],
        "mean_e2el_s": (s["mean_e2el_ms"] or math.nan) / 1e3,
        "p90_e2el_s": (s["p90_e2el_ms"] or math.nan) / 1e3,
        "mean_ttft_s": (s["mean_ttft_ms"] or math.nan) / 1e3,
        "output_throughput": s["output_throughput"],
        "request_throughput": s["request_throughput"],
        "peak_kv_tokens": s["peak_kv_tokens"],
        "thresholds": str([round(x, 4) for x in pol.get("thresholds", [])]) or "",
        "wall_s": time.perf_counter() - t0,
    }


def run_grid(tasks: list[Task], jobs: int) -> pd.DataFrame:
    if jobs <= 1:
        rows = [run_task(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(run_task, tasks, chunksize=1))
    return pd.DataFrame(rows)


def with_horizons(tasks: list[Task]) -> list[Task]:
    """Each task at N requests (horizon "N") and at 2N (horizon "2N")."""
    out = []
    for t in tasks:
        out.append(dataclasses.replace(t, horizon="N"))
        out.append(dataclasses.replace(t, requests=2 * t.requests, horizon="2N"))
    return out


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the long-horizon runs, with the latency growth from N to 2N."""
    keys = ["policy", "x"]
    long = df[df["horizon"] == "2N"].groupby(keys, sort=False).mean(numeric_only=True)
    out = long[["mean_e2el_s", "p90_e2el_s", "mean_ttft_s", "output_throughput", "preemptions",
                "peak_kv_tokens", "completed", "unfinished"]].copy()
    if (df["horizon"] == "N").any():
        short = df[df["horizon"] == "N"].groupby(keys, sort=False)["mean_e2el_s"].mean()
        out["growth"] = long["mean_e2el_s"] / short
        done = df.groupby(keys, sort=False).apply(
            lambda g: bool((g["completed"] + g["rejected"] == g["requests"]).all()),
            include_groups=False)
        out["bounded"] = (out["growth"] < GROWTH_LIMIT) & done
    return out.reset_index()


def lambda_star(summary: pd.DataFrame) -> dict:
    """Per policy: the largest x such that every x' <= x of the grid is bounded (nan if none)."""
    out = {}
    for policy, g in summary.groupby("policy", sort=False):
        g = g.sort_values("x")
        star = math.nan
        for x, ok in zip(g["x"], g["bounded"]):
            if not ok:
                break
            star = x
        out[policy] = star
    return out


def markdown_table(summary: pd.DataFrame, value: str, fmt: str = "{:.2f}", x_label="lambda"
                   ) -> str:
    """Rows: x; columns: policies; cells: ``value`` (a bounded=False cell is marked with *)."""
    pivot = summary.pivot(index="x", columns="policy", values=value)
    flags = summary.pivot(index="x", columns="policy", values="bounded") \
        if "bounded" in summary else None
    cols = list(dict.fromkeys(summary["policy"]))
    lines = [f"| {x_label} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for x in pivot.index:
        cells = []
        for c in cols:
            v = pivot.loc[x, c]
            cell = "-" if pd.isna(v) else fmt.format(v)
            if flags is not None and not pd.isna(v) and not bool(flags.loc[x, c]):
                cell += "*"
            cells.append(cell)
        lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, path_prefix: Path, title: str, x_label: str,
         bound=None, x_max: float | None = None) -> list[Path]:
    """Mean latency against x (log scale) and throughput against x with the fluid bound."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for policy, g in summary.groupby("policy", sort=False):
        g = g.sort_values("x")
        axes[0].plot(g["x"], g["mean_e2el_s"], marker="o", ms=3, label=policy)
        axes[1].plot(g["x"], g["output_throughput"], marker="o", ms=3, label=policy)
    axes[0].set_yscale("log")
    axes[0].set_xlabel(x_label)
    axes[0].set_ylabel("mean end-to-end latency (s)")
    axes[1].set_xlabel(x_label)
    axes[1].set_ylabel("output throughput (tokens/s)")
    if bound is not None:
        xs = np.linspace(summary["x"].min(), summary["x"].max(), 200)
        axes[1].plot(xs, [bound(x) for x in xs], "k--", lw=1, label="fluid bound Thr*")
    if x_max is not None and summary["x"].min() <= x_max <= summary["x"].max():
        for ax in axes:
            ax.axvline(x_max, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    p = path_prefix.with_name(path_prefix.name + ".png")
    fig.savefig(p, dpi=80)
    plt.close(fig)
    paths.append(p)
    return paths


def fluid_of(types, cost: str = DEFAULT_COST):
    """The fluid equilibrium of FluidTypes with (d0, d1) fitted to the setting's ``cost``."""
    from scheduler.fluid import equilibrium
    from simulator.cost.linear import fit_cost
    from simulator.config import RunConfig
    from simulator.runner import build_replica

    spec = build_replica(RunConfig(**setting(cost)).validate())
    fit = fit_cost(spec.cost_model, types, spec.kv_capacity_tokens)
    return equilibrium(types, fit.d0, fit.d1, spec.kv_capacity_tokens), fit


def fluid_for_types(type_specs: list[str], cost: str = DEFAULT_COST):
    """The fluid equilibrium of ``--type`` specs with (d0, d1) fitted to the setting's cost."""
    from scheduler.fluid import from_request_types
    from simulator.config import RunConfig
    from simulator.runner import request_types

    cfg = RunConfig(types=list(type_specs), **setting(cost)).validate()
    return fluid_of(from_request_types(request_types(cfg)), cost)


def fluid_for_lengths(prompts, outputs, cost: str = DEFAULT_COST, segments: int = 10):
    """The fluid equilibrium of observed lengths at 1 request/s (so its max_rate_scale is the
    fluid limit in requests/s), output lengths clustered as ``servesim fluid`` does."""
    from scheduler.fluid import types_from_lengths

    return fluid_of(types_from_lengths(prompts, outputs, 1.0, segments, representative="mean"),
                    cost)


def follow_fluid_limit(grid: list[float], cost: str, limit_of) -> list[float]:
    """The roofline ``grid`` (chosen around the roofline fluid limit) moved to the same fractions
    of ``cost``'s fluid limit, so a sweep under another cost spans the same range of load;
    ``limit_of(cost)`` is the largest stable rate (or rate scale) under a cost. Rounded to three
    significant digits; the default cost keeps its grid exactly."""
    if cost == DEFAULT_COST:
        return list(grid)
    scale = limit_of(cost) / limit_of(DEFAULT_COST)
    return [float(f"{x * scale:.3g}") for x in grid]


def grid_for_types(grid: list[float], type_specs: list[str], cost: str) -> list[float]:
    """``follow_fluid_limit`` for a workload of ``--type`` specs (rates per unit of the grid)."""
    return follow_fluid_limit(
        grid, cost, lambda c: fluid_for_types(type_specs, c)[0].max_rate_scale)


def arg_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every point")
    ap.add_argument("--quick", action="store_true", help="a tiny grid (CI smoke test)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes")
    ap.add_argument("--cost", choices=list(COSTS), default=DEFAULT_COST,
                    help="cost model of the replica (and of the fluid model and grids)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder [results/, or results/COST/ for a non-default cost]")
    return ap


def quick_folder() -> Path:
    """A new temporary folder for a --quick run without --out: a smoke run's tiny grid never
    overwrites the committed results."""
    out = Path(tempfile.mkdtemp(prefix="servesim-quick-"))
    print(f"--quick without --out: writing to {out}", file=sys.stderr)
    return out


def parse_args(doc: str, argv=None) -> argparse.Namespace:
    """The experiment flags; results of a non-default cost go to their own folder, those of a
    --quick run to a temporary one."""
    args = arg_parser(doc.split("\n\n")[0]).parse_args(argv)
    if args.out is None and args.quick:
        args.out = quick_folder()
    elif args.out is None:
        args.out = RESULTS if args.cost == DEFAULT_COST else RESULTS / args.cost
    return args


def write(df: pd.DataFrame, summary: pd.DataFrame, out: Path, name: str, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}_runs.csv", index=False)
    summary.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(markdown + "\n")


def sweep(name: str, title: str, policies: list[Policy], xs: list[float], workload_of, n: int,
          args, *, x_label: str = "lambda (requests/s)", bound=None, x_max: float | None = None,
          horizons: bool = True, extra_md: str = "") -> tuple[pd.DataFrame, str]:
    """Run every policy at every x (and seed, and horizon), write ``name``.csv/.md/.png."""
    tasks = [Task(name, p, x, workload_of(x), seed, n, cost=args.cost)
             for x in xs for p in policies for seed in args.seeds]
    if horizons:
        tasks = with_horizons(tasks)
    t0 = time.perf_counter()
    df = run_grid(tasks, args.jobs)
    wall = time.perf_counter() - t0
    summary = summarize(df)
    if args.cost != DEFAULT_COST:
        title += f" [{args.cost} cost]"
    md = [f"## {title}", "",
          f"{len(tasks)} runs, seeds {args.seeds}, {n} requests per point"
          + (f" (and {2 * n} for the horizon check)" if horizons else "")
          + f"; {wall:.0f} s wall with {args.jobs} workers.", ""]
    if x_max is not None:
        md += [f"Fluid model: largest stable x = {x_max:.2f}.", ""]
    if horizons:
        stars = lambda_star(summary)
        md += ["lambda* (largest x whose mean latency grows < "
               f"{round((GROWTH_LIMIT - 1) * 100)}% when the horizon doubles): "
               + ", ".join(f"{p} {v:g}" if not math.isnan(v) else f"{p} -"
                           for p, v in stars.items()), ""]
    md += ["Mean end-to-end latency (s)"
           + ("; * = unbounded (grows with the horizon):" if horizons else ":"), "",
           markdown_table(summary, "mean_e2el_s", x_label=x_label.split(" ")[0]), "",
           "Output throughput (tokens/s):", "",
           markdown_table(summary, "output_throughput", "{:.0f}", x_label.split(" ")[0]), "",
           "Preemptions (evictions with recompute) per run:", "",
           markdown_table(summary, "preemptions", "{:.0f}", x_label.split(" ")[0]), ""]
    if extra_md:
        md += [extra_md, ""]
    text = "\n".join(md)
    write(df, summary, args.out, name, text)
    plot(summary, args.out / name, title, x_label, bound, x_max)
    return summary, text
