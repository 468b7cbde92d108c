"""Cluster speed: a 16-replica cluster replaying 300,000 requests, wall time and memory.

    python experiments/bench_cluster.py                    # 300,000 requests, then a quarter
    python experiments/bench_cluster.py --quick            # 30,000 (a smoke test)
    python experiments/bench_cluster.py --router power-of-d --requests 100000

The workload is experiments/bench_speed.py's azure-conv one scaled to the cluster: (prompt,
output) pairs sampled from the Azure LLM inference trace (conversation, 2023), those that fit
llama-2-7b's 4,096-token context, Poisson arrivals at 16 times azure-conv's 4.0 req/s, so each
of the 16 replicas (llama-2-7b on a100-80gb, roofline, vllm-v1) runs at about 80% of its
saturation throughput. Timed: ``simulate`` as the CLI calls it (the SimPy run with the
per-replica timelines, the per-request table and the summary), workload synthesis apart. Two
sizes (the full one and a quarter of it) show whether the cost per request stays flat: the
simulation must scale linearly in requests. Memory is the process's peak resident set.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.bench_speed import AZURE_CONV, AZURE_CONV_RATE, machine  # noqa: E402
from simulator.config import RunConfig  # noqa: E402
from simulator.runner import simulate  # noqa: E402
from traces import EmpiricalLengths, Poisson, synthesize  # noqa: E402
from traces.loaders import read_trace  # noqa: E402

REPLICAS = 16
REQUESTS = 300_000


def azure_lengths(path: Path) -> EmpiricalLengths:
    trace = read_trace(path).frame
    trace = trace[trace.prompt_tokens + trace.output_tokens <= 4096]
    return EmpiricalLengths(trace.prompt_tokens.to_numpy(), trace.output_tokens.to_numpy(),
                            source=path.name)


def run(requests: int, router: str, replicas: int, trace: Path) -> dict:
    rate = AZURE_CONV_RATE * replicas
    workload = synthesize(Poisson(rate), azure_lengths(trace), seed=0, num_requests=requests)
    cfg = RunConfig(replicas=replicas, router=router, rate=rate,
                    num_requests=requests).validate()
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate(cfg, workload)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = result.summary
    return {"requests": requests, "completed": s["completed"], "iterations": s["iterations"],
            "simulated_s": s["duration_s"], "wall_s": wall, "cpu_s": cpu,
            "cv": s["cluster"]["requests_per_replica_cv"],
            "mean_e2el_ms": s["mean_e2el_ms"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=REQUESTS)
    ap.add_argument("--replicas", type=int, default=REPLICAS)
    ap.add_argument("--router", default="round-robin")
    ap.add_argument("--quick", action="store_true", help="a tenth of the requests")
    ap.add_argument("--trace", type=Path, default=AZURE_CONV,
                    help="the Azure conversation trace (default: %(default)s)")
    args = ap.parse_args(argv)
    if not args.trace.is_file():
        print(f"bench_cluster: {args.trace} not found (give --trace)", file=sys.stderr)
        return 2
    n = args.requests // 10 if args.quick else args.requests
    print(f"machine: {machine()}")
    print(f"{args.replicas} replicas, router {args.router}, Poisson "
          f"{AZURE_CONV_RATE * args.replicas:g} req/s, Azure conversation lengths")
    print(f"{'requests':>9} {'completed':>9} {'iters':>10} {'sim s':>8} {'wall s':>8} "
          f"{'cpu s':>8} {'us/req':>7} {'cv':>6} {'peak RSS MiB':>12}")
    # The quarter first: peak RSS only grows, so the full run's figure is its own.
    for size in (n // 4, n):
        r = run(size, args.router, args.replicas, args.trace)
        print(f"{r['requests']:>9,} {r['completed']:>9,} {r['iterations']:>10,} "
              f"{r['simulated_s']:>8.0f} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
              f"{1e6 * r['cpu_s'] / size:>7.0f} {r['cv']:>6.3f} {r['peak_rss_mib']:>12,.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
