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


def load_run(path: str | Path) -> tuple[dict, pd.DataFrame | None]:
    """A run: a ``servesim run`` or ``bench`` output folder, or a ``vllm bench serve
    --save-result`` file. Its summary metrics and per-request table (None when it has none)."""
    path = Path(path)
    if path.is_file():
        return load_vllm_result(path)
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"{path}: no summary.json (not a servesim run or bench folder, nor a "
                          f"vllm bench result file)")
    summary = read_json_object(summary_path, "summary metrics")
    return summary, run_table(path, "requests", ("request_id", "status", *PER_REQUEST))


def read_json_object(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file")
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            raise ConfigError(f"{path}: more than one JSON object (vllm bench --append-result?); "
                              f"give a file with one result")
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})")
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a JSON object of {what}")
    return obj


def load_vllm_result(path: Path) -> tuple[dict, pd.DataFrame | None]:
    """A ``vllm bench serve`` result file (``servesim bench``'s bench.json is one). Its metric
    keys are the summary's; with ``--save-detailed`` its per-request lists give the table (one
    entry per prompt, in order: the request id is the position)."""
    result = read_json_object(path, "vllm bench results")
    if not {"completed", "duration", "request_throughput"} <= result.keys():
        raise ConfigError(f"{path}: not a vllm bench serve result (no completed, duration and "
                          f"request_throughput)")
    lists = ("ttfts", "latencies", "output_lens", "errors")
    if not all(isinstance(result.get(k), list) for k in lists):
        return result, None                 # saved without --save-detailed
    n = len(result["errors"])
    if any(len(result[k]) != n for k in lists):
        raise ConfigError(f"{path}: the per-request lists {', '.join(lists)} differ in length")
    with np.errstate(invalid="ignore", divide="ignore"):
        ttft = np.array(result["ttfts"], dtype=float) * 1e3
        e2el = np.array(result["latencies"], dtype=float) * 1e3
        out = np.array(result["output_lens"], dtype=float)
        tpot = np.where(out > 1, (e2el - ttft) / np.maximum(out - 1, 1), np.nan)
    frame = pd.DataFrame({
        "request_id": np.arange(n),
        "status": ["failed" if err else "completed" for err in result["errors"]],
        "ttft_ms": ttft, "tpot_ms": tpot, "e2el_ms": e2el})
    return result, frame


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
    """Summary metrics side by side with relative errors, and, where both runs hold the same
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
