"""``servesim capacity``: the largest arrival rate meeting an SLO (or with bounded latency)."""

from __future__ import annotations

import json

from typing import TYPE_CHECKING

import click

from simulator.cli import cli, stdout_console
from simulator.cli.options import Number, config_from_options, nonempty_path, run_options
from simulator.cli.sweep import executor_options
from simulator.errors import ConfigError
from simulator.io import write_json
from simulator.run_folder import clear, prepare, write_manifest
from simulator.sweep.capacity import (CRITERIA, CapacityResult, Probe, ReplicaCountResult,
                                      capacity_search, replica_search)
from simulator.sweep.stability import DEFAULT_GROWTH_LIMIT

if TYPE_CHECKING:
    from rich.console import Console


@cli.command()
@run_options
@click.option("--criterion", type=click.Choice(CRITERIA), default=None,
              help="slo: attainment >= --attainment and stable latency [default with --slo]; "
                   "stable: bounded latency only (lambda*).")
@click.option("--attainment", type=Number(float, 0, 1, low_open=True), default=0.9,
              show_default=True,
              help="Target fraction of requests meeting every --slo objective.")
@click.option("--seeds", type=Number(int, 1, 1000), default=3, show_default=True,
              help="Seeds per probed rate (--seed, --seed + 1, ...), pooled.")
@click.option("--tol", type=Number(float, 0, 1, low_open=True), default=0.02, show_default=True,
              help="Stop when the bracket is within this fraction of its upper rate.")
@click.option("--rate-min", type=Number(float, 0, 1e6, low_open=True),
              help="Lowest rate to probe (default: search from --rate).")
@click.option("--rate-max", type=Number(float, 0, 1e6, low_open=True),
              help="Highest rate to probe.")
@click.option("--growth-limit", type=Number(float, 1, 1e6, low_open=True),
              default=DEFAULT_GROWTH_LIMIT, show_default=True,
              help="Stable when second-half / first-half mean E2E latency is at most this.")
@click.option("--search", type=click.Choice(("rate", "replicas")), default="rate",
              show_default=True,
              help="rate: the largest rate; replicas: the smallest replica count (behind "
                   "--router) meeting the criterion at --rate.")
@click.option("--max-replicas", type=Number(int, 1, 4096), default=64, show_default=True,
              help="With --search replicas: the most replicas probed.")
@executor_options
@click.option("--out", "-o", type=click.Path(file_okay=False), callback=nonempty_path,
              help="Folder for capacity.json (the search, every probe and its runs) and, "
              "last, manifest.json. It must hold no other run.")
@click.option("--replace", is_flag=True,
              help="Remove the run already in --out before writing this one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result line.")
def capacity(**opts):
    """Find the largest arrival rate whose SLO attainment stays above the target and whose
    latency is stable, by bisection over the rate with several seeds per probe.

    The workload is set by the run flags; with --type the mix keeps its proportions. Latency is
    stable when the mean E2E latency of the second half of the arrivals is at most
    --growth-limit times that of the first half (so the horizon, -n or --duration, matters).
    """
    by_replicas = opts["search"] == "replicas"
    # A replica search sets the count itself (the router applies at every count probed).
    cfg = config_from_options(opts, {"replicas": opts["max_replicas"]} if by_replicas else None)
    criterion = opts["criterion"] or ("slo" if cfg.slo else None)
    if criterion is None:
        raise ConfigError("give --slo ttft=MS,tpot=MS,e2el=MS (with --attainment), or "
                          "--criterion stable for the largest rate with bounded latency")
    from rich.console import Console
    if opts["out"]:   # before searching: an unwritable or occupied folder fails at once
        prepare(opts["out"], opts["replace"])
    elif opts["replace"]:
        raise ConfigError("--replace replaces the run in --out: give --out")
    console = Console(stderr=True)
    verbose = not (opts["quiet"] or opts["as_json"])

    def on_probe(p: Probe):
        if verbose:
            att = "" if p.attainment is None else f", attainment {p.attainment:.3f}"
            at = f"{p.replicas} replicas" if by_replicas else f"rate {p.rate:.4g} req/s"
            console.print(f"{at}: {'pass' if p.passed else 'fail'} "
                          f"(growth {p.growth:.2f}{att}, mean E2E {p.mean('mean_e2el_ms'):,.0f} ms)",
                          highlight=False)

    if by_replicas:
        if opts["rate_min"] or opts["rate_max"]:
            raise ConfigError("--rate-min/--rate-max bound a rate search; a replica search "
                              "runs at --rate (give --search rate to search the rate)")
        found = replica_search(cfg, criterion=criterion, attainment=opts["attainment"],
                               seeds=opts["seeds"], max_replicas=opts["max_replicas"],
                               growth_limit=opts["growth_limit"], executor=opts["executor"],
                               workers=opts["workers"], address=opts["address"],
                               on_probe=on_probe)
        record = {**found.to_dict(), "config": cfg.to_dict()}
        if opts["out"]:
            write_record(opts["out"], opts["replace"], record, criterion=criterion,
                         replicas=found.replicas)
        if opts["as_json"]:
            click.echo(json.dumps(record, indent=2, default=str))
        else:
            click.echo(replicas_line(found))
        return
    result = capacity_search(cfg, criterion=criterion, attainment=opts["attainment"],
                             seeds=opts["seeds"], tol=opts["tol"], rate_min=opts["rate_min"],
                             rate_max=opts["rate_max"], growth_limit=opts["growth_limit"],
                             executor=opts["executor"], workers=opts["workers"],
                             address=opts["address"], on_probe=on_probe)
    record = {**result.to_dict(), "config": cfg.to_dict()}
    if opts["out"]:
        write_record(opts["out"], opts["replace"], record, criterion=criterion,
                     capacity=result.capacity)
    if opts["as_json"]:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    # With sessions the rate starts sessions (each brings session_turns requests).
    unit = "sessions/s" if cfg.session_turns > 1 else "req/s"
    click.echo(result_line(result, unit))
    if not opts["quiet"]:
        print_bracket(result, stdout_console(), unit)


def write_record(out: str, replace: bool, record: dict, **info) -> None:
    """capacity.json, then the manifest (last) in ``out``, replacing the run there."""
    folder, previous = prepare(out, replace)
    clear(previous)
    write_json(folder / "capacity.json", record)
    write_manifest(folder, "capacity", ["capacity.json"], **info)


def replicas_line(r: ReplicaCountResult) -> str:
    what = "SLO replicas" if r.criterion == "slo" else "replicas for stable latency"
    if r.replicas is None:
        return f"{what}: more than {r.max_replicas} (the most probed fails)"
    below = f", fails at {r.low.replicas}" if r.low is not None else ""
    return f"{what}: {r.replicas} (passes at {r.replicas}{below})"


def result_line(r: CapacityResult, unit: str = "req/s") -> str:
    """``unit``: what the searched rate counts (with sessions, sessions started per second)."""
    what = ("SLO capacity" if r.criterion == "slo" else "lambda* (largest stable rate)")
    if r.capacity is None:
        return f"{what}: below {r.high.rate:.4g} {unit} (the lowest rate probed fails)"
    if r.high is None:
        return f"{what}: at least {r.capacity:.4g} {unit} (the highest rate probed passes)"
    return (f"{what}: {r.capacity:.4g} {unit} (passes at {r.low.rate:.4g}, fails at "
            f"{r.high.rate:.4g}; tolerance {r.tol:g})")


def print_bracket(r: CapacityResult, console: Console, unit: str = "req/s") -> None:
    """The bracketing runs, one row per seed."""
    from rich.table import Table
    t = Table(title=f"bracketing runs (rates in {unit}, latencies in ms)", title_justify="left")
    for col in ("rate", "result", "seed", "attain", "growth", "TTFT", "p99 TTFT", "E2E",
                "p99 E2E", "thru"):
        t.add_column(col, justify="right")
    for probe in (r.low, r.high):
        if probe is None:
            continue
        for run in probe.runs:
            growth = (run["latency_second_half_ms"] / run["latency_first_half_ms"]
                      if run.get("latency_first_half_ms") else float("nan"))
            t.add_row(f"{probe.rate:.4g}", "pass" if probe.passed else "fail", str(run["seed"]),
                      _num(run.get("slo_attainment"), 3), _num(growth, 2),
                      _num(run.get("mean_ttft_ms")), _num(run.get("p99_ttft_ms")),
                      _num(run.get("mean_e2el_ms")), _num(run.get("p99_e2el_ms")),
                      _num(run.get("request_throughput"), 3))
    console.print(t)


def _num(v, digits=0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"
