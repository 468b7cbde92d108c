"""Trace loading speed and memory.

    python experiments/bench_traces.py                 # every file
    python experiments/bench_traces.py --rows 150000   # a smaller synthetic BurstGPT file

- Load: ``traces.loaders.read_trace`` (format detection, parsing, validation, SHA-256 of the
  file) of each reference trace in ../shared/traces, and of a synthetic 1.5-million-row
  BurstGPT-format CSV written on the fly to a temporary folder (deleted afterwards). Targets for
  the BurstGPT file: under 15 s and under 1 GiB. Each load runs in a fresh Python process, so
  its peak resident memory (VmHWM, which counts pandas', NumPy's and Arrow's buffers alike)
  is its own; "over base" subtracts the process's memory after imports.

The wall time of replaying the full Azure conv trace is a simulator-speed figure: it is the
``trace-replay`` benchmark of experiments/bench_speed.py. Loading is measured here because its
figures (time and memory of one load per file) do not fit bench_speed's per-run rows. The
machine's load inflates wall times; the script prints the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "traces"
SHARED_FILES = ("AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv",
                "splitwise_conv.csv", "conversation_trace.jsonl",
                "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
                "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
                "bwb_stats_llama2_tokenizer_filtered_v2.csv")
BURSTGPT_ROWS = 1_500_000
TARGET_S, TARGET_MIB = 15.0, 1024.0


def _peak_rss_mib() -> float:
    # VmHWM, the peak of this process's own memory: ru_maxrss would carry over the parent's
    # peak (Linux keeps it across fork and exec), and the parent has just written a big CSV.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def measure_one(path: str) -> dict:
    """Run in a child process: load one file, report time and memory as JSON."""
    from traces.loaders import read_trace
    base = _current_rss_mib()
    t0 = time.perf_counter()
    w = read_trace(path)
    load_s = time.perf_counter() - t0
    return {"file": Path(path).name, "format": w.meta["format"], "requests": len(w),
            "load_s": load_s, "peak_mib": _peak_rss_mib(), "base_mib": base}


def load_in_child(path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def write_burstgpt(path: Path, rows: int, seed: int = 0) -> None:
    """A BurstGPT-shaped CSV: integer-second timestamps (Poisson, ~10 req/s), ChatGPT / GPT-4,
    lognormal request and response tokens, ~2% failures (0 response tokens)."""
    rng = np.random.default_rng(seed)
    ts = np.floor(np.cumsum(rng.exponential(0.1, rows))).astype(np.int64)
    req = np.maximum(1, rng.lognormal(6.0, 1.0, rows)).astype(np.int64)
    res = np.maximum(1, rng.lognormal(5.0, 1.0, rows)).astype(np.int64)
    res[rng.random(rows) < 0.02] = 0
    pd.DataFrame({
        "Timestamp": ts,
        "Model": np.where(rng.random(rows) < 0.8, "ChatGPT", "GPT-4"),
        "Request tokens": req,
        "Response tokens": res,
        "Total tokens": req + res,
        "Log Type": np.where(rng.random(rows) < 0.5, "Conversation log", "API log"),
    }).to_csv(path, index=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=BURSTGPT_ROWS, help="synthetic BurstGPT rows")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_one(args.measure)))
        return 0
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, pandas {pd.__version__}")
    print(f"{'file':<60} {'format':<14} {'requests':>10} {'load s':>7} {'peak MiB':>9} "
          f"{'over base':>9}")

    def show(r):
        print(f"{r['file']:<60} {r['format']:<14} {r['requests']:>10,} {r['load_s']:>7.2f} "
              f"{r['peak_mib']:>9.0f} {r['peak_mib'] - r['base_mib']:>9.0f}", flush=True)

    for name in SHARED_FILES:
        if (SHARED / name).is_file():
            show(load_in_child(SHARED / name))
        else:
            print(f"{name:<60} (not found in {SHARED})")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "BurstGPT_synthetic.csv"
        t0 = time.perf_counter()
        write_burstgpt(path, args.rows)
        print(f"(wrote {args.rows:,}-row synthetic BurstGPT CSV, "
              f"{path.stat().st_size / 2 ** 20:.0f} MiB, in {time.perf_counter() - t0:.1f} s)")
        r = load_in_child(path)
        show(r)
        verdict = "meets" if r["load_s"] < TARGET_S and r["peak_mib"] < TARGET_MIB else "MISSES"
        print(f"BurstGPT target (< {TARGET_S:g} s, < {TARGET_MIB:g} MiB peak): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
