"""The prefix cache's cost as machine instructions: the Mooncake benchmark under Cachegrind.

    python experiments/bench_instructions.py                    # the whole trace (about 2 min)
    python experiments/bench_instructions.py --cache-sim        # and cache misses (about 4 min)
    python experiments/bench_instructions.py --requests 300 --policy sarathi

The Mooncake benchmark of experiments/bench_speed.py (``mooncake-prefix``, ``mooncake_config``)
with prefix caching off and on, each in its own Python process run under Valgrind's Cachegrind,
which counts the instructions the process executes: the interpreter's, NumPy's, pandas' and the
dicts' and sets' C code alike. A count does not move with the machine's load (times on a shared
machine move by 20-50% between runs of the same thing), so it compares two versions of the
code, or the two runs, in one go; unlike ``bench_bytecodes.py`` it includes the work done in C.
What it leaves out is the time the memory system adds: ``--cache-sim`` also counts first-level
instruction and data cache misses (Cachegrind's model of a 32 KB, 8-way, 64-byte-line cache
for each), a run's larger working set showing as more of them.

A run's count is that of its process less that of a baseline process which makes the same
imports and warm-up runs (50 requests, cache off and on: lazy imports, compiled regexes) and
stops there. Every process runs with ``PYTHONHASHSEED=0`` and one BLAS thread, so that the
counts repeat to about one part in 1,000 (three runs on 100 requests; addresses still differ).
They do move a little with the CPU (NumPy and the C library pick their routines by it).
Needs ``valgrind`` on the PATH (Debian: ``apt-get install valgrind``). Processes run in parallel
(``--jobs``, default 2).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.bench_speed import (MOONCAKE_CONV, mooncake_config,  # noqa: E402
                                     mooncake_warm_up)
from traces.errors import UserError  # noqa: E402

# Cachegrind's summary lines: "==123== I   refs:      19,965,579,148" (Valgrind 3.21 and
# before; "I refs:" from 3.22 on), and with the cache model "I1  misses:" and
# "D1  misses:  230,101,358  (207,089,130 rd + ...)".
_COUNTS = {"instructions": r"I\s+refs", "i1_misses": r"I1\s+misses", "d1_misses": r"D1\s+misses"}


class MeasureError(Exception):
    """A measured process failed, or left no count."""


def parse_cachegrind_log(text: str) -> dict[str, int]:
    """The counts in a Cachegrind log: ``instructions`` always, the first-level misses where
    the cache model ran. Raises MeasureError when the log has no instruction count."""
    counts = {}
    for key, label in _COUNTS.items():
        m = re.search(rf"^==\d+== {label}:\s+([\d,]+)", text, re.MULTILINE)
        if m:
            counts[key] = int(m.group(1).replace(",", ""))
    if "instructions" not in counts:
        raise MeasureError("no instruction count in Cachegrind's log")
    return counts


def child(policy: str, caching: str, requests: int | None) -> None:
    """The measured process: imports, warm-up runs, then (unless ``caching`` is "baseline")
    the benchmark's run."""
    from simulator.runner import simulate
    mooncake_warm_up(policy)
    if caching != "baseline":
        simulate(mooncake_config(policy, caching == "on", requests))


def measure(policy: str, caching: str, requests: int | None, cache_sim: bool,
            folder: Path, running: list[subprocess.Popen]) -> dict[str, int]:
    """One process under Cachegrind (added to ``running`` while it runs): its counts."""
    log = folder / f"{caching}.log"
    cmd = ["valgrind", "--tool=cachegrind", f"--cache-sim={'yes' if cache_sim else 'no'}",
           "--I1=32768,8,64", "--D1=32768,8,64", f"--log-file={log}",
           f"--cachegrind-out-file={folder / (caching + '.out')}",
           sys.executable, __file__, "--child", caching, "--policy", policy]
    if requests is not None:
        cmd += ["--requests", str(requests)]
    # One BLAS thread: OpenBLAS's idle worker threads spin, and Cachegrind counts every
    # thread's instructions (tens of millions, differing from run to run).
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    with open(folder / f"{caching}.stderr", "w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        running.append(proc)
        status = proc.wait()
        err.seek(0)
        last = err.read().strip().splitlines()[-1:]
    text = log.read_text() if log.is_file() else ""
    if status != 0:
        said = last or [line for line in text.splitlines() if line.strip("= 0123456789")][-1:]
        raise MeasureError(f"the {caching} run failed under valgrind (status {status})"
                           + (f": {said[0]}" if said else ""))
    try:
        return parse_cachegrind_log(text)
    except MeasureError as e:
        raise MeasureError(f"the {caching} run: {e}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, help="the trace's first N requests (default: all)")
    ap.add_argument("--policy", default="vllm-v1")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also count first-level cache misses (about twice as slow)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at once (default 2)")
    ap.add_argument("--child", choices=("baseline", "off", "on"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        ap.error(f"--requests must be at least 1, got {args.requests}")
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.child:
        child(args.policy, args.child, args.requests)
        return 0
    if shutil.which("valgrind") is None:
        print("error: valgrind is not on the PATH (Debian: apt-get install valgrind)",
              file=sys.stderr)
        return 2
    if not MOONCAKE_CONV.is_file():
        print(f"error: the Mooncake trace {MOONCAKE_CONV} is not there", file=sys.stderr)
        return 2
    try:                 # (a bad policy is refused here, not by three processes under valgrind)
        mooncake_config(args.policy, True, args.requests)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    running: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        runs = {c: pool.submit(measure, args.policy, c, args.requests, args.cache_sim, Path(tmp),
                               running) for c in ("baseline", "off", "on")}
        try:
            counts = {c: f.result() for c, f in runs.items()}
        except (MeasureError, OSError) as e:
            # The others are not waited for: queued ones never start, running ones are killed.
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in running:
                proc.kill()
            print(f"error: {e}", file=sys.stderr)
            return 1
    base = counts["baseline"]
    own = {c: {k: v - base[k] for k, v in counts[c].items()} for c in ("off", "on")}
    if min(own["off"]["instructions"], own["on"]["instructions"]) <= 0:
        print(f"error: {args.requests} requests take no more instructions than the baseline's "
              f"warm-up: give more --requests", file=sys.stderr)
        return 2
    print(f"Cachegrind, {args.policy}, {args.requests or 'all'} requests "
          f"(each run's process less the baseline's, {base['instructions']:,} instructions)")
    print(f"{'':<14} {'off':>16} {'on':>16} {'on / off':>9}")
    for key in _COUNTS:
        if key in own["off"]:
            off, on = own["off"][key], own["on"][key]
            print(f"{key:<14} {off:>16,} {on:>16,} "
                  f"{on / off if off > 0 else float('nan'):>9.3f}")
    ratio = own["on"]["instructions"] / own["off"]["instructions"]
    print(f"requests per instruction, on against off: {1 / ratio - 1:+.1%}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
