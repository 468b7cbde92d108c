"""Replaying the full Azure conversation trace (19,366 requests over ~58 minutes) through the
vLLM V1 and Sarathi-Serve policies on llama-2-7b / A100-80GB completes every request.

Prompts over the model's 4,096-token context are truncated (--truncate): without it the engine
would reject them at arrival. Timeline recording is off to keep the replays cheap.
"""

from __future__ import annotations

import pandas as pd
import pytest

from simulator.config import build_config
from simulator.runner import simulate
from tests.conftest import require_shared


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("policy", ["vllm-v1", "sarathi"])
def test_full_azure_conv_replay_completes_every_request(policy):
    trace = require_shared("traces", "AzureLLMInferenceTrace_conv.csv")
    cfg = build_config(overrides={"trace": str(trace), "policy": policy, "model": "llama-2-7b",
                                  "gpu": "a100-80gb", "truncate": True, "timeline": False})
    result = simulate(cfg)
    s = result.summary
    assert s["completed"] == 19366 and s["rejected"] == 0 and s["unfinished"] == 0
    assert (result.requests["status"] == "completed").all()
    truncation = s["workload"]["transforms"][-1]
    assert truncation["op"] == "truncate" and truncation["max_model_len"] == 4096
    # Only prompts were cut (no output reaches 4,096), so every traced output token was made.
    raw = pd.read_csv(trace)
    assert truncation["truncated"] == int(((raw["ContextTokens"] + raw["GeneratedTokens"])
                                           > 4096).sum())
    assert truncation["output_tokens_cut"] == 0
    assert s["total_output_tokens"] == int(raw["GeneratedTokens"].sum())
    assert result.requests["arrival_s"].max() == pytest.approx(3501.72, abs=0.01)


@pytest.mark.shared
def test_without_truncation_the_overlong_requests_are_rejected_and_counted():
    trace = require_shared("traces", "AzureLLMInferenceTrace_conv.csv")
    # The first 2,000 requests are enough to meet a few over-long prompts.
    cfg = build_config(overrides={"trace": str(trace), "num_requests": 2000, "timeline": False,
                                  "target_rate": 0.5})
    raw = pd.read_csv(trace, nrows=2000)
    over = int(((raw["ContextTokens"] + raw["GeneratedTokens"]) > 4096).sum())
    assert over > 0
    s = simulate(cfg).summary
    assert s["rejected"] == over and s["completed"] == 2000 - over
