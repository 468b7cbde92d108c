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


def azure_conv_lengths(n: int, max_total: int | None = None):
    """(prompts, outputs, rate) of the Azure conversation trace's first ``n`` requests, optionally
    only those with prompt + output <= max_total (the ones a replica with that context serves;
    the others are rejected): their lengths, and their native mean arrival rate in req/s."""
    from simulator.config import RunConfig
    from simulator.runner import build_workload

    workload = build_workload(RunConfig(trace=str(AZURE_CONV), num_requests=n).validate())
    f = workload.frame
    p, o = f["prompt_tokens"].to_numpy(), f["output_tokens"].to_numpy()
    keep = slice(None) if max_total is None else (p + o) <= max_total
    rate = workload.summary()["mean_rate"] * len(p[keep]) / len(p)
    return p[keep], o[keep], float(rate)
