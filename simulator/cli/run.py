"""``servesim run``: simulate one policy on one workload and report vLLM-bench metrics."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import click

from simulator.cli import cli, stdout_console
from simulator.cli.options import config_from_options, nonempty_path, run_options
from simulator.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console


@cli.command()
@run_options
@click.option("--out", "-o", type=click.Path(file_okay=False), callback=nonempty_path,
              help="Folder for summary.json, requests.csv, timeline.csv, config.json, the "
              "figures and, last, manifest.json. It must hold no other run.")
@click.option("--replace", is_flag=True,
              help="Remove the run already in --out (the files its manifest lists, and "
              "servesim's own files) before writing this one; other files are left alone.")
@click.option("--requests-format", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True, help="File format of the per-request table.")
@click.option("--no-timeline", is_flag=True, help="Do not record the per-iteration timeline.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and --json).")
@click.option("--plot", is_flag=True, help="Draw the run's timeline (queue, batch size, KV) and "
              "latency CDFs as PNGs in OUT/figures (./servesim-figures without --out).")
def run(**opts):
    """Simulate a policy on a workload (no flags: the built-in default workload)."""
    from rich.console import Console

    import simulator.vllm  # noqa: F401  (registers the engine "vllm")
    from simulator.metrics import rejection_notice
    from simulator.run_folder import prepare
    from simulator.runner import simulate, write_outputs
    from simulator.sweep.stability import overload_notice
    extra = {"out": opts["out"], "timeline": False if opts["no_timeline"] else None}
    cfg = config_from_options(opts, extra)
    if opts["plot"] and opts["no_timeline"]:
        raise ConfigError("--plot draws the timeline: drop --no-timeline")
    if cfg.out:   # before simulating: an unwritable or occupied folder fails at once
        prepare(cfg.out, opts["replace"])
    elif opts["replace"]:
        raise ConfigError("--replace replaces the run in --out: give --out")
    console = Console(stderr=True)
    if opts["quiet"] or not console.is_terminal:
        result = simulate(cfg)
    else:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)
        with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("requests done"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("run", total=None)
            result = simulate(cfg, progress=lambda done, total: bar.update(task, completed=done,
                                                                           total=total))
    if not opts["quiet"]:
        for message in result.summary["workload"].get("warnings", []):
            click.echo(f"servesim: warning: {message}", err=True)
    figures = None
    if opts["plot"]:
        from simulator.report.build import plot_run
        figures = functools.partial(plot_run, result)
    if cfg.out:
        paths = write_outputs(result, cfg.out, opts["requests_format"],
                              replace=opts["replace"], figures=figures)
    elif figures is not None:
        for p in figures(None):
            if not opts["quiet"]:
                console.print(f"wrote {p}", highlight=False)
    if opts["as_json"]:
        click.echo(json.dumps(result.summary, indent=2, default=str))
    elif not opts["quiet"]:
        out = stdout_console()
        print_summary(result.summary, out)
        if cfg.out:
            out.print(f"wrote {', '.join(str(p) for p in paths)}")
    if not opts["quiet"]:
        for notice in (rejection_notice(result.requests),
                       overload_notice(result.requests, result.timeline)):
            if notice:
                click.echo(f"servesim: warning: {notice}", err=True)


def _fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _rate(w: dict) -> str:
    """The workload's arrival rate; with sessions, the sessions started per second and the
    requests that offers."""
    if "session_rate" in w:
        return (f"{_fmt(w['session_rate'], 2)} sessions/s ({_fmt(w.get('mean_rate'), 2)} "
                f"req/s offered)")
    return f"{_fmt(w.get('mean_rate'), 2)} req/s"


def print_summary(s: dict, console: Console) -> None:
    pol = s.get("policy", {})
    w = s.get("workload", {})
    console.print(f"[bold]{pol.get('policy', '?')}[/] on {s.get('model')} / {s.get('gpu')} "
                  f"({s.get('cost', {}).get('cost_model')} cost"
                  f"{', vLLM ' + s['vllm']['version'] + ' scheduler' if 'vllm' in s else ''}), KV capacity "
                  f"{s.get('kv_capacity_tokens', 0):,} tokens; workload: {w.get('requests')} "
                  f"requests, {w.get('arrival', w.get('source', ''))} @ {_rate(w)}, "
                  f"{w.get('lengths', '')}")
    for t in w.get("transforms", []):
        console.print(f"  {t['op']}: " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in t.items()
                                                  if k != "op"))
    from rich.table import Table
    t = Table(show_header=True, header_style="bold")
    t.add_column("metric")
    for col in ("mean", "median", "p90", "p99"):
        t.add_column(col, justify="right")
    for key, label in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"),
                       ("e2el_ms", "E2E latency (ms)"), ("queue_ms", "queueing (ms)")):
        t.add_row(label, *(_fmt(s.get(f"{stat}_{key}")) for stat in ("mean", "median", "p90", "p99")))
    console.print(t)
    t2 = Table(show_header=False)
    t2.add_column("k")
    t2.add_column("v", justify="right")
    rows = [("completed / rejected / unfinished",
             f"{s['completed']} / {s['rejected']} / {s.get('unfinished', 0)}"),
            ("preemptions", _fmt(s["preemptions"])),
            ("duration (simulated s)", _fmt(s["duration_s"], 2)),
            ("request throughput (req/s)", _fmt(s["request_throughput"], 3)),
            ("output throughput (tok/s)", _fmt(s["output_throughput"])),
            ("total token throughput (tok/s)", _fmt(s["total_token_throughput"])),
            ("peak KV used (tokens)", _fmt(s.get("peak_kv_tokens"))),
            ("iterations", _fmt(s.get("iterations")))]
    if "prefix_cache_hit_rate" in s:     # prefix caching on (docs/prefix-caching.md)
        rows += [("prefix cache: hit rate (tokens)", _fmt(s["prefix_cache_hit_rate"], 4)),
                 ("prefix cache: hit / queried tokens, evictions",
                  f"{_fmt(s['prefix_cache_hits'])} / {_fmt(s['prefix_cache_queries'])}, "
                  f"{_fmt(s['prefix_cache_evictions'])}")]
    if "slo_attainment" in s:
        rows += [("SLO attainment", _fmt(s["slo_attainment"], 3)),
                 ("goodput (req/s)", _fmt(s["request_goodput"], 3))]
    if "cluster" in s:
        c = s["cluster"]
        rows += [("replicas (router)", f"{c['replicas']} ({c['router']['router']})"),
                 ("requests per replica: CV", _fmt(c["requests_per_replica_cv"], 3))]
        if "admission" in c:
            rows.append(("refused at the front (admission)", _fmt(c["admission"]["refused"])))
        if "prefill_replicas" in c:       # disaggregated (docs/clusters.md)
            rows += [("prefill + decode replicas (decode router)",
                      f"{c['prefill_replicas']} + {c['decode_replicas']} "
                      f"({c['decode_router']['router']})"),
                     ("KV transfers: mean / p99 (ms)",
                      f"{_fmt(c['mean_transfer_ms'], 2)} / {_fmt(c['p99_transfer_ms'], 2)}"),
                     ("KV link wait: mean / p99 (ms)",
                      f"{_fmt(c['mean_link_wait_ms'], 2)} / {_fmt(c['p99_link_wait_ms'], 2)}")]
    rows.append(("wall time (s)", _fmt(s.get("wall_s"), 2)))
    for r in rows:
        t2.add_row(*r)
    console.print(t2)
    if "cluster" in s:
        print_replicas(s["cluster"]["per_replica"], console)


def print_replicas(per_replica: list[dict], console: Console) -> None:
    """A cluster's replicas, one row each."""
    from rich.table import Table
    t = Table(show_header=True, header_style="bold")
    pools = any("pool" in r for r in per_replica)
    for col in ("replica", *(("pool",) if pools else ()), "gpu", "policy", "requests",
                "completed", "rejected", "preemptions", "peak KV", "mean TTFT (ms)",
                "mean E2E (ms)"):
        t.add_column(col, justify="right")
    for r in per_replica:
        t.add_row(str(r["replica"]), *((r.get("pool", ""),) if pools else ()), r["gpu"],
                  r["policy"], _fmt(r["requests"]), _fmt(r["completed"]),
                  _fmt(r["rejected"]), _fmt(r["preemptions"]), _fmt(r["peak_kv_tokens"]),
                  _fmt(r["mean_ttft_ms"]), _fmt(r["mean_e2el_ms"]))
    console.print(t)
