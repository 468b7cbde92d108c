"""``servesim sweep SPEC``: run a grid of simulations in parallel, resumably, into one table."""

from __future__ import annotations

import json

from typing import TYPE_CHECKING

import click

from simulator.cli import cli
from simulator.cli.options import Number, nonempty_path
from simulator.sweep.executors import EXECUTORS

if TYPE_CHECKING:
    from rich.console import Console


def executor_options(f):
    """--executor, --workers, --address: shared by sweep and capacity."""
    for opt in reversed([
        click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                     help="Local process pool, or Ray (a local Ray, or the cluster at --address)."),
        click.option("--workers", "-j", type=Number(int, 1, 4096),
                     help="Parallel workers (local: processes; local Ray: CPUs). [all cores]"),
        click.option("--address", help="Ray cluster address (with --executor ray), e.g. auto or "
                                       "ray://head:10001."),
    ]):
        f = opt(f)
    return f


def axes_text(axes: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in axes.items())


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), callback=nonempty_path,
              help="Results folder. [the spec's out:, else results/<spec name>]")
@executor_options
@click.option("--dry-run", is_flag=True, help="List the points and which are done; run nothing.")
@click.option("--replace", is_flag=True,
              help="Remove the results of another sweep (or run) in the folder first; the same "
              "spec resumes without it.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def sweep(spec_file, out, executor, workers, address, dry_run, replace, as_json, quiet):
    """Run every point of a sweep spec (a base run config and axes); re-running resumes.

    Exit status: 0 when every point succeeded, 1 when some failed (each is recorded in the
    table with its error), 2 for a bad spec, 130 when interrupted (finished points are kept).
    """
    from rich.console import Console

    from simulator.sweep import (SweepInterrupted, expand_points, load_spec, results_dir_for,
                                 run_sweep)
    from simulator.sweep.store import RESULTS_FILE, ResultsStore
    spec = load_spec(spec_file)
    console = Console(stderr=True)
    if dry_run:
        points = expand_points(spec)
        store = ResultsStore(results_dir_for(spec, out))
        for p in points:
            done = store.is_done(p, spec.save_requests, spec.save_timeline)
            click.echo(f"{p.index:>5} {p.key} {'done' if done else 'todo'}  {axes_text(p.axes)}")
        return
    reporter = _Reporter(console, quiet or as_json)
    try:
        with reporter:
            result = run_sweep(spec, out, executor=executor, workers=workers, address=address,
                               on_start=reporter.start, on_point=reporter.point,
                               replace=replace)
    except SweepInterrupted as e:
        o = e.outcome
        console.print(f"interrupted: {o.skipped + o.ran} of {len(o.points)} points done, kept "
                      f"in {o.results_dir}; run the same command again to resume")
        raise click.exceptions.Exit(130)
    table = result.table
    failures = table[table["status"] != "ok"].to_dict("records") if len(table) else []
    if as_json:
        click.echo(json.dumps({
            "results": str(result.results_dir / RESULTS_FILE), "points": len(result.points),
            "ran": result.ran, "skipped": result.skipped, "failed": len(failures),
            "errors": {r["point_key"]: r["error"] for r in failures}}, indent=2))
    elif not quiet:
        click.echo(f"sweep {spec.name}: {len(result.points)} points ({result.ran} ran, "
                          f"{result.skipped} already done, {len(failures)} failed) -> "
                          f"{result.results_dir / RESULTS_FILE}")
        for r in failures[:10]:
            shown = {a.name: r.get(a.name) for a in spec.axes}
            click.echo(f"  failed: {axes_text(shown)}: {r['error']}")
    if failures:
        raise click.exceptions.Exit(1)


class _Reporter:
    """A progress bar on a terminal (points done, failures, ETA); one line per point otherwise."""

    def __init__(self, console: Console, quiet: bool):
        self.console = console
        self.quiet = quiet
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def start(self, progress, executor: str):
        if self.quiet:
            return
        self.console.print(f"{progress.total} points, {progress.skipped} already done; "
                           f"running on {executor}")
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("points, [red]{task.fields[failed]} failed"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=self.console)
            self.task = self.bar.add_task("sweep", total=progress.total,
                                          completed=progress.skipped, failed=0)
            self.bar.start()

    def point(self, point, outcome, progress):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=progress.skipped + progress.done,
                            failed=progress.failed)
            if outcome.status != "ok":
                self.bar.console.print(f"failed: {axes_text(point.axes)}: {outcome.error}")
        else:
            status = "ok" if outcome.status == "ok" else f"FAILED: {outcome.error}"
            self.console.print(f"[{progress.skipped + progress.done}/{progress.total}] "
                               f"{axes_text(point.axes)}: {status}", highlight=False)
