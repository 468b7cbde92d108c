"""``servesim report RESULTS_DIR``: PNG figures and a Markdown report."""

from __future__ import annotations

import click

from simulator.cli import cli
from simulator.cli.options import Number, nonempty_path


@cli.command("report")
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), callback=nonempty_path,
              help="Folder for report.md and figures/. [RESULTS_DIR]")
@click.option("--at-rate", type=Number(float, 0, 1e6, low_open=True),
              help="Rate of the latency CDFs and timelines (nearest grid value). [middle of grid]")
@click.option("--x", "x", help="Column on the x axis of the rate figures. [rate if an axis, "
                               "else offered_rate]")
@click.option("--replace", is_flag=True,
              help="Remove the run or report already in --out first (a report into "
              "RESULTS_DIR itself always replaces the previous one).")
def report_cmd(results_dir, out, at_rate, x, replace):
    """Figures and a Markdown report for a sweep's results folder or a run's --out folder.

    A sweep gets mean and p99 latency against rate per series (the axes other than rate and
    seed), throughput against rate (with the fluid bound when the results carry it), TTFT and
    E2E CDFs at one rate, and timelines where the sweep saved them; a run gets its timeline of
    queue length, batch size and KV usage, and its latency CDFs.
    """
    from simulator.report.build import report
    result = report(results_dir, out, at_rate, x, replace)
    for p in result.figures:
        click.echo(f"wrote {p}")
    click.echo(f"wrote {result.markdown}")
    for n in result.notes:
        click.echo(f"note: {n}", err=True)
