"""Run a sweep: expand the spec, skip finished points, run the rest, keep every result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from simulator.sweep.executors import make_executor
from simulator.sweep.points import Point, expand_points
from simulator.sweep.spec import SweepSpec
from simulator.sweep.store import ResultsStore
from simulator.sweep.worker import PointOutcome, PointTask


@dataclass
class SweepProgress:
    total: int          # points in the spec
    skipped: int        # already done before this run
    done: int = 0       # finished in this run (ok or failed)
    failed: int = 0


@dataclass
class SweepOutcome:
    results_dir: Path
    table: pd.DataFrame
    points: list[Point]
    ran: int
    skipped: int
    failed: int
    interrupted: bool = False


def results_dir_for(spec: SweepSpec, out: str | Path | None) -> Path:
    """--out, else the spec's out:, else results/<spec name>."""
    return Path(out or spec.out or Path("results") / spec.name)


def run_sweep(spec: SweepSpec, out: str | Path | None = None, *, executor: str = "local",
              workers: int | None = None, address: str | None = None,
              on_point: Callable[[Point, PointOutcome, SweepProgress], None] | None = None,
              on_start: Callable[[SweepProgress, str], None] | None = None,
              replace: bool = False) -> SweepOutcome:
    points = expand_points(spec)
    store = ResultsStore(results_dir_for(spec, out))
    store.prepare(spec.raw, replace)
    todo = [p for p in points if not store.is_done(p, spec.save_requests, spec.save_timeline)]
    progress = SweepProgress(total=len(points), skipped=len(points) - len(todo))
    by_index = {p.index: p for p in points}
    tasks = [PointTask(p.index, p.key, p.config.to_dict(), spec.save_requests, spec.save_timeline)
             for p in todo]
    interrupted = False
    ex = make_executor(executor, workers, address)
    store.write_manifest(spec.raw, points, ex.describe())
    if on_start:
        on_start(progress, ex.describe())
    try:
        if tasks:
            with ex:
                for outcome in ex.map_unordered(tasks):
                    point = by_index[outcome.index]
                    store.write_point(point, outcome)
                    progress.done += 1
                    progress.failed += outcome.status != "ok"
                    if on_point:
                        on_point(point, outcome, progress)
    except KeyboardInterrupt:
        interrupted = True
    # Written on success and on Ctrl-C alike: the table holds every point finished so far.
    table = store.table(points, [a.name for a in spec.axes])
    store.write_table(table)
    store.finish(points, "interrupted" if interrupted else "complete", ex.describe())
    result = SweepOutcome(store.root, table, points, progress.done, progress.skipped,
                          progress.failed, interrupted)
    if interrupted:
        raise SweepInterrupted(result)
    return result


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep, after the finished points and the table were saved."""

    def __init__(self, outcome: SweepOutcome):
        super().__init__()
        self.outcome = outcome
