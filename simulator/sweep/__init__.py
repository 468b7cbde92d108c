"""Sweeps: a grid of run configurations, run in parallel (process pool or Ray), resumable,
stored as one tidy table; and the capacity search built on the same executors.

The names below are imported on first use (traces/lazy.py): the command line imports the
light modules (executors, capacity) for its option choices without loading pandas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from traces.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "simulator.sweep.points": ("Point", "at_rate", "expand_points", "point_key"),
    "simulator.sweep.run": ("SweepInterrupted", "SweepOutcome", "results_dir_for", "run_sweep"),
    "simulator.sweep.spec": ("SweepSpec", "load_spec", "parse_spec"),
    "simulator.sweep.store": ("WALL_TIME_COLUMNS", "ResultsStore", "comparable"),
})

if TYPE_CHECKING:
    from simulator.sweep.points import Point, at_rate, expand_points, point_key
    from simulator.sweep.run import SweepInterrupted, SweepOutcome, results_dir_for, run_sweep
    from simulator.sweep.spec import SweepSpec, load_spec, parse_spec
    from simulator.sweep.store import WALL_TIME_COLUMNS, ResultsStore, comparable
