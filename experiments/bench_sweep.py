"""Benchmark: wall time of a 40-point sweep with 1 and 2 local workers (and Ray with --ray).

    python experiments/bench_sweep.py [--requests 2000] [--ray]

40 points = 2 policies x 5 rates x 4 seeds of the default model and GPU, each a fresh run in a
temporary results folder (nothing resumed). Prints one line per executor and the speed-up; the
tables of every executor are checked equal (wall-time columns aside). "Cores used" is the
simulations' CPU time over the wall time: on a shared machine it shows how much of the second
core the 2-worker run actually got, which bounds its speed-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from simulator.sweep import comparable, parse_spec, run_sweep  # noqa: E402


def spec(requests: int) -> dict:
    return {"name": "bench", "base": {"num_requests": requests, "prompt_len": "128:1024",
                                      "output_len": "16:256"},
            "axes": {"policy": ["vllm-v1", "sarathi"], "rate": {"start": 2, "stop": 10, "step": 2},
                     "seed": [0, 1, 2, 3]}}


def timed(executor: str, workers: int, requests: int) -> tuple[float, pd.DataFrame]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_sweep(parse_spec(spec(requests)), Path(tmp), executor=executor,
                           workers=workers)
        wall = time.perf_counter() - t0
    assert len(result.table) == 40 and (result.table["status"] == "ok").all()
    return wall, result.table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per point")
    ap.add_argument("--ray", action="store_true", help="also time the Ray executor (2 CPUs)")
    args = ap.parse_args()
    runs = [("local", 1), ("local", 2)] + ([("ray", 2)] if args.ray else [])
    results = {}
    for executor, workers in runs:
        wall, table = timed(executor, workers, args.requests)
        results[(executor, workers)] = (wall, table)
        cpu = table["cpu_s"].sum()
        # CPU seconds of the simulations per wall second: the cores the sweep actually got
        # (on a shared machine, fewer than the workers it ran).
        print(f"{executor:5s} {workers} worker(s): {wall:6.1f} s wall for 40 points "
              f"({args.requests} requests each; {cpu:.1f} CPU s in the simulations, "
              f"{cpu / wall:.2f} cores used on average)")
    base_wall, base_table = results[("local", 1)]
    for (executor, workers), (wall, table) in results.items():
        pd.testing.assert_frame_equal(comparable(table), comparable(base_table), check_exact=True)
        if (executor, workers) != ("local", 1):
            print(f"speed-up {executor} x{workers} over 1 worker: {base_wall / wall:.2f}")
    print("tables identical across executors (wall-time columns excluded)")


if __name__ == "__main__":
    main()
