"""Sweeps: a grid of run configurations, run in parallel (process pool or Ray), resumable,
stored as one tidy table; and the capacity search built on the same executors."""

from simulator.sweep.points import Point, at_rate, expand_points, point_key
from simulator.sweep.run import SweepInterrupted, SweepOutcome, results_dir_for, run_sweep
from simulator.sweep.spec import SweepSpec, load_spec, parse_spec
from simulator.sweep.store import WALL_TIME_COLUMNS, ResultsStore, comparable

__all__ = ["Point", "ResultsStore", "SweepInterrupted", "SweepOutcome", "SweepSpec",
           "WALL_TIME_COLUMNS", "at_rate", "comparable", "expand_points", "load_spec",
           "parse_spec", "point_key", "results_dir_for", "run_sweep"]
