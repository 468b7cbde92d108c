"""The results folder of a sweep.

    RESULTS_DIR/
      sweep.json                      the spec as last run, and its points (key, axes)
      points/KEY.json                 one finished point: axes, resolved config, status, summary
      points/KEY.requests.parquet     its per-request table (save: requests)
      points/KEY.timeline.parquet     its iteration timeline (save: timeline)
      results.parquet                 the tidy table: one row per point of the spec
      manifest.json                   last: the sweep's status and files (simulator/run_folder.py)

A point's JSON is written last and atomically, so its presence means the point is complete: a
sweep killed at any moment loses only the points in flight, and a re-run skips the rest. The
tidy table is always rebuilt from the point files (never from in-memory results), so a resumed
sweep's table is identical to an uninterrupted one's.

The folder holds one sweep (simulator/run_folder.py): re-running the same spec resumes it, a
different spec (another grid or base, ``same_sweep``) is refused unless asked to replace the
sweep there, and another command's run is refused likewise. The manifest is removed when a run
starts and written when it ends, so a folder without one holds a sweep still running or killed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from simulator import run_folder
from simulator.errors import ConfigError
from simulator.io import atomic_write, write_json
from simulator.sweep.points import Point
from simulator.sweep.worker import PointOutcome

RESULTS_FILE = "results.parquet"
# Measured on the machine that ran the point (wall and CPU seconds of the simulation): differ
# between runs of the same point. Kept as
# columns for speed studies; drop them (comparable()) before comparing tables for equality.
WALL_TIME_COLUMNS = ("wall_s", "sim_requests_per_wall_s", "cpu_s")
# Nested summary entries flattened into "group.key" columns.
NESTED = ("policy", "cost", "workload", "slo", "fluid")


POINT_SUFFIXES = (".json", ".requests.parquet", ".timeline.parquet")
# What a spec may change and still be the same sweep: where it is written, which tables it keeps
# (a point missing a table it now wants is simply re-run).
OUTPUT_KEYS = ("out", "save")


def same_sweep(a: dict, b: dict) -> bool:
    """Two specs describe the same sweep: equal but for their output keys."""
    def core(raw: dict) -> str:
        return json.dumps({k: v for k, v in raw.items() if k not in OUTPUT_KEYS},
                          sort_keys=True, default=str)
    return isinstance(a, dict) and isinstance(b, dict) and core(a) == core(b)


class ResultsStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.points_dir = self.root / "points"

    def prepare(self, spec_raw: dict, replace: bool = False) -> None:
        """Make the folder this sweep's: resume the same sweep, refuse another run there
        unless ``replace`` (then remove its files first)."""
        _, previous = run_folder.prepare(self.root, replace,
                                         resumes=lambda out: self.holds(spec_raw))
        run_folder.clear(previous)
        try:
            self.points_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"out: cannot create results folder {self.root}: {e.strerror}")

    def holds(self, spec_raw: dict) -> bool:
        """The folder holds the sweep of this spec (as its sweep.json records it)."""
        try:
            recorded = json.loads((self.root / "sweep.json").read_text())["spec"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return same_sweep(recorded, spec_raw)

    # ---- one point ----------------------------------------------------------------------
    def _path(self, key: str, suffix: str) -> Path:
        return self.points_dir / f"{key}{suffix}"

    def load_point(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key, ".json").read_text())
        except (OSError, ValueError):
            return None

    def is_done(self, point: Point, need_requests: bool, need_timeline: bool) -> bool:
        """Finished successfully, with the tables this run wants. Failed points are retried:
        a deterministic failure fails again quickly, a transient one (a worker killed for
        memory) gets its second chance."""
        record = self.load_point(point.key)
        if record is None or record.get("status") != "ok":
            return False
        return ((not need_requests or self._path(point.key, ".requests.parquet").exists()) and
                (not need_timeline or self._path(point.key, ".timeline.parquet").exists()))

    def write_point(self, point: Point, outcome: PointOutcome) -> None:
        if outcome.requests is not None:
            atomic_write(self._path(point.key, ".requests.parquet"),
                          lambda tmp: outcome.requests.to_parquet(tmp, index=False))
        if outcome.timeline is not None:
            atomic_write(self._path(point.key, ".timeline.parquet"),
                          lambda tmp: outcome.timeline.to_parquet(tmp, index=False))
        record = {"key": point.key, "axes": point.axes, "config": point.config.to_dict(),
                  "status": outcome.status, "error": outcome.error, "summary": outcome.summary}
        write_json(self._path(point.key, ".json"), record, indent=1)

    def requests(self, key: str) -> pd.DataFrame | None:
        p = self._path(key, ".requests.parquet")
        return pd.read_parquet(p) if p.exists() else None

    def timeline(self, key: str) -> pd.DataFrame | None:
        p = self._path(key, ".timeline.parquet")
        return pd.read_parquet(p) if p.exists() else None

    # ---- the whole sweep ----------------------------------------------------------------
    def write_manifest(self, spec_raw: dict, points: list[Point], executor: str) -> None:
        manifest = {"spec": spec_raw, "executor": executor,
                    "points": [{"index": p.index, "key": p.key, "axes": p.axes} for p in points]}
        write_json(self.root / "sweep.json", manifest, indent=1)

    def finish(self, points: list[Point], status: str, executor: str) -> None:
        """The manifest, last: every file of the sweep, and whether it ran to the end."""
        files = ["sweep.json", RESULTS_FILE]
        for p in points:
            files += [f"points/{p.key}{suffix}" for suffix in POINT_SUFFIXES
                      if self._path(p.key, suffix).exists()]
        done = sum(1 for p in points if (self.load_point(p.key) or {}).get("status") == "ok")
        run_folder.write_manifest(self.root, "sweep", files, status=status, executor=executor,
                                  points=len(points), ok=done)

    def table(self, points: list[Point], axis_names: list[str]) -> pd.DataFrame:
        """One row per point of ``points`` that has a record, in grid order."""
        rows = []
        for p in points:
            record = self.load_point(p.key)
            if record is not None:
                rows.append(tidy_row(p.index, record, axis_names))
        frame = pd.DataFrame(rows)
        return _arrow_safe(frame)

    def write_table(self, frame: pd.DataFrame) -> Path:
        path = self.root / RESULTS_FILE
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
        return path


def tidy_row(index: int, record: dict, axis_names: list[str]) -> dict:
    """Axes first, then status, then every scalar summary metric; nested descriptions become
    ``group.key`` columns (policy.chunk_size, workload.mean_rate, ...)."""
    row = {"point": index, "point_key": record["key"]}
    row.update({name: record["axes"].get(name) for name in axis_names})
    summary = record.get("summary") or {}
    config = record.get("config") or {}
    row["status"] = record["status"]
    row["error"] = record.get("error")
    # What a reader needs even when it is not an axis: the policy and the offered load.
    row.setdefault("policy", config.get("policy"))
    row["offered_rate"] = (summary.get("workload") or {}).get("mean_rate")
    for k, v in summary.items():
        if k in NESTED and isinstance(v, dict):
            for sub, sv in v.items():
                row[f"{k}.{sub}"] = json.dumps(sv) if isinstance(sv, (list, dict)) else sv
        elif k in row:
            continue
        elif isinstance(v, (list, dict)):
            row[k] = json.dumps(v, default=str)
        else:
            row[k] = v
    return row


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A column mixing types (an axis of 12 and "auto", a policy parameter that is a number in
    one policy and a name in another) cannot go to Parquet: store such a column as text."""
    for col in frame.columns:
        if frame[col].dtype == object:
            kinds = {type(v) for v in frame[col] if v is not None and not
                     (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and not kinds <= {int, float}:
                frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    return frame


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The table without its wall-time columns: what must be equal, bit for bit, whichever
    executor and worker count produced it."""
    return frame.drop(columns=[c for c in frame.columns if c in WALL_TIME_COLUMNS or
                               c.endswith(".wall_s")])
