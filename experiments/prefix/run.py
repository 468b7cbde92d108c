"""Prefix caching: the Mooncake conversation trace with the cache off and on, and multi-turn
sessions of growing length (docs/prefix-caching.md).

    python -m experiments.prefix.run [--quick] [--trace PATH]

Writes experiments/prefix/results/{mooncake,sessions}.csv, their figures mooncake.png and
sessions.png, and results.md (every number in it comes from these runs). Setting: llama-3.1-8b
on an h100-80gb, roofline cost, vllm-v1, block 16. ``expected_hit_rate`` is the closed form of
the hit rate (traces/prefix_reuse.py: every earlier request cached, nothing evicted), the
fluid policies' ``WorkloadHint.hit_rate``.
- mooncake: the trace (12,031 requests; --quick: its first 1,200) scaled to MOONCAKE_RATE
  req/s (``target_rate``, below the replica's throughput without the cache), cache off and on
  with the GPU's KV capacity, and on with room for every block (10^9 tokens: nothing evicted);
- sessions: 480 requests (--quick: 160) in sessions of 1, 2, 4 and 8 turns (prompts and
  answers 64:512 tokens per message), sessions arriving at 2 turns' worth of requests per
  second divided by the turns, mean think time 2 s, cache on and off (1 turn: nothing is
  shared);
- sessions under load: sessions of 2, 4 and 8 turns, as above, arriving at LOADS requests per
  second offered (sessions per second times turns), 1,920 requests (--quick: 160), cache on
  and off. Closed loop, a session's next turn waits for its previous answer, so the requests
  served per second stay below the offered rate once the sessions' own pace limits them.
Writes sessions_load.csv and sessions_load.png too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from experiments.prefix.figures import (mooncake_figure, sessions_figure,  # noqa: E402
                                        sessions_load_figure)
from simulator.config import RunConfig  # noqa: E402
from simulator.report.figures import save  # noqa: E402
from simulator.runner import build_workload, simulate  # noqa: E402
from traces.prefix_reuse import repeated_prefix_fraction  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MOONCAKE = ROOT.parent / "shared" / "traces" / "conversation_trace.jsonl"
REPLICA = dict(model="llama-3.1-8b", gpu="h100-80gb", policy="vllm-v1", timeline=False)
MOONCAKE_RATE = 0.8      # the trace's own 3.4 req/s overloads one replica
# Offered loads of the sessions-under-load sweep (requests per second): from a replica mostly
# idle to one whose prefill queue builds up without the cache (1-turn requests of this size
# saturate it at about 30 requests per second).
LOADS = (2.0, 8.0, 16.0, 32.0)
KEYS = ("prefix_cache_hit_rate", "expected_hit_rate", "mean_ttft_ms", "p90_ttft_ms", "mean_e2el_ms",
        "request_throughput", "output_throughput", "preemptions", "completed")


def row(label: dict, cfg: RunConfig) -> dict:
    """The run's summary keys, with the cache on the closed-form hit rate of its workload."""
    workload = build_workload(cfg)
    summary = simulate(cfg, workload).summary
    if cfg.prefix_caching:
        summary["expected_hit_rate"] = repeated_prefix_fraction(workload.requests(),
                                                                cfg.block_size)
    return {**label, **{k: summary.get(k) for k in KEYS}}


def mooncake(trace: Path, quick: bool) -> pd.DataFrame:
    rows = []
    # The GPU's KV capacity, off and on; then room for every block (nothing evicted): the hit
    # rate the trace's hash_ids allow, as tests/test_prefix_cache.py computes it in closed form.
    for caching, kv in ((False, None), (True, None), (True, 10**9)):
        cfg = RunConfig(trace=str(trace), num_requests=1_200 if quick else None,
                        target_rate=MOONCAKE_RATE, prefix_caching=caching, kv_capacity=kv,
                        **REPLICA).validate()
        rows.append(row({"prefix_caching": caching, "kv_capacity": kv or "gpu"}, cfg))
    return pd.DataFrame(rows)


def session_config(requests: int, turns: int, load: float, caching: bool) -> RunConfig:
    """The session workload of both sweeps: ``turns``-turn closed-loop sessions (prompts and
    answers 64:512 tokens per message, mean think time 2 s) offered at ``load`` requests per
    second (sessions per second times turns)."""
    return RunConfig(num_requests=requests, session_turns=turns, think_time=2.0,
                     rate=load / turns, prompt_len="64:512", output_len="64:512",
                     prefix_caching=caching, **REPLICA).validate()


def sessions(quick: bool) -> pd.DataFrame:
    n = 160 if quick else 480
    rows = []
    for caching in (True, False):
        for turns in (1, 2, 4, 8):
            rows.append(row({"prefix_caching": caching, "turns": turns},
                            session_config(n, turns, 2.0, caching)))
    return pd.DataFrame(rows)


def sessions_under_load(quick: bool) -> pd.DataFrame:
    n = 160 if quick else 1_920
    rows = []
    for caching in (True, False):
        for turns in (2, 4, 8):
            for load in LOADS:
                rows.append(row({"prefix_caching": caching, "turns": turns,
                                 "request_rate": load}, session_config(n, turns, load, caching)))
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return "-" if v is None or (isinstance(v, float) and v != v) else \
            f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |"
              for r in frame.astype(object).itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    ap.add_argument("--trace", type=Path, default=MOONCAKE, help="the Mooncake trace")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help=f"folder for the tables, figures and results.md (default: {RESULTS}, "
                         f"the committed results)")
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    if args.trace.is_file():
        m = mooncake(args.trace, args.quick)
        m.to_csv(out / "mooncake.csv", index=False)
        title = f"Mooncake conversation trace, {MOONCAKE_RATE} req/s" + \
            (" (first 1,200 requests)" if args.quick else "")
        save(mooncake_figure(m, title), out / "mooncake.png")
        parts.append((title, m, "mooncake.png"))
    else:
        print(f"skipping mooncake: {args.trace} not found", file=sys.stderr)
    s = sessions(args.quick)
    s.to_csv(out / "sessions.csv", index=False)
    title = "Multi-turn sessions, closed loop, think time 2 s"
    save(sessions_figure(s, title), out / "sessions.png")
    parts.append((title, s, "sessions.png"))
    s = sessions_under_load(args.quick)
    s.to_csv(out / "sessions_load.csv", index=False)
    title = "Multi-turn sessions against offered load, closed loop, think time 2 s"
    save(sessions_load_figure(s, title), out / "sessions_load.png")
    parts.append((title, s, "sessions_load.png"))
    text = "# Prefix caching results\n\nWritten by `python -m experiments.prefix.run" + \
        (" --quick" if args.quick else "") + "`.\n"
    for title, frame, figure in parts:
        text += f"\n## {title}\n\n" + markdown(frame) + f"\n\n![{title}]({figure})\n"
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
