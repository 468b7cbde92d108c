"""``servesim`` end to end through ``simulator.cli.main``: the default run, config files, outputs,
and bad input (one line naming the field, exit status 2, never a traceback)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from scheduler.base import policy_names
from simulator.cli import main
from simulator.config import RunConfig
from simulator.metrics import TIMELINE_COLUMNS
from simulator.errors import ConfigError
from simulator.metrics import REQUEST_COLUMNS
from simulator.runner import simulate

SMALL = ["-n", "40", "--rate", "8", "--prompt-len", "64:256", "--output-len", "4:32"]


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def summary_of(capsys, *args) -> dict:
    code, out, err = run(capsys, "run", "--json", "-q", *args)
    assert code == 0, err
    s = json.loads(out)
    for volatile in ("wall_s", "sim_requests_per_wall_s"):
        s.pop(volatile)
    return s


# ---------------------------------------------------------------------------------------------
# Bad input


BAD_FLAGS = [
    (["--rate", "-1"], "rate"),
    (["--rate", "0"], "rate"),
    (["--rate", "nan"], "rate"),
    (["--rate", "abc"], "--rate"),
    (["--kv-capacity", "0"], "kv_capacity"),
    (["--kv-capacity", "-5"], "kv_capacity"),
    (["--kv-capacity", "8"], "kv_capacity"),
    (["--block-size", "0"], "block_size"),
    (["--prompt-len", "0"], "prompt_len"),
    (["--prompt-len", "abc"], "prompt_len"),
    (["--output-len", "-3"], "output_len"),
    (["--output-len", "9:3"], "output_len"),
    (["--num-requests", "0"], "num_requests"),
    (["--num-requests", "-2"], "num_requests"),
    (["--duration", "-1"], "duration"),
    (["--max-model-len", "0"], "max_model_len"),
    (["--arrival", "gamma", "--cv", "0"], "cv"),
    (["--seed", "-1"], "seed"),
    (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization"),
    (["--policy", "nope"], "policy"),
    (["--model", "gpt-9"], "model"),
    (["--gpu", "tpu-v9"], "gpu"),
    (["--cost-model", "magic"], "--cost-model"),
    (["--cost-param", "c0=-1", "--cost-model", "linear"], "c0"),
    (["--cost-param", "warp=2"], "warp"),
    (["--policy", "sarathi", "-p", "chunk_size=0"], "chunk_size"),
    (["-p", "bogus=1"], "bogus"),
    (["-p", "max_num_seqs=1.5"], "max_num_seqs"),
    (["--type", "p512d20:0"], "rate"),
    (["--type", "junk"], "type"),
    (["--arrival", "piecewise"], "rate_schedule"),
    (["--arrival", "piecewise", "--rate-schedule", "5:x"], "--rate-schedule"),
    (["--slo", "ttft=abc"], "ttft"),
    (["--slo", "speed=3"], "speed"),
    (["--policy", "vllm", "-p", "max_num_batched_tokens=512"], "max_num_batched_tokens"),
]


def assert_one_line_error(code, out, err, field):
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("servesim: error: ")
    assert field in lines[0]


@pytest.mark.parametrize("args,field", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_naming_the_field(capsys, args, field):
    assert_one_line_error(*run(capsys, "run", "-n", "5", *args), field)


BAD_FILES = [
    ("bad.yaml", "rat: 3\n", "'rat'"),
    ("bad.toml", "rate = 3\nnum-request = 4\n", "'num-request'"),
    ("type.yaml", "rate: fast\n", "rate must be a number"),
    ("type.toml", 'num_requests = 1.5\n', "num_requests must be an integer"),
    ("type2.yaml", "timeline: maybe\n", "timeline must be true/false"),
    ("broken.yaml", "rate: 3\nseed: [1\n", "line 3"),
    ("broken.toml", "rate = 3\nseed = \n", "line 2"),
    ("list.yaml", "- 1\n- 2\n", "mapping"),
    ("conf.json", "{}", ".yaml"),
]


@pytest.mark.parametrize("name,text,fragment", BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_bad_config_file_is_one_line_naming_file_and_field(capsys, tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run(capsys, "run", "--config", str(path))
    assert_one_line_error(code, out, err, fragment)
    assert str(path) in err


@pytest.mark.parametrize("name,text,fragment", [
    ("params.yaml", "policy: sarathi\npolicy_params: {chunk_size: abc}\n", "chunk_size must be int"),
    ("slo.toml", "[slo]\nttft_ms = -4\n", "slo.ttft_ms must be a positive number"),
    ("types.yaml", "types: [{prompt: 5}]\n", "types"),
    ("sched.yaml", "arrival: piecewise\nrate_schedule: [[1, 2, 3]]\n", "rate_schedule"),
])
def test_bad_nested_config_value(capsys, tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    assert_one_line_error(*run(capsys, "run", "--config", str(path)), fragment)


def test_missing_config_file(capsys, tmp_path):
    code, out, err = run(capsys, "run", "--config", str(tmp_path / "nope.yaml"))
    assert_one_line_error(code, out, err, "nope.yaml")


# ---------------------------------------------------------------------------------------------
# Runs


def test_run_with_no_arguments_simulates_the_default(capsys):
    code, out, err = run(capsys, "run")
    assert code == 0, err
    default = RunConfig()
    assert f"{default.policy} on {default.model} / {default.gpu}" in out
    assert f"{RunConfig.DEFAULT_NUM_REQUESTS} / 0 / 0" in out     # completed / rejected / unfinished
    for label in ("TTFT (ms)", "TPOT (ms)", "E2E latency (ms)", "request throughput"):
        assert label in out


@pytest.mark.parametrize("suffix,text", [
    (".yaml", "policy: sarathi\npolicy_params: {chunk_size: 256}\nrate: 8\nnum_requests: 40\n"
              "prompt_len: 64:256\noutput_len: '4:32'\nkv_capacity: 20000\nseed: 3\n"
              "slo: {ttft_ms: 500}\n"),
    (".toml", 'policy = "sarathi"\nrate = 8\nnum-requests = 40\nprompt_len = "64:256"\n'
              'output_len = "4:32"\nkv_capacity = 20000\nseed = 3\n[policy_params]\n'
              'chunk_size = 256\n[slo]\nttft_ms = 500\n'),
])
def test_config_file_gives_the_same_run_as_flags(capsys, tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    from_file = summary_of(capsys, "--config", str(path))
    from_flags = summary_of(capsys, "--policy", "sarathi", "-p", "chunk_size=256", "--rate", "8",
                            "-n", "40", "--prompt-len", "64:256", "--output-len", "4:32",
                            "--kv-capacity", "20000", "--seed", "3", "--slo", "ttft=500")
    assert from_file == from_flags
    assert from_file["policy"] == {"policy": "sarathi", "chunk_size": 256, "max_num_seqs": 256,
                                   "watermark": 0.01, "victim": "latest-admitted"}
    assert "slo_attainment" in from_file
    # Flags override the file.
    assert summary_of(capsys, "--config", str(path), "--seed", "4") != from_file


def test_outputs_csv_and_parquet(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "run", *SMALL, "--out", str(out_dir))
    assert code == 0, err
    csv = pd.read_csv(out_dir / "requests.csv")
    assert tuple(csv.columns) == REQUEST_COLUMNS and len(csv) == 40
    timeline = pd.read_csv(out_dir / "timeline.csv")
    assert tuple(timeline.columns) == TIMELINE_COLUMNS
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["completed"] == 40 and summary["iterations"] == len(timeline)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["num_requests"] == 40

    code, _, err = run(capsys, "run", *SMALL, "--out", str(out_dir), "--requests-format",
                       "parquet", "--no-timeline", "--replace")
    assert code == 0, err
    parquet = pd.read_parquet(out_dir / "requests.parquet")
    pd.testing.assert_frame_equal(parquet[["request_id", "arrival_s", "ttft_ms", "e2el_ms"]],
                                  csv[["request_id", "arrival_s", "ttft_ms", "e2el_ms"]])
    assert list(parquet.status.unique()) == ["completed"]


def test_failed_run_keeps_earlier_outputs(capsys, tmp_path):
    out_dir = tmp_path / "run"
    assert run(capsys, "run", *SMALL, "--out", str(out_dir))[0] == 0
    before = (out_dir / "summary.json").read_text()
    assert run(capsys, "run", *SMALL, "--out", str(out_dir), "--policy", "nope")[0] == 2
    assert (out_dir / "summary.json").read_text() == before
    assert sorted(p.name for p in out_dir.iterdir()) == \
        ["config.json", "manifest.json", "requests.csv", "summary.json", "timeline.csv"]


def test_policies_and_presets_list_everything(capsys):
    code, out, _ = run(capsys, "policies")
    assert code == 0
    for name in policy_names():
        assert name in out
    code, out, _ = run(capsys, "policies", "sarathi")
    assert code == 0 and "chunk_size" in out
    code, out, _ = run(capsys, "presets")
    assert code == 0
    for name in ("llama-2-7b", "llama-2-13b", "llama-3-8b", "a100-80gb", "h100-80gb", "h200"):
        assert name in out


def test_long_runs_report_progress():
    seen = []
    cfg = RunConfig(rate=20, num_requests=1000, prompt_len="16", output_len="128").validate()
    result = simulate(cfg, progress=lambda done, total: seen.append((done, total)))
    assert result.summary["iterations"] > 3 * 1024
    assert all(total == 1000 for _, total in seen)
    done = [d for d, _ in seen]
    assert done[0] == 0 and done[-1] == 1000 and done == sorted(done)
    assert len(set(done)) >= 4                  # it advances during the run, not just at the ends


def test_progress_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")      # rich treats the captured stderr as a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    code, out, err = run(capsys, "run", "-n", "400", "--rate", "20", "--prompt-len", "512",
                         "--output-len", "32")
    assert code == 0
    import re
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err)     # drop the terminal's escape codes
    assert "simulating" in plain and "400/400 requests done" in plain


def test_restart_preemption_with_vllm_in_the_loop_is_refused_with_the_other_fields():
    """Validated with the config (a sweep validates every point before running any), not only
    when the run starts: vLLM always recomputes."""
    with pytest.raises(ConfigError, match="preemption restart needs engine native"):
        RunConfig(engine="vllm", preemption="restart").validate()
