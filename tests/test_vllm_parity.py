"""Parity of the two engines: servesim's native engine and vLLM's real scheduler in the loop,
both running the vllm-v1 policy on the same workload and cost model."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import simulator.vllm  # noqa: F401  (registers the engine "vllm" that simulate() runs)
from simulator.cli import main
from simulator.config import RunConfig
from simulator.runner import simulate
from tests.conftest import ROOT, require_vllm

# A moderate load with KV pressure: preemptions happen, queues build and drain.
MODERATE = dict(policy="vllm-v1", num_requests=300, rate=8.0, kv_capacity=20000,
                prompt_len="128:2048", output_len="16:512", seed=3)
TOLERANCE = 0.02    # relative, on mean TTFT and mean end-to-end latency


def test_native_and_vllm_engines_agree_on_a_moderate_workload():
    require_vllm()
    native = simulate(RunConfig(**MODERATE).validate())
    looped = simulate(RunConfig(engine="vllm", **MODERATE).validate())
    a, b = native.summary, looped.summary
    assert a["completed"] == b["completed"] == 300
    assert a["preemptions"] > 0                       # the workload exercised preemption
    for key in ("mean_ttft_ms", "mean_e2el_ms"):
        assert b[key] == pytest.approx(a[key], rel=TOLERANCE), key
    assert b["engine"] == "vllm" and b["vllm"]["version"] == "0.32.0"
    # Same schema, row for row.
    assert list(native.requests.columns) == list(looped.requests.columns)
    assert list(native.timeline.columns) == list(looped.timeline.columns)


@pytest.mark.parametrize("gate", [True, False])
def test_engines_agree_with_and_without_the_full_prompt_admission_gate(gate):
    """Long prompts, a small token budget and little KV, where vLLM 0.32's full-prompt admission
    gate (scheduler_reserve_full_isl, the vllm-v1 parameter reserve_full_prompt) decides
    everything: with it few preemptions, without it many. The engines agree either way."""
    require_vllm()
    cfg = dict(policy="vllm-v1", num_requests=120, rate=6.0, kv_capacity=8000,
               policy_params={"max_num_batched_tokens": 512, "reserve_full_prompt": gate},
               prompt_len="1024:3000", output_len="8:64", seed=5)
    native = simulate(RunConfig(**cfg).validate()).summary
    looped = simulate(RunConfig(engine="vllm", **cfg).validate()).summary
    assert native["completed"] == looped["completed"] == 120
    assert native["preemptions"] == looped["preemptions"]
    assert (native["preemptions"] < 20) if gate else (native["preemptions"] > 100)
    for key in ("mean_ttft_ms", "mean_e2el_ms"):
        assert looped[key] == pytest.approx(native[key], rel=TOLERANCE), key
    assert looped["vllm"]["divergent_steps"] == 0


# Two regimes for the fluid policies: MODERATE overloads them (fractional, capped thresholds:
# paced admissions, Nested WAIT's memory repair preempts); TYPED is inside the stable region
# (WAIT thresholds 2 and 1, patience timers of 0.13 s release the gates).
FLUID_WORKLOADS = {"overload": dict(MODERATE, num_requests=100),
                   "stable": dict(num_requests=300, types=["p512d20:14", "p512d50:6"],
                                  kv_capacity=137_000, seed=3)}


@pytest.mark.parametrize("workload", FLUID_WORKLOADS)
@pytest.mark.parametrize("policy,params", [
    ("wait", {}), ("nested-wait", {}), ("mcsf", {"predictor": "noisy"}),
    ("wait", {"chunk_size": 512}), ("nested-wait", {"chunk_size": 512})])
def test_engines_agree_exactly_on_the_fluid_policies(workload, policy, params):
    """WAIT, Nested WAIT (whole prompts and chunked) and MC-SF run inside vLLM exactly as in
    the native engine: every request's TTFT and latency, the preemptions and the iterations
    agree, and vLLM carries out every decision. Tolerance: float rounding only. (Chunked WAIT
    once differed: the loop gave vLLM the chunk size as its step budget, which cut WAIT-CP's
    several chunks per step.)"""
    require_vllm()
    cfg = dict(FLUID_WORKLOADS[workload], policy=policy, policy_params=params)
    native = simulate(RunConfig(**cfg).validate())
    looped = simulate(RunConfig(engine="vllm", **cfg).validate())
    a, b = native.summary, looped.summary
    assert a["completed"] == b["completed"] == cfg["num_requests"]
    assert (a["preemptions"], a["iterations"]) == (b["preemptions"], b["iterations"])
    for key in ("ttft_ms", "e2el_ms"):
        assert looped.requests[key].tolist() == pytest.approx(native.requests[key].tolist(),
                                                              rel=1e-9, abs=1e-9), key
    assert b["vllm"]["divergent_steps"] == b["vllm"]["requeued"] == 0
    if workload == "stable" and policy == "wait":
        assert a["policy"]["thresholds"] == [2.0, 1.0] and a["policy"]["patience_s"] > 0.1


def test_servesim_run_engine_vllm_writes_the_run_schema(tmp_path):
    require_vllm()
    out = tmp_path / "run"
    code = main(["run", "--engine", "vllm", "-n", "40", "--rate", "4", "--policy", "sjf",
                 "--out", str(out), "-q"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 40 and summary["engine"] == "vllm"
    frame = pd.read_csv(out / "requests.csv")
    assert (frame["status"] == "completed").all() and frame["ttft_ms"].gt(0).all()
    assert json.loads((out / "config.json").read_text())["engine"] == "vllm"


def test_engine_vllm_without_vllm_is_one_line_and_exit_2():
    """Hide vLLM (as on a machine without the extra): one clear line, exit status 2."""
    code = ("import sys; sys.modules['vllm'] = None\n"
            "from simulator.cli import main\n"
            "sys.exit(main(['run', '--engine', 'vllm', '-n', '5', '-q']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "engine vllm needs vLLM" in lines[0]


def test_scheduler_package_and_cli_import_without_vllm():
    code = ("import sys; import scheduler, simulator.vllm.plugin, simulator.cli, "
            "simulator.runner, simulator.vllm.loop\n"
            "from simulator.cli import _register_commands; _register_commands()\n"
            "print('vllm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
