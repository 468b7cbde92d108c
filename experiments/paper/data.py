"""The two length sources of experiment 4, read from ../shared/traces (never copied here) with
the project's trace loaders (traces/loaders)."""

from __future__ import annotations

from pathlib import Path

from traces import EmpiricalLengths, Poisson, Workload, synthesize
from traces.loaders import load_lengths

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
SHAREGPT = SHARED / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
AZURE_CONV = SHARED / "AzureLLMInferenceTrace_conv.csv"


def sharegpt_lengths(max_total: int | None = None) -> EmpiricalLengths:
    """ShareGPT (prompt, output) pairs (etalon's Llama-2-tokenised stats), optionally only those
    with prompt + output <= max_total (the paper filtered its chat data by length)."""
    lengths = load_lengths(SHAREGPT)
    keep = slice(None) if max_total is None else \
        (lengths.prompts + lengths.outputs) <= max_total
    return EmpiricalLengths(lengths.prompts[keep], lengths.outputs[keep], "ShareGPT")


def sharegpt_workload(rate: float, n: int, seed: int, max_total: int | None = None) -> Workload:
    """ShareGPT lengths with Poisson arrivals."""
    return synthesize(Poisson(rate), sharegpt_lengths(max_total), seed, num_requests=n)
