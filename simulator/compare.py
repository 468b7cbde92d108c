"""Compare two run folders (a simulation and a measured server, say) metric by metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.errors import ConfigError

METRICS = (
    "completed", "request_throughput", "output_throughput", "total_token_throughput",
    *(f"{stat}_{m}" for m in ("ttft_ms", "tpot_ms", "e2el_ms")
      for stat in ("mean", "median", "p90", "p99")),
)
PER_REQUEST = ("ttft_ms", "tpot_ms", "e2el_ms")


def load_run(folder: str | Path) -> tuple[dict, pd.DataFrame | None]:
    """A run (or ``servesim bench``) output folder: its summary and per-request table."""
    folder = Path(folder)
    path = folder / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no summary.json (not a servesim run or bench folder)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})")
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: expected a JSON object of summary metrics")
    return summary, run_table(folder, "requests", ("request_id", "status", *PER_REQUEST))


def run_table(folder: Path, name: str, columns: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """A run folder's ``requests`` or ``timeline`` table, in either format
    ``runner.write_outputs`` writes (None when the folder has neither)."""
    for suffix in (".csv", ".parquet"):
        if (folder / f"{name}{suffix}").is_file():
            return read_table(folder / f"{name}{suffix}", columns)
    return None


def read_table(path: Path, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet table that servesim wrote. A file that does not parse, or lacks one of
    ``columns``, is one line naming it (a ConfigError), never a traceback."""
    reader = pd.read_parquet if path.suffix == ".parquet" else pd.read_csv
    try:
        frame = reader(path)
    except (OSError, ValueError) as e:   # pandas' and pyarrow's parse errors are ValueErrors
        raise ConfigError(f"{path}: cannot read the table ({' '.join(str(e).split())[:200]})")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: no column {missing[0]!r} (not a table servesim wrote)")
    return frame


def relative_error(sim, real):
    """(sim - real) / real; None where undefined."""
    if not isinstance(sim, (int, float)) or not isinstance(real, (int, float)) or \
            real == 0 or not math.isfinite(sim) or not math.isfinite(real):
        return None
    return (sim - real) / real


def compare(sim_dir, real_dir) -> dict:
    """Summary metrics side by side with relative errors, and, where both folders hold the same
    requests, the median per-request relative error of TTFT, TPOT and latency."""
    sim, sim_req = load_run(sim_dir)
    real, real_req = load_run(real_dir)
    rows = [{"metric": m, "sim": sim.get(m), "real": real.get(m),
             "rel_error": relative_error(sim.get(m), real.get(m))} for m in METRICS]
    per_request = {}
    if sim_req is not None and real_req is not None:
        both = sim_req[sim_req.status == "completed"].merge(
            real_req[real_req.status == "completed"], on="request_id", suffixes=("_sim", "_real"))
        per_request["matched_requests"] = int(len(both))
        for m in PER_REQUEST:
            s, r = both[f"{m}_sim"].to_numpy(float), both[f"{m}_real"].to_numpy(float)
            ok = np.isfinite(s) & np.isfinite(r) & (r > 0)
            per_request[f"median_abs_rel_error_{m}"] = \
                float(np.median(np.abs(s[ok] - r[ok]) / r[ok])) if ok.any() else None
    return {"sim": str(sim_dir), "real": str(real_dir), "metrics": rows,
            "per_request": per_request}
