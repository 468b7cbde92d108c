"""The two length sources of experiment 4, read from ../shared/traces (never copied here).

Minimal readers for this experiment only: the project's general trace loaders (Azure, Vidur,
Mooncake, ...) belong to traces/ (issue 3); when they land, these two functions should call them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from traces import EmpiricalLengths, Poisson, Workload, synthesize

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
SHAREGPT = SHARED / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
AZURE_CONV = SHARED / "AzureLLMInferenceTrace_conv.csv"


def sharegpt_lengths(max_total: int | None = None) -> EmpiricalLengths:
    """ShareGPT (prompt, output) pairs (etalon's Llama-2-tokenised stats), optionally only those
    with prompt + output <= max_total (the paper filtered its chat data by length)."""
    f = pd.read_csv(SHAREGPT, usecols=["num_prefill_tokens", "num_decode_tokens"])
    if max_total is not None:
        f = f[f["num_prefill_tokens"] + f["num_decode_tokens"] <= max_total]
    return EmpiricalLengths(f["num_prefill_tokens"].to_numpy(np.int64),
                            f["num_decode_tokens"].to_numpy(np.int64), "ShareGPT")


def sharegpt_workload(rate: float, n: int, seed: int, max_total: int | None = None) -> Workload:
    """ShareGPT lengths with Poisson arrivals."""
    return synthesize(Poisson(rate), sharegpt_lengths(max_total), seed, num_requests=n)


def azure_conv(n: int | None = None, speedup: float = 1.0, start: int = 0) -> Workload:
    """The Azure LLM inference conversation trace (Patel et al., Splitwise, ISCA 2024): its own
    arrival times (seconds from the first request, divided by ``speedup``) and lengths."""
    f = pd.read_csv(AZURE_CONV)
    t = pd.to_datetime(f["TIMESTAMP"], format="mixed")
    arrival = (t - t.iloc[0]).dt.total_seconds().to_numpy()
    sl = slice(start, None if n is None else start + n)
    arrival = (arrival[sl] - arrival[sl][0]) / speedup
    prompts = f["ContextTokens"].to_numpy(np.int64)[sl]
    outputs = np.maximum(f["GeneratedTokens"].to_numpy(np.int64)[sl], 1)
    span = arrival[-1] - arrival[0]
    meta = {"source": "trace", "trace": AZURE_CONV.name, "speedup": speedup,
            "mean_rate": (len(arrival) - 1) / span if span > 0 else None}
    return Workload.from_arrays(arrival, prompts, outputs, meta=meta)
