"""Replicas needed to serve the Azure conversation trace at 1x-4x its rate under an SLO.

    python experiments/cluster_replicas.py --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv
    python experiments/cluster_replicas.py --quick      # 1x and 2x, 1,000 requests

For each speed-up of the trace's own arrivals (its recorded times replayed k times faster),
each router and each batching policy, ``servesim capacity --search replicas`` finds the smallest
number of llama-2-7b / a100-80gb replicas (roofline cost) whose SLO attainment is at least 90%
with stable latency. Prompts are cut to the 4,096-token context (truncate). Writes
experiments/results/cluster_replicas.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.bench_speed import AZURE_CONV  # noqa: E402
from simulator.config import build_config  # noqa: E402
from simulator.sweep.capacity import replica_search  # noqa: E402

ROUTERS = ("round-robin", "power-of-d", "least-outstanding")
POLICIES = ("vllm-v1", "sarathi")
SPEEDUPS = (1, 2, 3, 4)
SLO = {"ttft_ms": 1000.0, "tpot_ms": 100.0}
ATTAINMENT = 0.9
# What the tables and the plot read from the CSV (it also records requests and seeds).
COLUMNS = ("speedup", "policy", "router", "replicas", "attainment", "attainment_one_fewer")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=AZURE_CONV)
    ap.add_argument("--requests", type=int, default=4000, help="the trace's first N requests")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--tables-only", action="store_true",
                    help="rewrite the Markdown and the plot from the CSV already in --out")
    args = ap.parse_args(argv)
    name = "cluster_replicas_quick" if args.quick else "cluster_replicas"
    if args.tables_only:
        import pandas as pd
        csv = args.out / f"{name}.csv"
        if not csv.is_file():
            print(f"cluster_replicas: {csv} not found (run without --tables-only first)",
                  file=sys.stderr)
            return 2
        table = pd.read_csv(csv)
        missing = [c for c in COLUMNS if c not in table]
        if missing:
            print(f"cluster_replicas: {csv} lacks the column(s) {', '.join(missing)}",
                  file=sys.stderr)
            return 2
        # The run's size is in its CSV; the flags stand in for a CSV written without it.
        n = int(table.requests.iloc[0]) if "requests" in table else (
            1000 if args.quick else args.requests)
        seeds = int(table.seeds.iloc[0]) if "seeds" in table else args.seeds
        write_markdown(table, args.out / f"{name}.md", n, seeds, trace_line(args.trace, n))
        plot(table, args.out / f"{name}.png")
        return 0
    if not args.trace.is_file():
        print(f"cluster_replicas: {args.trace} not found (give --trace)", file=sys.stderr)
        return 2
    speedups = SPEEDUPS[:2] if args.quick else SPEEDUPS
    n = 1000 if args.quick else args.requests
    rows = []
    for k in speedups:
        for policy in POLICIES:
            for router in ROUTERS:
                cfg = build_config({"trace": str(args.trace), "truncate": True,
                                    "num_requests": n, "speedup": float(k), "policy": policy,
                                    "router": router, "replicas": 64, "slo": SLO,
                                    "timeline": False})
                r = replica_search(cfg, criterion="slo", attainment=ATTAINMENT,
                                   seeds=args.seeds, max_replicas=64, workers=args.workers)
                rows.append({"speedup": k, "policy": policy, "router": router,
                             "replicas": r.replicas,
                             "attainment": r.high.attainment if r.high else None,
                             "attainment_one_fewer": r.low.attainment if r.low else None,
                             "requests": n, "seeds": args.seeds})
                print(rows[-1], flush=True)
    import pandas as pd
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"{name}.csv", index=False)
    write_markdown(table, args.out / f"{name}.md", n, args.seeds, trace_line(args.trace, n))
    plot(table, args.out / f"{name}.png")
    return 0


def trace_line(trace: Path, n: int) -> str | None:
    """What the trace's first ``n`` requests offer at 1x (rate and lengths, by
    ``servesim trace stats``' definitions); None when the trace file is not there."""
    if not trace.is_file():
        return None
    from traces.loaders import read_trace
    from traces.stats import trace_stats
    from traces.workload import Workload
    w = read_trace(trace)
    s = trace_stats(Workload(w.frame.head(n).reset_index(drop=True), w.meta))
    return (f"At 1x these {s['requests']:,} requests span {s['span_s'] / 60:.1f} minutes at "
            f"{s['mean_rate']:.2f} req/s on average (busiest minute "
            f"{s['peak_minute_rate']:.2f} req/s), prompts {s['prompt_tokens']['mean']:,.0f} "
            f"and outputs {s['output_tokens']['mean']:,.0f} tokens on average (before the "
            f"4,096-token cut).")


def write_markdown(table, path: Path, n: int, seeds: int, about: str | None = None) -> None:
    """The replica counts, and the attainment at that count and at one fewer, as tables."""
    combos = [(p, r) for p in POLICIES for r in ROUTERS]
    head = ["| speed-up | " + " | ".join(f"{p} / {r}" for p, r in combos) + " |",
            "|---:|" + "---:|" * len(combos)]

    def cells(k, show):
        out = []
        for p, r in combos:
            row = table[(table.speedup == k) & (table.policy == p) & (table.router == r)]
            out.append(show(row.iloc[0]) if len(row) else "-")
        return f"| {k}x | " + " | ".join(out) + " |"

    def count(row):
        return "> 64" if row.replicas != row.replicas else str(int(row.replicas))

    def attainment(row):
        low = row.attainment_one_fewer
        found = "-" if row.attainment != row.attainment else f"{row.attainment:.3f}"
        return found + ("" if low != low else f" ({low:.3f})")

    speedups = sorted(table.speedup.unique())
    text = [f"# Replicas for the Azure conversation trace (first {n:,} requests)", "",
            f"Smallest replica count with SLO attainment >= {ATTAINMENT:g} (TTFT <= "
            f"{SLO['ttft_ms']:g} ms, TPOT <= {SLO['tpot_ms']:g} ms) and stable latency, "
            f"{seeds} seeds pooled; llama-2-7b / a100-80gb, roofline; the trace's own arrival "
            f"times replayed k times faster. Generated by experiments/cluster_replicas.py.", "",
            *([about, ""] if about else []),
            *head, *(cells(k, count) for k in speedups), "",
            "SLO attainment at that count (in brackets: with one replica fewer):", "",
            *head, *(cells(k, attainment) for k in speedups), ""]
    path.write_text("\n".join(text))
    print("\n".join(text))


# One colour per policy, one marker and line style per router. The speed-ups are few and
# discrete, so each combination is drawn a little beside its tick (DODGE of the axis' span
# apart) where equal counts would otherwise hide each other.
ROUTER_STYLE = {"round-robin": ("o", "-"), "power-of-d": ("s", "--"),
                "least-outstanding": ("^", ":")}
DODGE = 0.02


def plot(table, path: Path):
    """Left: replicas needed against the speed-up, one line per policy / router, with the 1x
    count scaled linearly (k times the fewest replicas at 1x) as a dashed reference; a search
    that found no count within its limit leaves a gap. Right: the SLO attainment with one
    replica fewer than that count, against the target."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from simulator.report.figures import STYLE, save

    speedups = sorted(table.speedup.unique())
    combos = [(p, r) for p in POLICIES for r in ROUTERS]
    step = DODGE * ((max(speedups) - min(speedups)) or 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(12, 4.4), layout="constrained")
        count, fewer = fig.subplots(1, 2)
        for i, (policy, router) in enumerate(combos):
            rows = table[(table.policy == policy) & (table.router == router)]
            if not len(rows):
                continue
            rows = rows.sort_values("speedup")
            x = rows.speedup + step * (i - (len(combos) - 1) / 2)
            marker, style = ROUTER_STYLE[router]
            look = {"color": f"C{POLICIES.index(policy)}", "marker": marker,
                    "linestyle": style, "markersize": 6, "label": f"{policy} / {router}"}
            count.plot(x, rows.replicas, **look)
            fewer.plot(x, rows.attainment_one_fewer, **look)
        at_1x = table[table.speedup == min(speedups)].replicas.min()
        if at_1x == at_1x:
            count.plot(speedups, [at_1x * k / min(speedups) for k in speedups], color="grey",
                       linestyle="--", linewidth=1, label="1x count x speed-up")
        fewer.axhline(ATTAINMENT, color="grey", linestyle="--", linewidth=1,
                      label=f"target {ATTAINMENT:g}")
        for ax in (count, fewer):
            ax.set_xticks(speedups, [f"{k:g}x" for k in speedups])
            ax.set_xlabel("speed-up of the trace's arrival times")
        count.yaxis.set_major_locator(MaxNLocator(integer=True))
        count.set_ylim(bottom=0)
        count.set_ylabel("replicas needed")
        count.set_title(f"Smallest cluster with SLO attainment >= {ATTAINMENT:g}")
        fewer.set_ylim(0, 1.02)
        fewer.set_ylabel("SLO attainment with one replica fewer")
        fewer.set_title("How far one replica fewer falls short")
        count.legend(fontsize=8)
        fewer.legend(fontsize=8, loc="best")
        fig.suptitle(f"Azure conversation trace (TTFT <= {SLO['ttft_ms']:g} ms, TPOT <= "
                     f"{SLO['tpot_ms']:g} ms); llama-2-7b on a100-80gb, roofline")
        save(fig, path)
    return fig


if __name__ == "__main__":
    sys.exit(main())
