"""Parity of the prefix cache: the native engine against vLLM's real scheduler in the loop, both
with prefix caching on, request for request (docs/prefix-caching.md, "vLLM in the loop").

    python -m experiments.prefix.parity_vllm [--quick] [--trace PATH]

For each case both engines run the same workload and policy (vllm-v1, llama-3.1-8b on an
h100-80gb, roofline cost, block 16); the comparison counts the requests whose cached prompt
tokens, arrival, first-token and finish times and preemptions are equal, and the summaries' hit
rates. Every difference is then classified:

- ``same_step_hit`` / ``same_step_eviction``: at its first admission vLLM's hit differs from
  the one looked up before the step, which is the native engine's: a request admitted earlier
  in the same step allocated the blocks (vLLM caches a full block when it allocates it, so a
  later admission hits it; the native engine looks hits up before the step and computes them
  again), or the step's earlier allocations (running requests come first) evicted cached
  blocks from the head of the free queue (the native engine takes the hit before allocating).
  vLLM in the loop records each such admission, first or re-admission
  (``hits_gained_in_step``, ``hits_lost_in_step``).
- ``after_divergence``: the request was still unfinished when the first such admission
  changed a step's cost and KV (every later step can shift).
- ``unexplained``: anything else (none expected).

Cases: ``mooncake`` (the conversation trace's first requests at 0.8 req/s, GPU KV capacity),
``mooncake-serial`` (its first 100 with max_num_seqs 1: a request is admitted only when none
runs, so no allocation precedes it in its step and neither within-step change can arise),
``sessions`` (closed-loop 4-turn sessions, the GPU's KV: nothing evicted) and
``sessions-tight`` (the same on 16,384 tokens of KV: evictions and preemptions). Writes
experiments/prefix/results/parity_vllm.{csv,md}, with each run's CPU and wall seconds (a
shared machine inflates the wall time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from experiments.prefix.run import MOONCAKE, RESULTS, markdown  # noqa: E402
from simulator.config import RunConfig  # noqa: E402
import simulator.vllm  # noqa: E402,F401  (registers the engine "vllm")
from simulator.engines import engine_factory, register_engine  # noqa: E402
from simulator.runner import simulate  # noqa: E402
from simulator.vllm.loop import loop_engine  # noqa: E402

REPLICA = dict(model="llama-3.1-8b", gpu="h100-80gb", policy="vllm-v1", timeline=False,
               prefix_caching=True)
COMPARED = ("cached_prompt_tokens", "arrival_s", "first_token_s", "completion_s",
            "preemptions")
SUMMARY = ("prefix_cache_hit_rate", "prefix_cache_hits", "prefix_cache_queries",
           "prefix_cache_evictions", "preemptions", "mean_ttft_ms", "mean_e2el_ms")
TOL_S = 1e-9


def cases(trace: Path, quick: bool) -> dict[str, dict]:
    n_trace, n_serial, n_sessions = (120, 60, 120) if quick else (300, 100, 400)
    out = {}
    if trace.is_file():
        mooncake = dict(trace=str(trace), num_requests=n_trace, target_rate=0.8)
        out["mooncake"] = mooncake
        out["mooncake-serial"] = dict(mooncake, num_requests=n_serial,
                                      policy_params={"max_num_seqs": 1})
    else:
        print(f"skipping mooncake: {trace} not found", file=sys.stderr)
    sessions = dict(num_requests=n_sessions, session_turns=4, think_time=2.0, rate=1.0,
                    prompt_len="64:512", output_len="64:512", seed=1)
    out["sessions"] = sessions
    out["sessions-tight"] = dict(sessions, kv_capacity=16_384)
    return out


LAST_LOOP = []      # the last vLLM-in-the-loop engine built, for its within-step record


def _keep_loop(cfg, workload, policy, spec, progress):
    loop = loop_engine(cfg, workload, policy, spec, progress)
    LAST_LOOP[:] = [loop]
    return loop


def run(fields: dict, engine: str):
    cfg = RunConfig(engine=engine, **REPLICA, **fields).validate()
    original = engine_factory("vllm")
    register_engine("vllm", _keep_loop)       # for this run only
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        result = simulate(cfg)
    finally:
        register_engine("vllm", original)
    return result, time.process_time() - cpu0, time.perf_counter() - wall0


def classify(native: pd.DataFrame, vllm: pd.DataFrame, changes: list):
    """Each request's verdict (see the module's docstring), by request id, and the time of the
    first admission whose hit changed within its step (None: none did)."""
    v = vllm.set_index("request_id")
    n = native.set_index("request_id").reindex(v.index)
    equal = pd.Series(True, index=v.index)
    for c in COMPARED:
        d = (v[c] - n[c]).abs()
        equal &= (d <= TOL_S) | (v[c].isna() & n[c].isna())
    verdict = pd.Series("equal", index=v.index)
    diverged_at = min((t for t, *_ in changes), default=None)
    first_change = {}
    for t, rid, looked, hit in changes:
        first_change.setdefault(rid, (t, looked, hit))
    for rid in v.index[~equal]:
        change = first_change.get(rid)
        if change is not None and change[0] == v.at[rid, "first_scheduled_s"] and \
                change[1] == n.at[rid, "cached_prompt_tokens"]:
            # Its first admission: the look-up before the step is the native engine's hit.
            verdict[rid] = "same_step_hit" if change[2] > change[1] else "same_step_eviction"
        elif diverged_at is not None and n.at[rid, "completion_s"] > diverged_at:
            verdict[rid] = "after_divergence"
        else:
            verdict[rid] = "unexplained"
    return verdict, diverged_at


def compare(name: str, fields: dict) -> dict:
    native, cpu_n, wall_n = run(fields, "native")
    vllm, cpu_v, wall_v = run(fields, "vllm")
    changes = LAST_LOOP[0].hits_changed_in_step
    verdict, diverged_at = classify(native.requests, vllm.requests, changes)
    counts = verdict.value_counts()
    v = vllm.requests.set_index("request_id")
    n = native.requests.set_index("request_id").reindex(v.index)    # same rows, same order
    row = {"case": name, "requests": len(v),
           "equal": int(counts.get("equal", 0)),
           "same_step_hit": int(counts.get("same_step_hit", 0)),
           "same_step_eviction": int(counts.get("same_step_eviction", 0)),
           "after_divergence": int(counts.get("after_divergence", 0)),
           "unexplained": int(counts.get("unexplained", 0)),
           "cached_equal": int((v["cached_prompt_tokens"] == n["cached_prompt_tokens"]).sum()),
           "hits_gained_in_step": sum(hit > looked for _, _, looked, hit in changes),
           "hits_lost_in_step": sum(hit < looked for _, _, looked, hit in changes),
           "first_divergence_s": diverged_at,
           "max_dt_first_token_ms": 1e3 * (v["first_token_s"] - n["first_token_s"]).abs().max(),
           "max_dt_completion_ms": 1e3 * (v["completion_s"] - n["completion_s"]).abs().max()}
    for k in SUMMARY:
        row[f"native_{k}"] = native.summary.get(k)
        row[f"vllm_{k}"] = vllm.summary.get(k)
    row.update(native_cpu_s=round(cpu_n, 2), vllm_cpu_s=round(cpu_v, 2),
               native_wall_s=round(wall_n, 2), vllm_wall_s=round(wall_v, 2))
    print(f"{name}: {row['equal']}/{row['requests']} equal, {row['same_step_hit']} same-step "
          f"hits, {row['same_step_eviction']} same-step evictions, "
          f"{row['after_divergence']} after divergence, {row['unexplained']} unexplained; hit "
          f"rate native {row['native_prefix_cache_hit_rate']:.6f} vLLM "
          f"{row['vllm_prefix_cache_hit_rate']:.6f}", file=sys.stderr)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    ap.add_argument("--trace", type=Path, default=MOONCAKE, help="the Mooncake trace")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help=f"folder for parity_vllm.csv and .md (default: {RESULTS}, "
                         f"the committed results)")
    ap.add_argument("--only", action="append", help="run only this case (repeatable)")
    args = ap.parse_args(argv)
    rows = [compare(name, fields) for name, fields in cases(args.trace, args.quick).items()
            if not args.only or name in args.only]
    frame = pd.DataFrame(rows)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "parity_vllm.csv", index=False)
    counts = ["case", "requests", "equal", "same_step_hit", "same_step_eviction",
              "after_divergence", "unexplained", "cached_equal", "hits_gained_in_step",
              "hits_lost_in_step", "first_divergence_s"]
    cache = ["case"] + [f"{e}_{k}" for k in SUMMARY[:5] for e in ("native", "vllm")]
    latency = ["case", "max_dt_first_token_ms", "max_dt_completion_ms"] + \
        [f"{e}_{k}" for k in SUMMARY[5:] for e in ("native", "vllm")]
    cost = ["case", "native_cpu_s", "vllm_cpu_s", "native_wall_s", "vllm_wall_s"]
    text = ("# Prefix caching: native engine vs vLLM in the loop\n\nWritten by `python -m "
            "experiments.prefix.parity_vllm" + (" --quick" if args.quick else "") + "` "
            "(docs/prefix-caching.md explains the verdicts).\n\n## Requests\n\n"
            + markdown(frame[counts]) + "\n\n## Cache counters\n\n" + markdown(frame[cache])
            + "\n\n## Latency\n\n" + markdown(frame[latency])
            + "\n\n## Cost of the runs (seconds; a shared 2-core machine)\n\n"
            + markdown(frame[cost]) + "\n")
    (out / "parity_vllm.md").write_text(text)
    print(text)
    return 1 if frame["unexplained"].any() else 0


if __name__ == "__main__":
    sys.exit(main())
