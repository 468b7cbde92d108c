"""``servesim fluid``: the fluid equilibrium, throughput bound and stable region of a workload."""

from __future__ import annotations

import json

from typing import TYPE_CHECKING

import click

from scheduler.fluid import CLUSTERINGS, CONVENTIONS
from simulator.cli import cli, stdout_console
from simulator.cli.options import Number, config_from_options, run_options

if TYPE_CHECKING:
    from rich.console import Console


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
    from simulator.fluid_report import fluid_report
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
    from rich.table import Table
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
