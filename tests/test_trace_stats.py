"""``trace stats`` against closed forms on constructed workloads, and its command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulator.cli import main
from tests.conftest import require_shared
from traces import Deterministic, Gamma, Workload, synthesize
from traces.lengths import EmpiricalLengths
from traces.stats import trace_stats


def test_evenly_spaced_arrivals_have_cv_zero_and_flat_profile():
    # 240 arrivals every 0.5 s from t = 0.5: rate 2, gaps all equal, 2 minutes of 120 each.
    w = synthesize(Deterministic(2.0), EmpiricalLengths.from_pairs([(10, 3), (30, 5)]), 0,
                   num_requests=240)
    s = trace_stats(w)
    assert s["requests"] == 240
    assert s["span_s"] == pytest.approx(119.5)
    assert s["mean_rate"] == pytest.approx(2.0)
    assert s["interarrival_cv"] == pytest.approx(0.0, abs=1e-9)
    assert s["per_minute_rate"] == [2.0, 2.0]
    assert s["max_gap_s"] == pytest.approx(0.5)


def test_gamma_arrivals_cv_matches_parameter():
    w = synthesize(Gamma(5.0, cv=3.0), EmpiricalLengths.from_pairs([(1, 1)]), 1,
                   num_requests=200_000)
    s = trace_stats(w)
    # Standard error of the sample CV for a gamma with cv 3 over 2e5 gaps is about 0.02.
    assert s["interarrival_cv"] == pytest.approx(3.0, abs=0.1)
    assert s["mean_rate"] == pytest.approx(5.0, rel=0.03)


def test_length_quantiles_are_numpy_percentiles():
    prompts = np.arange(1, 101)
    outputs = np.arange(1, 101)[::-1] * 2
    w = Workload.from_arrays(np.arange(100.0), prompts, outputs)
    s = trace_stats(w)
    assert s["prompt_tokens"] == pytest.approx({"mean": 50.5, "min": 1, "median": 50.5,
                                                "p90": 90.1, "p99": 99.01, "max": 100})
    assert s["output_tokens"]["max"] == 200 and s["output_tokens"]["mean"] == 101.0


def test_idle_minutes_counted():
    w = Workload.from_arrays(np.array([0.0, 10.0, 130.0, 170.0]), [1] * 4, [1] * 4)
    s = trace_stats(w)
    assert s["per_minute_rate"] == [pytest.approx(2 / 60), 0.0, pytest.approx(2 / 60)]
    assert s["idle_minutes"] == 1 and s["max_gap_s"] == 120.0


@pytest.mark.shared
def test_cli_stats_json_and_table(capsys):
    conv = require_shared("traces", "AzureLLMInferenceTrace_conv.csv")
    assert main(["trace", "stats", str(conv), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["requests"] == 19366 and s["format"] == "azure"
    assert s["mean_rate"] == pytest.approx(5.53, abs=0.005)
    assert s["prompt_tokens"]["mean"] == pytest.approx(1154.7, abs=0.05)
    assert main(["trace", "stats", str(conv)]) == 0
    out = capsys.readouterr().out
    assert "19,366 requests" in out and "mean rate 5.530 req/s" in out
    assert "per-minute rate" in out
    lengths = require_shared("traces", "sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    assert main(["trace", "stats", str(lengths)]) == 0
    assert "no arrival times (lengths only)" in capsys.readouterr().out


def test_cli_stats_keeps_each_line_whole_when_piped(tmp_path, capsys):
    # CI failed here once: rich wrapped the headline at 80 columns because the clone's path was
    # longer, splitting "19,366 requests" across two lines. Piped output must never wrap text.
    deep = tmp_path.joinpath(*(["a-rather-long-folder-name"] * 8))
    deep.mkdir(parents=True)
    trace = deep / "trace.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                     + "".join(f"{i * 0.5},{100 + i},{10 + i}\n" for i in range(1200)))
    assert len(str(trace)) > 200
    assert main(["trace", "stats", str(trace)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"{trace} (vidur): 1,200 requests")
    assert lines[1].startswith("span 599.5 s (10.0 min), mean rate 2.000 req/s")


def test_cli_formats_lists_every_format(capsys):
    from traces.loaders import FORMATS
    assert main(["trace", "formats"]) == 0
    out = capsys.readouterr().out
    for name in FORMATS:
        assert name in out
