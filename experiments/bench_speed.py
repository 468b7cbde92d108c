"""Simulator speed: wall time and simulated requests per wall-second.

    python experiments/bench_speed.py            # every benchmark
    python experiments/bench_speed.py --quick    # a tenth of the requests (a smoke test)
    python experiments/bench_speed.py --only azure-conv --only p512d20
    python experiments/bench_speed.py --stepwise  # the step-by-step reference engine

Each benchmark is a named function in ``BENCHMARKS`` that returns rows (one per simulated run);
later work adds its own (a cluster, vLLM in the loop...) by appending to that list. Timings are
of ``simulator.runner.simulate`` as the CLI calls it (workload generation, the SimPy run with the
iteration timeline, and the per-request table and summary), in one Python process: one core.
The machine's load inflates them; report it next to any figure. The ``process`` benchmark times
whole ``servesim run`` processes instead (interpreter start, imports, output files): the figures
the speed targets are stated in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.config import RunConfig  # noqa: E402
from simulator.runner import simulate  # noqa: E402
from traces import EmpiricalLengths, Poisson, synthesize  # noqa: E402
from traces.loaders import read_trace  # noqa: E402

BASELINES = ("vllm", "vllm-v1", "sarathi", "orca", "static", "sjf")
AZURE_CONV = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_CONV = ROOT.parent / "shared" / "traces" / "conversation_trace.jsonl"


@dataclass
class Row:
    benchmark: str
    policy: str
    requests: int
    completed: int
    preemptions: int
    simulated_s: float
    iterations: int
    wall_s: float
    cpu_s: float       # this process's CPU time: less inflated than wall time on a shared machine
    max_rss_mb: float | None = None    # the ``process`` benchmark: the run's peak memory

    @property
    def requests_per_wall_s(self) -> float:
        return self.requests / self.wall_s


STEPWISE = False      # --stepwise: every run on the step-by-step reference engine


def timed_run(benchmark: str, cfg: RunConfig, workload=None) -> Row:
    if STEPWISE:
        cfg = dataclasses.replace(cfg, stepwise=True).validate()
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate(cfg, workload)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = result.summary
    return Row(benchmark, cfg.policy, s["workload"]["requests"], s["completed"],
               s["preemptions"], s["duration_s"], s["iterations"], wall, cpu)


def p512d20(quick: bool) -> list[Row]:
    """10,000 requests, prompt 512 / output 20, Poisson 22 req/s, llama-2-7b on a100-80gb
    (roofline cost, KV capacity from GPU memory), for every baseline policy."""
    n = 1_000 if quick else 10_000
    return [timed_run("p512d20", RunConfig(policy=policy, rate=22.0, num_requests=n,
                                           prompt_len="512", output_len="20").validate())
            for policy in BASELINES]


# Poisson rate for the Azure-conv-like workload: about 80% of vllm-v1's saturation throughput
# on llama-2-7b / a100-80gb (roofline: about 4.95 req/s), so the replica stays busy with a
# stable queue (mean latency does not grow with the horizon at 4.0; it does at 5.0).
AZURE_CONV_RATE = 4.0


def azure_conv(quick: bool) -> list[Row]:
    """20,000 requests with (prompt, output) pairs sampled from the Azure LLM inference trace
    (conversation, 2023), those that fit llama-2-7b's 4,096-token context; Poisson arrivals at
    AZURE_CONV_RATE req/s; vllm-v1 and sarathi."""
    if not AZURE_CONV.is_file():
        print(f"skipping azure-conv: {AZURE_CONV} not found", file=sys.stderr)
        return []
    trace = read_trace(AZURE_CONV).frame
    trace = trace[trace.prompt_tokens + trace.output_tokens <= 4096]
    lengths = EmpiricalLengths(trace.prompt_tokens.to_numpy(), trace.output_tokens.to_numpy(),
                               source=AZURE_CONV.name)
    n = 2_000 if quick else 20_000
    workload = synthesize(Poisson(AZURE_CONV_RATE), lengths, seed=0, num_requests=n)
    rows = []
    for policy in ("vllm-v1", "sarathi"):
        cfg = RunConfig(policy=policy, rate=AZURE_CONV_RATE, num_requests=n).validate()
        rows.append(timed_run("azure-conv", cfg, workload))
    return rows


def trace_replay(quick: bool) -> list[Row]:
    """The Azure conversation trace itself replayed (``servesim run --trace ... --truncate``):
    all 19,366 requests at their recorded times (5.5 req/s, above vllm-v1's saturation, so the
    queue grows), prompts cut to the 4,096-token context; loading and truncation included;
    vllm-v1 and sarathi. Trace loading speed and memory: experiments/bench_traces.py."""
    if not AZURE_CONV.is_file():
        print(f"skipping trace-replay: {AZURE_CONV} not found", file=sys.stderr)
        return []
    n = 2_000 if quick else None
    return [timed_run("trace-replay", RunConfig(policy=policy, trace=str(AZURE_CONV),
                                                truncate=True, num_requests=n).validate())
            for policy in ("vllm-v1", "sarathi")]


# Mean rate for the Mooncake conversation trace on one llama-3.1-8b / h100-80gb replica: the
# trace's own 3.4 req/s overloads it, so the benchmark times a busy replica, not a queue that
# grows without bound.
MOONCAKE_RATE = 1.5


def mooncake_config(policy: str, caching: bool, requests: int | None = None) -> RunConfig:
    """The ``mooncake-prefix`` benchmark's run: the trace's first ``requests`` (None: all)."""
    return RunConfig(trace=str(MOONCAKE_CONV), num_requests=requests, policy=policy,
                     target_rate=MOONCAKE_RATE, model="llama-3.1-8b", gpu="h100-80gb",
                     prefix_caching=caching).validate()


def mooncake_warm_up(policy: str) -> None:
    """Two short runs of the ``mooncake-prefix`` benchmark (50 requests, cache off and on) that
    fill what first calls fill (lazy imports, compiled regexes): a run counted after them
    counts its own work (experiments/bench_bytecodes.py, bench_instructions.py)."""
    for caching in (False, True):
        simulate(mooncake_config(policy, caching, 50))


def mooncake_prefix(quick: bool) -> list[Row]:
    """The cost of the prefix-cache model (docs/prefix-caching.md): the Mooncake conversation
    trace (12,031 requests, about 12k prompt tokens each, hash_ids) replayed at MOONCAKE_RATE
    req/s on llama-3.1-8b / h100-80gb under vllm-v1 and sarathi, with prefix caching off and
    on (rows ``mooncake`` and ``mooncake-apc``)."""
    if not MOONCAKE_CONV.is_file():
        print(f"skipping mooncake-prefix: {MOONCAKE_CONV} not found", file=sys.stderr)
        return []
    n = 1_200 if quick else None
    rows = []
    for policy in ("vllm-v1", "sarathi"):
        for caching in (False, True):
            rows.append(timed_run("mooncake-apc" if caching else "mooncake",
                                  mooncake_config(policy, caching, n)))
    return rows


def process_run(benchmark: str, policy: str, args: list[str]) -> Row:
    """One whole ``servesim run`` process (``python -m simulator``): its wall time, its own CPU
    time and peak memory (os.wait4), and its summary."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "simulator", "run", "-q", "--policy", policy, "--out", out,
               *args] + (["--stepwise"] if STEPWISE else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"{' '.join(cmd)} failed with status {status}")
        s = json.loads((Path(out) / "summary.json").read_text())
    return Row(benchmark, policy, s["workload"]["requests"], s["completed"], s["preemptions"],
               s["duration_s"], s["iterations"], wall, usage.ru_utime + usage.ru_stime,
               usage.ru_maxrss / 1024)


def whole_process(quick: bool) -> list[Row]:
    """The speed targets' runs as a user runs them, whole processes: p512d20 with 100,000
    requests (``p512d20-100k``, vllm-v1), and the Azure conversation trace replayed
    (``replay-process``, vllm-v1 and sarathi; as ``trace-replay``)."""
    n = 10_000 if quick else 100_000
    rows = [process_run("p512d20-100k", "vllm-v1", ["--rate", "22", "-n", str(n),
                                                    "--prompt-len", "512", "--output-len", "20"])]
    if AZURE_CONV.is_file():
        extra = ["-n", "2000"] if quick else []
        rows += [process_run("replay-process", policy,
                             ["--trace", str(AZURE_CONV), "--truncate", *extra])
                 for policy in ("vllm-v1", "sarathi")]
    return rows


BENCHMARKS: list[tuple[str, Callable[[bool], list[Row]]]] = [
    ("p512d20", p512d20),
    ("azure-conv", azure_conv),
    ("trace-replay", trace_replay),
    ("mooncake-prefix", mooncake_prefix),
    ("process", whole_process),
]


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {cpus} CPUs, load average "
            f"{load:.1f} at start, Python {platform.python_version()}")


def main(argv=None) -> int:
    names = [name for name, _ in BENCHMARKS]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=names, help="run only this benchmark")
    ap.add_argument("--quick", action="store_true", help="a tenth of the requests")
    ap.add_argument("--cpu", type=int, help="pin the process to this CPU (Linux)")
    ap.add_argument("--stepwise", action="store_true",
                    help="run the step-by-step reference engine (RunConfig.stepwise)")
    args = ap.parse_args(argv)
    global STEPWISE
    STEPWISE = args.stepwise
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    print(f"machine: {machine()}")
    print(f"{'benchmark':<14} {'policy':<9} {'requests':>9} {'completed':>9} {'preempt':>8} "
          f"{'sim s':>9} {'iters':>8} {'wall s':>8} {'req/wall-s':>11} {'cpu s':>7} {'MB':>5}")
    for name, bench in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        for r in bench(args.quick):
            print(f"{r.benchmark:<14} {r.policy:<9} {r.requests:>9,} {r.completed:>9,} "
                  f"{r.preemptions:>8,} {r.simulated_s:>9.1f} {r.iterations:>8,} "
                  f"{r.wall_s:>8.2f} {r.requests_per_wall_s:>11,.0f} {r.cpu_s:>7.2f} "
                  f"{'' if r.max_rss_mb is None else f'{r.max_rss_mb:.0f}':>5}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
