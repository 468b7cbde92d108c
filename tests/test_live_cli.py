"""servesim serve (command line of the plug-in) and servesim compare (run vs run)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from scheduler.base import PolicyError
from scheduler.vllm_adapter import (ENV_CONFIG, ENV_PARAMS, ENV_POLICY, ENV_SEED,
                                    load_plugin_config, parse_params_text)
from simulator.cli import main
from simulator.cli.live import serve_command
from simulator.compare import compare, relative_error
from simulator.errors import ConfigError


def test_serve_dry_run_prints_the_vllm_command(capsys):
    code = main(["serve", "--policy", "sjf", "-p", "predictor=noisy", "-p", "noise_sigma=0.3",
                 "--dry-run", "--", "meta-llama/Llama-2-7b-hf", "--max-num-seqs", "128"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{ENV_POLICY}=sjf {ENV_PARAMS}='{{\"noise_sigma\": \"0.3\", "
                           f"\"predictor\": \"noisy\"}}' {ENV_SEED}=0 ")
    assert line.endswith("vllm serve meta-llama/Llama-2-7b-hf --max-num-seqs 128 "
                         "--scheduler-cls scheduler.vllm_adapter.ServesimAsyncScheduler")


def test_serve_sync_uses_the_sync_scheduler_and_disables_async():
    env, argv = serve_command("vllm-v1", {}, 0, ["m"], sync=True)
    assert argv[-3:] == ["--scheduler-cls", "scheduler.vllm_adapter.ServesimScheduler",
                         "--no-async-scheduling"]
    assert env[ENV_POLICY] == "vllm-v1"


def test_serve_rejects_bad_policy_and_owned_flags(capsys):
    assert main(["serve", "--policy", "nope", "--dry-run", "--", "m"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["serve", "--policy", "sjf", "-p", "predictor=bad", "--dry-run", "--", "m"]) == 2
    with pytest.raises(ConfigError, match="--scheduler-cls is set by servesim serve"):
        serve_command("sjf", {}, 0, ["m", "--scheduler-cls=x.Y"], sync=False)


def test_plugin_config_from_environment_and_file(tmp_path):
    cfg_file = tmp_path / "policy.yaml"
    cfg_file.write_text("policy: sarathi\npolicy_params: {chunk_size: 256, max_num_seqs: 64}\n"
                        "seed: 4\n")
    cfg = load_plugin_config({ENV_CONFIG: str(cfg_file), ENV_PARAMS: "chunk_size=128"})
    assert (cfg.policy, cfg.seed) == ("sarathi", 4)
    assert cfg.policy_params == {"chunk_size": "128", "max_num_seqs": 64}   # env overrides file
    assert load_plugin_config({ENV_POLICY: "sjf", ENV_PARAMS: '{"predictor": "noisy"}'}
                              ).policy_params == {"predictor": "noisy"}
    assert load_plugin_config({}).policy == "vllm-v1"
    with pytest.raises(PolicyError, match="unknown policy 'fcfs'"):
        load_plugin_config({ENV_POLICY: "fcfs"})
    with pytest.raises(PolicyError, match="expected KEY=VALUE"):
        parse_params_text("chunk_size", ENV_PARAMS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: sjf\nbudget: 3\n")
    with pytest.raises(PolicyError, match="unknown key 'budget'"):
        load_plugin_config({ENV_CONFIG: str(bad)})


def _run_dir(path, ttft, e2el, completed=3):
    path.mkdir()
    summary = {"completed": completed, "mean_ttft_ms": float(ttft.mean()),
               "mean_e2el_ms": float(e2el.mean()), "request_throughput": 2.0}
    (path / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"request_id": range(len(ttft)), "status": "completed", "ttft_ms": ttft,
                  "tpot_ms": ttft / 10, "e2el_ms": e2el}).to_csv(path / "requests.csv",
                                                                  index=False)


def test_compare_relative_errors(tmp_path, capsys):
    import numpy as np
    _run_dir(tmp_path / "sim", np.array([110.0, 220.0, 330.0]), np.array([1000.0] * 3))
    _run_dir(tmp_path / "real", np.array([100.0, 200.0, 300.0]), np.array([800.0] * 3))
    result = compare(tmp_path / "sim", tmp_path / "real")
    rows = {r["metric"]: r for r in result["metrics"]}
    assert rows["mean_ttft_ms"]["rel_error"] == pytest.approx(0.1)
    assert rows["mean_e2el_ms"]["rel_error"] == pytest.approx(0.25)
    assert rows["completed"]["rel_error"] == 0 and rows["p99_tpot_ms"]["rel_error"] is None
    assert result["per_request"]["matched_requests"] == 3
    assert result["per_request"]["median_abs_rel_error_ttft_ms"] == pytest.approx(0.1)
    assert relative_error(1.0, 0) is None
    assert main(["compare", str(tmp_path / "sim"), str(tmp_path / "real")]) == 0
    assert "+10.0%" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "sim"), str(tmp_path / "nowhere")]) == 2
    assert "no summary.json" in capsys.readouterr().err
