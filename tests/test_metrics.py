"""Per-request metrics and the vLLM-bench summary, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from simcase import requests, simulate
from simulator.cost.linear import LinearCost
from simulator.metrics import SLO, summarize

D = 0.1
COST = LinearCost(c0=D)      # every iteration takes exactly 100 ms


def run_three():
    # Batch size 1: request 0 runs [0, 0.3], request 1 waits, runs [0.3, 0.5]; request 2 runs
    # [2, 2.4]. Each iteration emits one token.
    return simulate(requests((0.0, 8, 3), (0.1, 8, 2), (2.0, 8, 4)), "vllm-v1",
                    {"max_num_seqs": 1}, cost=COST)


def test_request_metrics():
    f = run_three().requests
    assert f.queue_ms.tolist() == pytest.approx([0, 200, 0])
    assert f.ttft_ms.tolist() == pytest.approx([100, 300, 100])
    assert f.e2el_ms.tolist() == pytest.approx([300, 400, 400])
    assert f.tpot_ms.tolist() == pytest.approx([100, 100, 100])  # (e2e - ttft) / (out - 1)


def test_summary_uses_vllm_bench_keys_and_values():
    out = run_three()
    s = summarize(out.requests, preemptions=out.raw.preemptions)
    duration = 2.4 - 0.0                                   # first arrival to last completion
    assert s["completed"] == 3 and s["rejected"] == 0 and s["preemptions"] == 0
    assert s["duration_s"] == pytest.approx(duration)
    assert s["request_throughput"] == pytest.approx(3 / duration)
    assert s["output_throughput"] == pytest.approx(9 / duration)
    assert s["total_token_throughput"] == pytest.approx((9 + 24) / duration)
    assert s["mean_ttft_ms"] == pytest.approx(500 / 3)
    assert s["median_e2el_ms"] == pytest.approx(400)
    assert s["p99_ttft_ms"] == pytest.approx(np.percentile([100, 300, 100], 99))
    for stat in ("mean", "median", "p90", "p99", "std"):
        for metric in ("ttft_ms", "tpot_ms", "e2el_ms"):
            assert f"{stat}_{metric}" in s
    assert "request_goodput" not in s


def test_goodput_and_slo_attainment():
    out = run_three()
    s = summarize(out.requests, slo=SLO(ttft_ms=150))
    assert s["slo_attainment"] == pytest.approx(2 / 3)
    assert s["request_goodput"] == pytest.approx(2 / 2.4)
    s = summarize(out.requests, slo=SLO(e2el_ms=350, tpot_ms=101))
    assert s["slo_attainment"] == pytest.approx(1 / 3)


def test_rejected_requests_count_against_attainment_not_throughput():
    out = simulate(requests((0.0, 8, 3), (0.1, 5000, 2)), cost=COST, max_model_len=4096)
    s = summarize(out.requests, slo=SLO(ttft_ms=1000))
    assert s["completed"] == 1 and s["rejected"] == 1
    assert s["request_throughput"] == pytest.approx(1 / 0.3)
    assert s["slo_attainment"] == pytest.approx(0.5)
