"""Aggregated vs disaggregated serving at equal GPU count (the DistServe question).

    python experiments/disagg.py              # both workloads, the full rate sweep, 2 seeds
    python experiments/disagg.py --quick      # fewer rates and requests, one seed

Four GPUs (llama-3-8b on a100-80gb, roofline cost, vllm-v1 on every replica, least-outstanding
routing) serve the same requests either as 4 aggregated replicas (vllm-v1's chunked prefill
mixes prompts into the decode steps; also sarathi, whose small chunks bound that interference)
or as a prefill pool and a decode pool, 2P+2D, 1P+3D and 3P+1D, the prompt's KV sent over a
200 Gbit/s link per prefill replica. Two workloads with long prompts: the Azure code trace's
lengths (prompts cut to the model's 8,192-token context) and a fixed p2048d128, both with
Poisson arrivals swept over a range of rates. For each point: the share of requests meeting the
TTFT objective, the TPOT objective (the client's TPOT, the KV transfer included) and both (SLO
attainment), and the latency percentiles. Then the link: 3P+1D on p2048d128 at LINK_RATE req/s
with the link's bandwidth swept over LINK_GBPS (where one prompt's KV takes longer to send than
to compute, the transfers queue for the link). Writes
experiments/results/disagg{,_quick}.{csv,md,png} and disagg_link{,_quick}.csv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from simulator.config import build_config  # noqa: E402
from simulator.metrics import SLO  # noqa: E402
from simulator.runner import simulate  # noqa: E402

AZURE_CODE = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_code.csv"
GPUS = 4
CLUSTERS = {                      # name -> the run fields of 4 GPUs
    "aggregated 4": {"replicas": GPUS},
    "aggregated 4, sarathi": {"replicas": GPUS, "policy": "sarathi"},
    "2P+2D": {"prefill_replicas": 2, "decode_replicas": 2},
    "1P+3D": {"prefill_replicas": 1, "decode_replicas": 3},
    "3P+1D": {"prefill_replicas": 3, "decode_replicas": 1},
}
# About twice the unloaded TPOT (14-15 ms a step for these batches), and a TTFT of seven
# unloaded prefills of a 2,048-token prompt (about 150 ms).
SLO_MS = {"ttft_ms": 1000.0, "tpot_ms": 30.0}
LINK_GBPS = (5, 10, 25, 50, 100, 200, 400)
LINK_RATE = 12.0
BASE = {"model": "llama-3-8b", "gpu": "a100-80gb", "cost_model": "roofline",
        "policy": "vllm-v1", "router": "least-outstanding", "timeline": False}


def workloads(trace: Path) -> dict:
    """name -> (run fields, rates swept in requests/s over the 4 GPUs, SLO in ms)."""
    return {
        "azure-code": ({"trace": str(trace), "generate_arrivals": True, "truncate": True},
                       (4, 8, 12, 16, 20, 24, 28, 32), SLO_MS),
        "p2048d128": ({"prompt_len": "2048", "output_len": "128"},
                      (4, 6, 8, 10, 12, 14, 16, 18, 20), SLO_MS),
    }


def point(workload: dict, cluster: dict, rate: float, n: int, seed: int, slo: dict) -> dict:
    """One run: its SLO attainments (TTFT, TPOT, both) and latency percentiles. TPOT here is
    what a client sees, vLLM bench's (latency - TTFT) / (output tokens - 1): on a
    disaggregated run it includes the KV transfer and the wait for the link, which the run's
    own ``tpot_ms`` (measured on the decode side) leaves out."""
    cfg = build_config({**BASE, **workload, **cluster, "rate": rate, "num_requests": n,
                        "seed": seed})
    cpu0 = time.process_time()
    result = simulate(cfg)
    cpu = time.process_time() - cpu0
    req = result.requests
    decode_tpot = req.tpot_ms
    seen = (req.e2el_ms - req.ttft_ms) / (req.output_tokens - 1)
    req = req.assign(tpot_ms=seen.where(req.output_tokens > 1))
    done = req[req.status == "completed"]
    row = {"requests": len(req), "completed": len(done),
           "ttft_attainment": float(SLO(ttft_ms=slo["ttft_ms"]).met(req).mean()),
           "tpot_attainment": float(SLO(tpot_ms=slo["tpot_ms"]).met(req).mean()),
           "slo_attainment": float(SLO(**slo).met(req).mean()),
           "wall_s": result.record.source.wall_s, "cpu_s": cpu}
    for key in ("ttft_ms", "tpot_ms", "e2el_ms"):
        values = done[key].dropna().to_numpy()
        for label, q in (("p50", 50), ("p90", 90), ("p99", 99)):
            row[f"{label}_{key}"] = float(np.percentile(values, q)) if len(values) else None
    row["p90_decode_tpot_ms"] = float(decode_tpot[req.status == "completed"].quantile(0.9))
    if "transfer_s" in req:
        crossed = req[req.decode_replica >= 0]
        row["mean_transfer_ms"] = float(crossed.transfer_s.mean() * 1e3)
        row["mean_link_wait_ms"] = float(crossed.link_wait_s.mean() * 1e3)
    return row


def run(trace: Path, n: int, seeds: int, quick: bool) -> pd.DataFrame:
    rows = []
    for wname, (fields, rates, slo) in workloads(trace).items():
        if quick:
            rates = rates[::2]
        for cname, cluster in CLUSTERS.items():
            for rate in rates:
                for seed in range(seeds):
                    row = {"workload": wname, "cluster": cname, "rate": float(rate),
                           "seed": seed, "slo_ttft_ms": slo["ttft_ms"],
                           "slo_tpot_ms": slo["tpot_ms"],
                           **point(fields, cluster, rate, n, seed, slo)}
                    rows.append(row)
                    print({k: (round(v, 3) if isinstance(v, float) else v)
                           for k, v in row.items() if not k.startswith(("p50", "p99"))},
                          flush=True)
    return pd.DataFrame(rows)


def link_sweep(n: int, seeds: int) -> pd.DataFrame:
    """3P+1D on p2048d128 at LINK_RATE with each link bandwidth of LINK_GBPS."""
    fields, _, slo = workloads(AZURE_CODE)["p2048d128"]
    rows = []
    for gbps in LINK_GBPS:
        for seed in range(seeds):
            rows.append({"kv_link_gbps": float(gbps), "seed": seed, **point(
                fields, {**CLUSTERS["3P+1D"], "kv_link_gbps": float(gbps)}, LINK_RATE, n, seed,
                slo)})
            print({k: rows[-1][k] for k in ("kv_link_gbps", "seed", "slo_attainment",
                                            "mean_transfer_ms", "mean_link_wait_ms")},
                  flush=True)
    return pd.DataFrame(rows)


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """Attainments averaged over seeds (equal request counts: the pooled share)."""
    keys = ["workload", "cluster", "rate"]
    cols = ["ttft_attainment", "tpot_attainment", "slo_attainment", "p90_ttft_ms",
            "p90_tpot_ms"]
    return table.groupby(keys, sort=False)[cols].mean().reset_index()


def capacity(curve: pd.DataFrame, key: str, target: float = 0.9) -> float:
    """The highest swept rate up to which ``key`` stays >= ``target`` (0 if the first fails)."""
    best = 0.0
    for rate, value in zip(curve.rate, curve[key]):
        if value < target:
            break
        best = rate
    return best


def write_markdown(table: pd.DataFrame, path: Path, n: int, seeds: int,
                   links: pd.DataFrame | None = None) -> None:
    means = pooled(table)
    text = ["# Aggregated vs disaggregated serving at 4 GPUs", "",
            f"llama-3-8b on a100-80gb (roofline), vllm-v1 on every replica, least-outstanding "
            f"routing; disaggregated pools send each prompt's KV over a 200 Gbit/s link per "
            f"prefill replica. TPOT as a client sees it, (latency - TTFT) / (output - 1): on the "
            f"disaggregated runs it includes the KV transfer and the wait for the link. "
            f"{n:,} requests per point, Poisson arrivals, {seeds} seed(s) averaged. Generated "
            f"by experiments/disagg.py.", ""]
    for wname in means.workload.unique():
        w = means[means.workload == wname]
        t = table[table.workload == wname].iloc[0]
        text += [f"## {wname}: TTFT <= {t.slo_ttft_ms:g} ms, TPOT <= {t.slo_tpot_ms:g} ms", "",
                 "Highest swept rate (req/s over the 4 GPUs) with attainment >= 90%:", "",
                 "| cluster | TTFT | TPOT | both |", "|---|---:|---:|---:|"]
        for cname in CLUSTERS:
            c = w[w.cluster == cname]
            text.append(f"| {cname} | " + " | ".join(
                f"{capacity(c, k):g}" for k in ("ttft_attainment", "tpot_attainment",
                                                 "slo_attainment")) + " |")
        text += ["", "SLO attainment (both objectives) by rate:", "",
                 "| rate | " + " | ".join(CLUSTERS) + " |",
                 "|---:|" + "---:|" * len(CLUSTERS)]
        for rate in sorted(w.rate.unique()):
            cells = [w[(w.cluster == c) & (w.rate == rate)].slo_attainment for c in CLUSTERS]
            text.append(f"| {rate:g} | " + " | ".join(
                f"{v.iloc[0]:.3f}" if len(v) else "-" for v in cells) + " |")
        text += ["", "p90 TTFT / p90 TPOT (ms) by rate:", "",
                 "| rate | " + " | ".join(CLUSTERS) + " |",
                 "|---:|" + "---:|" * len(CLUSTERS)]
        for rate in sorted(w.rate.unique()):
            cells = []
            for c in CLUSTERS:
                v = w[(w.cluster == c) & (w.rate == rate)]
                cells.append(f"{v.p90_ttft_ms.iloc[0]:,.0f} / {v.p90_tpot_ms.iloc[0]:.1f}"
                             if len(v) else "-")
            text.append(f"| {rate:g} | " + " | ".join(cells) + " |")
        text.append("")
    if links is not None:
        cols = ["slo_attainment", "p90_ttft_ms", "p90_tpot_ms", "p90_e2el_ms",
                "mean_transfer_ms", "mean_link_wait_ms"]
        by = links.groupby("kv_link_gbps")[cols].mean()
        text += [f"## The link: 3P+1D, p2048d128 at {LINK_RATE:g} req/s", "",
                 "| link Gbit/s | attainment (both) | p90 TTFT (ms) | p90 TPOT (ms) | "
                 "p90 E2E (ms) | mean transfer (ms) | mean link wait (ms) |",
                 "|---:|---:|---:|---:|---:|---:|---:|"]
        for gbps, r in by.iterrows():
            text.append(f"| {gbps:g} | {r.slo_attainment:.3f} | {r.p90_ttft_ms:,.0f} | "
                        f"{r.p90_tpot_ms:.1f} | {r.p90_e2el_ms:,.0f} | "
                        f"{r.mean_transfer_ms:,.1f} | {r.mean_link_wait_ms:,.1f} |")
        text.append("")
    path.write_text("\n".join(text))
    print("\n".join(text))


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    means = pooled(table)
    names = list(means.workload.unique())
    keys = (("ttft_attainment", "TTFT attainment"), ("tpot_attainment", "TPOT attainment"),
            ("slo_attainment", "both"))
    fig, axes = plt.subplots(len(names), 3, figsize=(13, 3.6 * len(names)), squeeze=False)
    for i, wname in enumerate(names):
        w = means[means.workload == wname]
        t = table[table.workload == wname].iloc[0]
        for ax, (key, label) in zip(axes[i], keys):
            for cname in CLUSTERS:
                c = w[w.cluster == cname]
                ax.plot(c.rate, c[key], marker="o", label=cname)
            ax.axhline(0.9, color="grey", lw=0.8, ls="--")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("rate (req/s over 4 GPUs)")
            ax.set_title(f"{wname}: {label} (TTFT {t.slo_ttft_ms:g} ms, "
                         f"TPOT {t.slo_tpot_ms:g} ms)", fontsize=9)
        axes[i][0].set_ylabel("SLO attainment")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=AZURE_CODE)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--tables-only", action="store_true",
                    help="rewrite the Markdown and the plot from the CSV already in --out")
    args = ap.parse_args(argv)
    name = "disagg_quick" if args.quick else "disagg"
    n, seeds = (400, 1) if args.quick else (args.requests, args.seeds)
    link_csv = args.out / f"{name.replace('disagg', 'disagg_link')}.csv"
    if args.tables_only:
        table = pd.read_csv(args.out / f"{name}.csv")
        links = pd.read_csv(link_csv) if link_csv.is_file() else None
    else:
        if not args.trace.is_file():
            print(f"disagg: {args.trace} not found (give --trace)", file=sys.stderr)
            return 2
        table = run(args.trace, n, seeds, args.quick)
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / f"{name}.csv", index=False)
        links = link_sweep(n, seeds)
        links.to_csv(link_csv, index=False)
    write_markdown(table, args.out / f"{name}.md", int(table.requests.iloc[0]),
                   int(table.seed.nunique()), links)
    plot(table, args.out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
