"""``servesim fluid``: the fluid equilibrium, throughput bound and stable region of a workload."""

from __future__ import annotations

import json
import math

import click
from rich.console import Console
from rich.table import Table

from scheduler.fluid import (CLUSTERINGS, CONVENTIONS, equilibrium, fit_cost, from_request_types,
                             types_from_lengths, wait_thresholds)
from simulator.cli import cli, stdout_console
from simulator.cli.options import Number, config_from_options, run_options
from simulator.errors import ConfigError
from simulator.runner import build_replica, build_workload, request_types, workload_hint

def workload_fluid_types(cfg, segments: int, clustering: str, workload=None):
    """The workload's types: declared (``--type``), or its sampled lengths clustered (means).
    ``workload``: the one ``cfg`` builds, when the caller already has it."""
    declared = request_types(cfg)
    if declared:
        return from_request_types(declared)
    hint = workload_hint(workload if workload is not None else build_workload(cfg))
    if hint["arrival_rate"] is None:
        raise ConfigError("fluid: the workload has no arrival rate (give --rate or --type)")
    return types_from_lengths(*hint["lengths"], hint["arrival_rate"], segments, clustering,
                              representative="mean")


def fluid_report(cfg, d0=None, d1=None, segments=10, clustering="equal-width",
                 convention="engine", slack=0.1, workload=None) -> dict:
    for name, v in (("d0", d0), ("d1", d1)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"--{name} must be a number >= 0 (seconds), got {v!r}")
    if segments < 1:
        raise ConfigError(f"--segments must be >= 1, got {segments}")
    types = workload_fluid_types(cfg, segments, clustering, workload)
    spec = build_replica(cfg)
    capacity = spec.kv_capacity_tokens
    fit = None
    if d0 is None or d1 is None:
        fit = fit_cost(spec.cost_model, types, capacity, spec.max_model_len)
        d0 = fit.d0 if d0 is None else d0
        d1 = fit.d1 if d1 is None else d1
    if d0 == 0 and d1 == 0:
        raise ConfigError("--d0 and --d1 are both 0: the linear cost needs one of them positive")
    eq = equilibrium(types, d0, d1, capacity, convention)
    out = eq.as_dict()
    out["max_rate"] = out["request_rate"] * eq.max_rate_scale
    out["cost"] = ({"source": "given"} if fit is None else
                   {"source": fit.source, "model": cfg.cost_model, "gpu": cfg.gpu,
                    "model_name": cfg.model, "rmse_s": fit.rmse_s,
                    "max_rel_error": fit.max_rel_error, "batches": fit.batches})
    try:
        plan = wait_thresholds(types, d0, d1, slack, capacity, convention)
        out["wait"] = {"slack": slack, "thresholds": dict(zip([t.name for t in types],
                                                             plan.thresholds)),
                       "M_pi": plan.M_pi, "dT": plan.dT,
                       "conditions_met": plan.time_ok and plan.memory_ok, "capped": plan.capped}
    except ValueError as e:
        out["wait"] = {"error": str(e)}
    return _finite(out)


def _finite(obj):
    """JSON has no infinity: an unbounded quantity (an unstable load) is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@cli.command()
@run_options
@click.option("--d0", type=Number(float, high=1e3),
              help="Linear cost d0 in seconds (default: fitted to --cost-model).")
@click.option("--d1", type=Number(float, high=1e3),
              help="Linear cost d1 in seconds per KV token (default: fitted).")
@click.option("--segments", type=Number(int, high=10_000), default=10, show_default=True,
              help="Workloads without --type: cluster output lengths into this many types.")
@click.option("--clustering", type=click.Choice(CLUSTERINGS), default="equal-width",
              show_default=True, help="How output lengths are clustered.")
@click.option("--convention", type=click.Choice(CONVENTIONS), default="engine", show_default=True,
              help="Stage model: the engine's (o iterations per request) or the paper's (o + 1).")
@click.option("--slack", type=Number(float, 0, 1e6), default=0.1, show_default=True,
              help="eps of the WAIT thresholds shown.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def fluid(**opts):
    """Fluid equilibrium, throughput bound and stable region of a workload (flags as in run)."""
    cfg = config_from_options(opts)
    report = fluid_report(cfg, opts["d0"], opts["d1"], opts["segments"], opts["clustering"],
                          opts["convention"], opts["slack"])
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report, stdout_console())


def _f(v, digits=4):
    if v is None:
        return "unbounded"
    return f"{v:,.{digits}g}" if isinstance(v, float) else str(v)


def print_report(r: dict, console: Console) -> None:
    cost = r["cost"]
    src = "given" if cost["source"] == "given" else \
        f"fitted to {cost['model']} ({cost['model_name']} / {cost['gpu']}), max rel. error " \
        f"{cost['max_rel_error']:.1%}"
    console.print(f"[bold]fluid model[/] ({r['convention']} stages): tau = d0 + d1 x KV with "
                  f"d0 = {r['d0'] * 1e3:.4g} ms, d1 = {r['d1'] * 1e6:.4g} us/token ({src}); "
                  f"KV capacity C = {r['capacity']:,} tokens")
    t = Table(show_header=True, header_style="bold")
    for col in ("type", "prompt", "output", "rate (req/s)", "work w (KV tok)", "n* per stage",
                "WAIT n"):
        t.add_column(col, justify="right")
    thresholds = r["wait"].get("thresholds", {})
    for ty in r["types"]:
        t.add_row(ty["name"], _f(ty["prompt"]), _f(ty["output"]), _f(ty["rate"]),
                  _f(ty["work"]), _f(ty["n_star"]), _f(thresholds.get(ty["name"])))
    console.print(t)
    rows = [("load d1 x rho", _f(r["load"])),
            ("M* (KV tokens)", _f(r["M_star"])),
            ("dT* (s)", _f(r["dT_star"])),
            ("concurrency (requests)", _f(r["concurrency"])),
            ("throughput bound Thr* (tok/s)", _f(r["throughput_bound"])),
            ("stable (d1 rho < 1 and M* <= C)", str(r["stable"])),
            ("largest stable rate scale", _f(r["max_rate_scale"])),
            ("largest stable request rate (req/s)", _f(r["max_rate"]))]
    if "M_pi" in r["wait"]:
        rows.append(("WAIT memory M_pi / dT(n)", f"{_f(r['wait']['M_pi'])} / "
                                                 f"{_f(r['wait']['dT'])} s"))
    t2 = Table(show_header=False)
    t2.add_column("k")
    t2.add_column("v", justify="right")
    for row in rows:
        t2.add_row(*row)
    console.print(t2)
