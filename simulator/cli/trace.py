"""``servesim trace``: statistics of a trace file, its formats, and fetching public traces."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from simulator.cli import cli, stdout_console
from simulator.cli.options import Number
from simulator.config import parse_pairs

if TYPE_CHECKING:
    from rich.console import Console

SPARK = " ▁▂▃▄▅▆▇█"


@cli.group()
def trace():
    """Inspect trace files and download public traces."""


@trace.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "trace_format", metavar="NAME", help="Format instead of detection.")
@click.option("-T", "--trace-option", "trace_option", multiple=True, metavar="KEY=VALUE",
              help="Format option, repeatable (see `servesim trace formats`).")
@click.option("--strict", is_flag=True, help="Reject unsorted timestamps and 0-token requests.")
@click.option("--seed", type=Number(int, 0, 2**63 - 1), default=0, show_default=True,
              help="Seed of format jitter.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(file, trace_format, trace_option, strict, seed, as_json):
    """Requests, span, rate, burstiness, length quantiles and per-minute rate of FILE."""
    from traces.loaders import read_trace
    from traces.stats import trace_stats
    options = parse_pairs(trace_option, "--trace-option", split_commas=False)
    s = trace_stats(read_trace(file, trace_format, options, strict=strict, seed=seed))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    for message in s["warnings"]:
        click.echo(f"servesim: warning: {message}", err=True)
    _print_stats(s, stdout_console())


def _num(v, digits=1):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _print_stats(s: dict, console: Console) -> None:
    console.print(f"[bold]{s['path']}[/] ({s['format']}): {s['requests']:,} requests"
                  + (f" of {s['rows']:,} rows" if s.get("rows", s["requests"]) != s["requests"]
                     else ""))
    if s.get("dropped"):
        console.print("dropped: " + ", ".join(f"{k} {v:,}" for k, v in s["dropped"].items()))
    if s["span_s"] is None:
        console.print("no arrival times (lengths only)")
    else:
        console.print(f"span {_num(s['span_s'])} s ({s['span_s'] / 60:.1f} min), mean rate "
                      f"{_num(s['mean_rate'], 3)} req/s, inter-arrival CV "
                      f"{_num(s['interarrival_cv'], 2)}, longest gap {_num(s['max_gap_s'])} s")
    from rich.table import Table
    t = Table(show_header=True, header_style="bold")
    for col in ("tokens", "mean", "median", "p90", "p99", "max"):
        t.add_column(col, justify="right" if col != "tokens" else "left")
    for key in ("prompt_tokens", "output_tokens"):
        q = s[key]
        t.add_row(key.split("_")[0], *(_num(q[k]) for k in ("mean", "median", "p90", "p99")),
                  _num(q["max"]))
    console.print(t)
    profile = s.get("per_minute_rate")
    if profile:
        peak = max(profile) or 1.0
        line = "".join(SPARK[round(r / peak * (len(SPARK) - 1))] for r in profile)
        console.print(f"per-minute rate (req/s, {len(profile)} minutes, peak "
                      f"{s['peak_minute_rate']:.2f}, {s['idle_minutes']} idle):")
        console.print(line, markup=False, soft_wrap=False)
        console.print(" ".join(f"{r:.2f}" for r in profile), markup=False)


@trace.command()
def formats():
    """The trace formats, their identifying columns and options."""
    from rich.table import Table

    from traces.loaders import FORMATS
    console = stdout_console()
    t = Table(show_header=True, header_style="bold")
    for col in ("format", "detected by columns", "times", "options (-T KEY=VALUE)"):
        t.add_column(col)
    for f in FORMATS.values():
        opts = "; ".join(f"{o.name}: {o.help} [{o.default!r}]" for o in f.options)
        t.add_row(f.name, ", ".join(f.columns) or "(none: needs -T prompt=, output=)",
                  "yes" if f.has_arrivals else "no", opts)
    console.print(t)


@trace.command()
@click.argument("name", required=False)
@click.option("--dest", type=click.Path(file_okay=False),
              help="Folder to download into [$SERVESIM_CACHE/traces or ~/.cache/servesim/traces].")
@click.option("--url", help="Download from this URL instead (a mirror; file:// works).")
@click.option("--force", is_flag=True, help="Download even if an intact copy is there.")
def fetch(name, dest, url, force):
    """Download public trace NAME, verify its SHA-256, print its path, licence and citation.

    Without NAME: list the known datasets.
    """
    from rich.table import Table

    from traces.fetch import DATASETS, default_cache, fetch as fetch_dataset
    console = stdout_console()
    if name is None:
        t = Table(show_header=True, header_style="bold", title=f"cache: {default_cache()}",
                  title_justify="left")
        for col in ("name", "description", "licence", "checksum"):
            t.add_column(col)
        for d in DATASETS.values():
            t.add_row(d.name, d.description, d.licence, "SHA-256" if d.sha256 else "none")
        console.print(t)
        return
    got = fetch_dataset(name, dest, url=url, force=force)
    ds = got.dataset
    state = "downloaded" if got.downloaded else "already present"
    check = "verified" if got.verified else "NOT verified: no published checksum"
    click.echo(str(got.path))
    click.echo(f"{state}; SHA-256 {got.sha256} ({check})", err=True)
    click.echo(f"licence: {ds.licence}", err=True)
    click.echo(f"cite: {ds.citation}", err=True)
