"""An analytic attention profile for Vidur, in the format of its attention.csv.

    python experiments/peers/vidur_attention_profile.py \\
        --out /work/peers/vidur/data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/attention.csv

Vidur predicts an iteration's time from measured operator profiles: the MLP-side operators
(mlp.csv) and attention (attention.csv). The snapshot of microsoft/vidur available here lacks
the attention file for Llama-2-7B on the A100 (a Git LFS object, absent; so does
../shared/profiles, see its README), so we generate one from the A100's roofline. The benchmark
times Vidur's simulation, not its fidelity: what matters is that Vidur trains and predicts from
a file of the same shape as its own; the latencies it reports differ from a measured profile.

Per layer, in milliseconds (A100-80GB: 2.0 TB/s HBM, 312 TFLOP/s fp16 dense; efficiencies are
round guesses):
- decode: a launch overhead, a per-sequence cost, and the KV read at 80% of HBM bandwidth;
- prefill: a launch overhead and the attention FLOPs of a chunk over its context (causal within
  the chunk) at 50% of peak.
Columns are Vidur's (its sklearn predictor reads n_embd, n_q_head, n_kv_head, block_size,
num_tensor_parallel_workers, batch_size, prefill_chunk_size, kv_cache_size and the
time_stats.attn_{prefill,decode}.median columns).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

N_EMBD, N_HEAD, BLOCK, MAX_LEN = 4096, 32, 16, 4096     # Llama-2-7B, vLLM's block size
HBM_BYTES_S, FLOPS_S = 2.0e12 * 0.8, 312e12 * 0.5
LAUNCH_MS, PER_SEQUENCE_MS = 0.008, 0.001
BYTES_PER_VALUE = 2                                       # fp16


def decode_ms(batch: np.ndarray, kv: np.ndarray) -> np.ndarray:
    kv_bytes = batch * kv * 2 * N_EMBD * BYTES_PER_VALUE     # K and V of every sequence
    return LAUNCH_MS + PER_SEQUENCE_MS * batch + kv_bytes / HBM_BYTES_S * 1e3


def prefill_ms(chunk: np.ndarray, kv: np.ndarray) -> np.ndarray:
    flops = 4 * chunk * (kv + chunk / 2) * N_EMBD           # QK^T and PV, causal in the chunk
    return LAUNCH_MS + flops / FLOPS_S * 1e3


def profile() -> pd.DataFrame:
    sizes = np.unique(np.r_[np.arange(16, 512, 16), np.arange(512, MAX_LEN + 1, 128)])
    batches = np.unique(np.r_[np.arange(1, 33), np.arange(36, 257, 4)])
    b, kv = (a.ravel() for a in np.meshgrid(batches, sizes))
    decode = pd.DataFrame({"batch_size": b, "prefill_chunk_size": 0, "kv_cache_size": kv,
                           "time_stats.attn_decode.median": decode_ms(b, kv)})
    chunk, ctx = (a.ravel() for a in np.meshgrid(sizes, np.r_[0, sizes]))
    keep = chunk + ctx <= MAX_LEN
    chunk, ctx = chunk[keep], ctx[keep]
    prefill = pd.DataFrame({"batch_size": 1, "prefill_chunk_size": chunk, "kv_cache_size": ctx,
                            "time_stats.attn_prefill.median": prefill_ms(chunk, ctx)})
    df = pd.concat([decode, prefill], ignore_index=True)
    return df.assign(n_embd=N_EMBD, n_q_head=N_HEAD, n_kv_head=N_HEAD, block_size=BLOCK,
                     num_tensor_parallel_workers=1, max_model_len=MAX_LEN,
                     is_prefill=df["prefill_chunk_size"] > 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="attention.csv to write")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df = profile()
    df.to_csv(args.out, index=False)
    print(f"wrote {args.out}: {len(df):,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
