"""Workload transformations, and how ``servesim run`` applies them to a trace."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from simulator.cli import main
from simulator.config import build_config, load_config_file
from simulator.errors import ConfigError
from simulator.runner import build_workload
from tests.conftest import require_shared
from traces import EmpiricalLengths, Poisson, Workload, WorkloadError, synthesize
from traces import transforms as T
from traces.workload import stream_rng


def workload(times, prompts=None, outputs=None):
    n = len(times)
    prompts = prompts if prompts is not None else np.arange(1, n + 1) * 100
    outputs = outputs if outputs is not None else np.arange(1, n + 1) * 10
    return Workload.from_arrays(np.asarray(times, float), prompts, outputs,
                                meta={"source": "test", "transforms": []})


def test_time_window_keeps_half_open_interval_and_rezeroes():
    w = T.time_window(workload([0, 1, 2, 3, 4, 5]), start=2, end=4)
    np.testing.assert_array_equal(w.frame["arrival_s"], [0, 1])
    assert w.frame["prompt_tokens"].tolist() == [300, 400]
    assert w.frame["request_id"].tolist() == [0, 1]
    assert w.meta["transforms"][-1] == {"op": "time_window", "start_s": 2.0, "end_s": 4.0,
                                        "kept": 2, "dropped": 4, "trace_span_s": 5.0}
    assert w.meta["requests"] == 2 and w.meta["mean_rate"] == 1.0
    with pytest.raises(WorkloadError, match="time_window: no requests left"):
        T.time_window(workload([0, 1]), start=5)
    with pytest.raises(WorkloadError, match="needs 0 <= start < end"):
        T.time_window(workload([0, 1]), start=3, end=2)


def test_first_n_and_warning_when_short():
    w = workload([0, 1, 2, 3])
    assert T.first_n(w, 2).frame["prompt_tokens"].tolist() == [100, 200]
    all_of_them = T.first_n(w, 10)
    assert len(all_of_them) == 4
    assert all_of_them.meta["warnings"] == ["asked for the first 10 requests; the trace has only 4"]


def test_scale_rate_by_speedup_and_to_target_rate():
    w = workload([0, 1, 3, 4])                  # mean rate (4 - 1) / 4 = 0.75
    fast = T.scale_rate(w, speedup=2)
    np.testing.assert_allclose(fast.frame["arrival_s"], [0, 0.5, 1.5, 2])
    assert fast.meta["mean_rate"] == pytest.approx(1.5)
    target = T.scale_rate(w, target_rate=3.0)
    assert target.meta["mean_rate"] == pytest.approx(3.0)
    assert target.meta["transforms"][-1]["factor"] == pytest.approx(4.0)
    # Relative timing (the burst pattern) is unchanged: gaps keep their proportions.
    g = np.diff(target.frame["arrival_s"])
    np.testing.assert_allclose(g / g.sum(), np.diff([0, 1, 3, 4]) / 4)
    with pytest.raises(WorkloadError, match="exactly one of speedup and target_rate"):
        T.scale_rate(w, 2, 3)
    with pytest.raises(WorkloadError, match="speedup must be a positive number"):
        T.scale_rate(w, speedup=0)


def test_filter_lengths_inclusive_bounds():
    w = workload([0, 1, 2, 3, 4])               # prompts 100..500, outputs 10..50
    f = T.filter_lengths(w, prompt=(200, 400), output=(None, 30))
    assert f.frame["prompt_tokens"].tolist() == [200, 300]
    assert f.meta["transforms"][-1] == {"op": "filter_lengths", "prompt": [200, 400],
                                        "output": [None, 30], "kept": 2, "dropped": 3}
    assert T.parse_range("128:", "x") == (128, None) and T.parse_range(":64", "x") == (None, 64)
    with pytest.raises(WorkloadError, match="prompt_range: expected a token range"):
        T.parse_range("12-40", "prompt_range")


def test_truncate_fits_every_request_and_counts():
    w = workload([0, 1, 2, 3], prompts=np.array([100, 4000, 5000, 10]),
                 outputs=np.array([10, 200, 5000, 4096]))
    t = T.truncate(w, 4096)
    p, o = t.frame["prompt_tokens"].to_numpy(), t.frame["output_tokens"].to_numpy()
    assert ((p + o) <= 4096).all() and (p >= 1).all() and (o >= 1).all()
    assert p.tolist() == [100, 3896, 1, 1] and o.tolist() == [10, 200, 4095, 4095]
    rec = t.meta["transforms"][-1]
    assert rec["truncated"] == 3
    assert rec["prompt_tokens_cut"] == (4000 - 3896) + (5000 - 1) + (10 - 1)
    assert rec["output_tokens_cut"] == (5000 - 4095) + 1


def test_generated_arrivals_equal_the_synthetic_ones_of_the_same_seed():
    w = workload([0, 5, 9], prompts=np.array([7, 8, 9]))
    g = T.generate_arrivals(w, Poisson(4.0), seed=11)
    synthetic = synthesize(Poisson(4.0), EmpiricalLengths.from_pairs([(1, 1)]), 11,
                           num_requests=3)
    np.testing.assert_array_equal(g.frame["arrival_s"], synthetic.frame["arrival_s"])
    assert g.frame["prompt_tokens"].tolist() == [7, 8, 9]
    assert g.meta["arrival"] == "poisson"


def test_sample_lengths_keeps_arrivals_and_draws_pairs_from_the_source():
    w = workload([0, 1, 2, 3, 4, 5])
    w.frame["hash_ids"] = [[1]] * 6
    src = EmpiricalLengths.from_pairs([(11, 1), (22, 2), (33, 3)], source="pairs.csv")
    s = T.sample_lengths(w, src, seed=2)
    np.testing.assert_array_equal(s.frame["arrival_s"], w.frame["arrival_s"])
    pairs = set(zip(s.frame["prompt_tokens"], s.frame["output_tokens"]))
    assert pairs <= {(11, 1), (22, 2), (33, 3)}
    idx = stream_rng(2, "lengths").integers(0, 3, size=6)
    assert s.frame["prompt_tokens"].tolist() == [[11, 22, 33][i] for i in idx]
    assert "hash_ids" not in s.frame.columns
    assert s.meta["transforms"][-1]["source"] == "pairs.csv"


# ---- through the run configuration -------------------------------------------------------
AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
    f"2023-11-16 18:00:{s:02d}.0000000,{100 * (s + 1)},{s + 1}\n" for s in range(20))


def test_run_config_applies_transforms_in_documented_order(tmp_path):
    f = tmp_path / "az.csv"
    f.write_text(AZ)
    cfg = build_config(overrides={"trace": str(f), "trace_start": 2, "trace_end": 18,
                                  "prompt_range": "500:", "num_requests": 5, "speedup": 2.0,
                                  "truncate": True, "max_model_len": 800})
    w = build_workload(cfg)
    # window keeps t = 2..17; prompts >= 500 from t = 4; first 5: t = 4..8; halved; truncated.
    np.testing.assert_allclose(w.frame["arrival_s"], [1, 1.5, 2, 2.5, 3])
    assert w.frame["prompt_tokens"].tolist() == [500, 600, 700, 800 - 8, 800 - 9]
    assert [t["op"] for t in w.meta["transforms"]] == [
        "time_window", "filter_lengths", "first_n", "scale_rate", "truncate"]
    assert w.meta["format"] == "azure" and w.meta["path"] == str(f)


@pytest.mark.shared
def test_length_file_with_generated_arrivals_and_lengths_from(tmp_path):
    bwb = require_shared("traces", "bwb_stats_llama2_tokenizer_filtered_v2.csv")
    # A length-only trace: its lengths in file order, arrivals from the arrival flags.
    cfg = build_config(overrides={"trace": str(bwb), "num_requests": 50, "rate": 3.0, "seed": 4})
    w = build_workload(cfg)
    table = pd.read_csv(bwb)
    first = table.iloc[:50]
    assert w.frame["prompt_tokens"].tolist() == first["num_prefill_tokens"].tolist()
    synthetic = build_workload(build_config(overrides={"rate": 3.0, "seed": 4,
                                                       "num_requests": 50}))
    np.testing.assert_array_equal(w.frame["arrival_s"], synthetic.frame["arrival_s"])
    # No trace: synthetic arrivals with (prompt, output) pairs sampled from the file.
    cfg2 = build_config(overrides={"lengths_file": str(bwb), "num_requests": 200, "seed": 4})
    w2 = build_workload(cfg2)
    pairs = set(zip(table["num_prefill_tokens"], table["num_decode_tokens"]))
    assert set(zip(w2.frame["prompt_tokens"], w2.frame["output_tokens"])) <= pairs
    assert "sampled from bwb" in w2.meta["lengths"]


def test_trace_arrivals_with_lengths_from_another_file(tmp_path):
    f = tmp_path / "az.csv"
    f.write_text(AZ)
    lengths = tmp_path / "l.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens\n5,6\n7,8\n")
    cfg = build_config(overrides={"trace": str(f), "lengths_file": str(lengths)})
    w = build_workload(cfg)
    np.testing.assert_array_equal(w.frame["arrival_s"], np.arange(20))
    assert set(zip(w.frame["prompt_tokens"], w.frame["output_tokens"])) <= {(5, 6), (7, 8)}


@pytest.mark.parametrize("fields,message", [
    ({"trace": "x.csv", "duration": 10}, "with a trace, bound the replay with trace_end"),
    ({"speedup": 2}, "speedup applies to a trace"),
    ({"trace": "x.csv", "speedup": 2, "target_rate": 3}, "give speedup or target_rate"),
    ({"trace": "x.csv", "trace_start": 5, "trace_end": 4}, "trace_end (4) must be after"),
    ({"trace": "x.csv", "generate_arrivals": True, "speedup": 2}, "generate_arrivals takes"),
    ({"trace_options": {"model": "GPT-4"}}, "trace_options applies to a trace or lengths file"),
    ({"trace": "x.csv", "types": ["p5d5:1"]}, "types define their own lengths"),
])
def test_run_config_rejects_inconsistent_trace_fields(fields, message):
    with pytest.raises((ConfigError, WorkloadError), match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        build_config(overrides=fields)


def test_trace_fields_from_a_config_file_and_summary_records_them(tmp_path, capsys):
    f = tmp_path / "az.csv"
    f.write_text(AZ)
    conf = tmp_path / "run.yaml"
    conf.write_text(f"trace: {f}\ntrace_format: azure\ntarget_rate: 4\ntruncate: true\n"
                    f"max_model_len: 1024\ntimeline: false\n")
    assert load_config_file(conf)["target_rate"] == 4.0
    out = tmp_path / "out"
    assert main(["run", "--config", str(conf), "-n", "10", "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    w = summary["workload"]
    assert w["format"] == "azure" and w["requests"] == 10 and len(w["sha256"]) == 64
    assert [t["op"] for t in w["transforms"]] == ["first_n", "scale_rate", "truncate"]
    assert w["mean_rate"] == pytest.approx(4.0)
    assert summary["completed"] == 10
    config = json.loads((out / "config.json").read_text())
    assert config["trace"] == str(f) and config["target_rate"] == 4.0


def test_a_lengths_only_file_takes_target_rate_and_refuses_speedup(tmp_path, capsys):
    """A file without arrival times gets generated arrivals: target_rate is their rate (the
    replayed workload's mean rate, as for any trace); speedup has nothing to scale and is an
    error rather than silently ignored."""
    f = tmp_path / "lengths.csv"
    f.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(
        f"{100 + i},{10 + i % 7}\n" for i in range(4000)))
    w = build_workload(build_config(overrides={"trace": str(f), "target_rate": 7.0,
                                               "rate": 1.0, "seed": 2}))
    span = w.frame["arrival_s"].iloc[-1] - w.frame["arrival_s"].iloc[0]
    assert (len(w) - 1) / span == pytest.approx(7.0, rel=0.05)   # 4000 Poisson arrivals: ~1.6% sd
    with pytest.raises(ConfigError, match="has no arrival times .* nothing to speed up"):
        build_workload(build_config(overrides={"trace": str(f), "speedup": 2.0}))
    assert main(["run", "--trace", str(f), "--speedup", "2", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to speed up" in err
