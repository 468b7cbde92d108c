"""The reference traces in ../shared/traces load to their documented counts, means and
quantiles (../shared/traces/README.md)."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from tests.conftest import require_shared
from traces.loaders import read_trace
from traces.stats import trace_stats

# file, format, requests, mean prompt, mean output, span (s) or None, mean rate or None
DOCUMENTED = [
    ("AzureLLMInferenceTrace_conv.csv", "azure", 19366, 1154.7, 211.1, 3502, 5.53),
    ("AzureLLMInferenceTrace_code.csv", "azure", 8819, 2047.8, 27.9, 3436, 2.57),
    ("splitwise_conv.csv", "vidur", 19366, 1154.7, 211.1, 3502, 5.53),
    ("conversation_trace.jsonl", "mooncake", 12031, 12035.1, 342.6, 3537, 3.40),
    ("sharegpt_8k_filtered_stats_llama2_tokenizer.csv", "vidur-lengths", 30731, 2340.0, 438.7,
     None, None),
    ("arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", "vidur-lengths", 28257,
     2588.1, 291.4, None, None),
    ("bwb_stats_llama2_tokenizer_filtered_v2.csv", "vidur-lengths", 33768, 1067.2, 1612.8,
     None, None),
]


@pytest.mark.shared
@pytest.mark.parametrize("name,fmt,n,prompt,output,span,rate", DOCUMENTED,
                         ids=[d[0].split(".")[0] for d in DOCUMENTED])
def test_documented_counts_and_means(name, fmt, n, prompt, output, span, rate):
    w = read_trace(require_shared("traces", name))
    assert w.meta["format"] == fmt
    assert len(w) == n == w.meta["rows"]
    assert w.frame["prompt_tokens"].mean() == pytest.approx(prompt, abs=0.05)
    assert w.frame["output_tokens"].mean() == pytest.approx(output, abs=0.05)
    assert w.meta["warnings"] == []
    if span is None:
        assert w.meta["arrival"] == "none"
        assert np.isnan(w.frame["arrival_s"]).all()
    else:
        t = w.frame["arrival_s"].to_numpy()
        assert t[0] == 0.0 and (np.diff(t) >= 0).all()
        assert w.meta["span_s"] == pytest.approx(span, abs=0.5)
        assert w.meta["mean_rate"] == pytest.approx(rate, abs=0.005)


@pytest.mark.shared
def test_azure_conv_quantiles_as_documented():
    s = trace_stats(read_trace(require_shared("traces", "AzureLLMInferenceTrace_conv.csv")))
    assert (s["prompt_tokens"]["median"], s["prompt_tokens"]["p99"],
            s["prompt_tokens"]["max"]) == (1020, 4142, 14050)
    assert (s["output_tokens"]["median"], s["output_tokens"]["p99"],
            s["output_tokens"]["max"]) == (129, 601, 1000)
    # 2023-11-16 18:15:46 to 19:14:08: 59 started minutes, none idle.
    assert len(s["per_minute_rate"]) == 59 and s["idle_minutes"] == 0
    assert sum(s["per_minute_rate"]) * 60 == pytest.approx(19366)


@pytest.mark.shared
def test_azure_code_is_bursty_with_long_idle_gaps():
    s = trace_stats(read_trace(require_shared("traces", "AzureLLMInferenceTrace_code.csv")))
    assert s["prompt_tokens"]["median"] == 1469 and s["prompt_tokens"]["max"] == 7437
    assert s["output_tokens"]["median"] == 13 and s["output_tokens"]["max"] == 1899
    assert s["max_gap_s"] == pytest.approx(217, abs=1)
    assert s["interarrival_cv"] > 2


@pytest.mark.shared
def test_mooncake_documented_lengths_and_prefix_hashes():
    w = read_trace(require_shared("traces", "conversation_trace.jsonl"))
    s = trace_stats(w)
    assert s["prompt_tokens"]["median"] == 6909 and s["prompt_tokens"]["max"] == 126195
    assert s["output_tokens"]["max"] == 2000
    first = list(w.frame["hash_ids"].iloc[0])
    assert first == list(range(14))
    # One hash per 512-token block of the prompt: ceil(input_length / 512).
    blocks = w.frame["hash_ids"].map(len).to_numpy()
    assert (blocks == np.ceil(w.frame["prompt_tokens"].to_numpy() / 512)).mean() > 0.99
    # Timestamps come in 3-second buckets: ~10 requests per distinct value, 3 s (+-3 ms) apart.
    buckets = np.unique(np.rint(w.frame["arrival_s"].to_numpy() * 1000))
    assert len(w) / len(buckets) == pytest.approx(10.2, abs=0.1)
    assert (np.abs(np.diff(buckets) - 3000) <= 3).all()


@pytest.mark.shared
def test_azure_conv_and_its_vidur_copy_are_the_same_requests():
    azure = read_trace(require_shared("traces", "AzureLLMInferenceTrace_conv.csv")).frame
    vidur = read_trace(require_shared("traces", "splitwise_conv.csv")).frame
    assert (azure["prompt_tokens"].to_numpy() == vidur["prompt_tokens"].to_numpy()).all()
    assert (azure["output_tokens"].to_numpy() == vidur["output_tokens"].to_numpy()).all()
    np.testing.assert_allclose(azure["arrival_s"], vidur["arrival_s"], rtol=0, atol=2e-7)


@pytest.mark.shared
def test_gzip_copy_loads_identically(tmp_path):
    src = require_shared("traces", "conversation_trace.jsonl")
    packed = tmp_path / "conversation.jsonl.gz"
    with open(src, "rb") as fin, gzip.open(packed, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    plain, zipped = read_trace(src), read_trace(packed)
    assert zipped.meta["format"] == "mooncake"
    cols = ["arrival_s", "prompt_tokens", "output_tokens"]
    assert plain.frame[cols].equals(zipped.frame[cols])


@pytest.mark.shared
def test_parquet_copy_loads_identically(tmp_path):
    import pandas as pd
    src = require_shared("traces", "splitwise_conv.csv")
    pq = tmp_path / "splitwise.parquet"
    pd.read_csv(src).to_parquet(pq)
    a, b = read_trace(src), read_trace(pq)
    assert b.meta["container"] == "parquet" and b.meta["format"] == "vidur"
    cols = ["arrival_s", "prompt_tokens", "output_tokens"]
    assert a.frame[cols].equals(b.frame[cols])
