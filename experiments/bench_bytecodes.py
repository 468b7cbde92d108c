"""The prefix cache's cost as a count: bytecodes the interpreter runs, cache off and on.

    python experiments/bench_bytecodes.py                  # the whole Mooncake trace (minutes)
    python experiments/bench_bytecodes.py --requests 3000 --policy sarathi --top 40

The Mooncake benchmark of experiments/bench_speed.py (``mooncake-prefix``, ``mooncake_config``:
the conversation trace at MOONCAKE_RATE on llama-3.1-8b / h100-80gb) run twice in this process,
prefix caching off then on, with every bytecode counted per function (``sys.settrace`` with
opcode events). A count does not move with the machine's load, as times on a shared machine do
by 20-40% between runs, so two versions of the code compare in one run each: the ratio on / off
is the cache model's cost in interpreted work (it leaves out time in C: NumPy, dicts, sets; and
cache misses).
Prints the totals, their ratio, and the functions whose counts differ most.
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.bench_speed import (MOONCAKE_CONV, mooncake_config,  # noqa: E402
                                     mooncake_warm_up)
from simulator.runner import simulate  # noqa: E402
from traces.errors import UserError  # noqa: E402


def count_bytecodes(run: Callable[[], object]) -> collections.Counter:
    """Bytecodes executed by ``run()``, per function (``file:line:name``)."""
    counts: collections.Counter = collections.Counter()
    names: dict = {}

    def on_call(frame, event, arg):
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = names.get(code)
        if key is None:
            key = names[code] = f"{Path(code.co_filename).name}:{code.co_firstlineno}:" \
                                f"{code.co_name}"

        def on_opcode(frame, event, arg):
            if event == "opcode":
                counts[key] += 1
            return on_opcode
        return on_opcode

    # The collector paused: a collection runs the callbacks other libraries put in gc.callbacks
    # (Hypothesis has one), whose bytecodes would be counted as often as collections happen.
    # (A run's garbage is all freed by reference counting or after it: its peak memory is the
    # same.) The callbacks are set aside too, for the collections the simulator asks for
    # itself (simulator/prefix_cache.py, laid_out).
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    callbacks = gc.callbacks[:]
    gc.callbacks.clear()
    sys.settrace(on_call)
    try:
        run()
    finally:
        sys.settrace(None)
        gc.callbacks[:] = callbacks
        if enabled:
            gc.enable()
    return counts


def mooncake_counts(requests: int | None, policy: str) -> dict[str, collections.Counter]:
    """Per-function bytecode counts of the Mooncake benchmark, prefix caching off and on."""
    if not MOONCAKE_CONV.is_file():
        raise SystemExit(f"error: the Mooncake trace {MOONCAKE_CONV} is not there")
    mooncake_warm_up(policy)
    return {"on" if caching else "off":
            count_bytecodes(lambda: simulate(mooncake_config(policy, caching, requests)))
            for caching in (False, True)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, help="the trace's first N requests (default: all)")
    ap.add_argument("--policy", default="vllm-v1")
    ap.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    args = ap.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        ap.error(f"--requests must be at least 1, got {args.requests}")
    try:
        counts = mooncake_counts(args.requests, args.policy)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    off, on = counts["off"], counts["on"]
    total_off, total_on = sum(off.values()), sum(on.values())
    print(f"bytecodes, {args.policy}, {args.requests or 'all'} requests: cache off "
          f"{total_off:,}, on {total_on:,}, on / off {total_on / total_off:.3f}")
    print(f"{'on - off':>12} {'off':>12} {'on':>12}  function")
    for key in sorted(off.keys() | on.keys(), key=lambda k: on[k] - off[k],
                      reverse=True)[:args.top]:
        print(f"{on[key] - off[key]:>12,} {off[key]:>12,} {on[key]:>12,}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
