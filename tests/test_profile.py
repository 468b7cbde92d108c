"""servesim profile: the engine-side step hook, the grid, fits and errors against measurements,
and one real profile of the tiny model on vLLM's CPU engine; the sim-vs-real helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from simulator.cost.base import BatchShape
from simulator.cost.linear import LinearCost
from simulator.cost.measured import (Measurement, error_summary, fit_measurements,
                                     relative_errors, summarise)
from simulator.vllm import profile as P
from simulator.vllm import steps as S
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import sim_vs_real as svr  # noqa: E402


def shape_of(point: P.GridPoint) -> BatchShape:
    return BatchShape.of(prefill=[(point.prefill, point.context)] if point.prefill else [],
                         decode_kv=[point.kv] * point.batch)


# -- the hook -----------------------------------------------------------------------------------

def fake_request(prompt: int, computed: int):
    return SimpleNamespace(num_prompt_tokens=prompt, num_computed_tokens=computed)


def test_batch_of_splits_prefill_chunks_and_decodes():
    # After schedule(): computed already includes this step's tokens.
    requests = {"a": fake_request(100, 100),      # whole prompt in one step, from scratch
                "b": fake_request(300, 256),      # a 128-token chunk at context 128
                "c": fake_request(50, 61),        # a decode: 60 tokens known before the step
                "d": fake_request(80, 81)}        # the first decode after its prefill
    prefill, decode_kv = S.batch_of({"a": 100, "b": 128, "c": 1, "d": 1}, requests)
    assert prefill == [(100, 0), (128, 128)]
    assert decode_kv == [61, 81]        # KV including the token computed this step


class FakeScheduler:
    """The two calls the engine core makes per step, with vLLM's bookkeeping: schedule()
    advances num_computed_tokens by the scheduled tokens."""

    def __init__(self, plan):
        self.plan = list(plan)           # per step: {request id: tokens}
        self.requests = {}
        self.model_time = 0.02

    def add_request(self, request):
        self.requests[request.request_id] = request

    def schedule(self):
        step = self.plan.pop(0)
        for rid, n in step.items():
            self.requests[rid].num_computed_tokens += n
        return SimpleNamespace(num_scheduled_tokens=step,
                               total_num_scheduled_tokens=sum(step.values()))

    def update_from_output(self, scheduler_output, model_runner_output):
        return {}


class TimedFake(S.StepTimingMixin, FakeScheduler):
    pass


def test_hook_records_one_timing_per_step_with_its_shape(tmp_path, monkeypatch):
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv(S.ENV_STEP_LOG, str(log))
    plan = [{"x": 64}, {"x": 1, "y": 32}, {}, {"x": 1, "y": 1}]
    sched = TimedFake(plan)
    sched.keep_step_records = True
    for rid, prompt in (("x", 64), ("y", 32)):
        sched.add_request(SimpleNamespace(request_id=rid, num_prompt_tokens=prompt,
                                          num_computed_tokens=0, arrival_time=time.time()))
    sleeps = [0.03, 0.0, 0.0, 0.01]
    for pause in sleeps:
        out = sched.schedule()
        time.sleep(pause)                            # the model runs here
        sched.update_from_output(out, None)
    recs = sched.step_records
    # The empty step (nothing scheduled: the engine does not run the model) is not recorded.
    assert [(r.prefill, r.decode_kv) for r in recs] == [
        ([(64, 0)], []), ([(32, 0)], [65]), ([], [66, 33])]
    assert recs[0].model_s >= 0.03 and recs[2].model_s >= 0.01 and recs[1].model_s < 0.03
    logged = S.read_step_log(log)
    assert [s["prefill"] for s in logged["step"]] == [[[64, 0]], [[32, 0]], []]
    assert [a["request_id"] for a in logged["arrival"]] == ["x", "y"]


def test_a_server_keeps_no_steps_in_memory_only_in_its_log(tmp_path, monkeypatch):
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv(S.ENV_STEP_LOG, str(log))
    sched = TimedFake([{"x": 8}] * 50)
    sched.add_request(SimpleNamespace(request_id="x", num_prompt_tokens=400,
                                      num_computed_tokens=0, arrival_time=0.0))
    for _ in range(50):
        sched.update_from_output(sched.schedule(), None)
    assert sched.step_records == []
    steps = S.read_step_log(log)["step"]
    assert [s["prefill"] for s in steps] == [[[8, 8 * i]] for i in range(50)]


def test_an_unwritable_step_log_is_one_line(tmp_path, monkeypatch):
    from simulator.errors import ConfigError
    monkeypatch.setenv(S.ENV_STEP_LOG, str(tmp_path / "missing" / "steps.jsonl"))
    with pytest.raises(ConfigError, match=r"^SERVESIM_STEP_LOG=.*steps.jsonl: cannot open "):
        TimedFake([])


def test_read_step_log_names_the_bad_line(tmp_path):
    log = tmp_path / "steps.jsonl"
    log.write_text(json.dumps({"kind": "step", "start": 0}) + "\nnot json\n")
    with pytest.raises(Exception, match=r"steps.jsonl, line 2: not a step-log record"):
        S.read_step_log(log)


# -- the grid -----------------------------------------------------------------------------------

def test_grid_covers_prefill_decode_and_mixed_with_block_aligned_contexts():
    grid = P.engine_grid(1024, 32, 1024, block_size=128)
    kinds = {p.kind for p in grid}
    assert kinds == {"prefill", "decode", "mixed"}
    assert [p.prefill for p in grid if p.kind == "prefill" and not p.context] == \
        [16, 64, 256, 1024]
    contexts = [p.context for p in grid if p.context]
    assert contexts and all(c % 128 == 0 for c in contexts)
    assert {p.batch for p in grid if p.kind == "decode"} == {1, 4, 16, 32}
    assert len({p.label for p in grid}) == len(grid)


def test_grid_point_matches_only_its_own_batch():
    p = P.GridPoint(batch=4, kv=256)
    step = S.StepRecord(0, 0.01, 0, prefill=[], decode_kv=[256, 257, 258, 256])
    assert p.matches(step)
    assert not p.matches(S.StepRecord(0, 0.01, 0, prefill=[], decode_kv=[256] * 3))
    assert not p.matches(S.StepRecord(0, 0.01, 0, prefill=[(16, 0)], decode_kv=[256] * 4))
    mixed = P.GridPoint(prefill=128, batch=4, kv=256)
    assert mixed.matches(S.StepRecord(0, 0.01, 0, prefill=[(128, 0)], decode_kv=[256] * 4))
    cached = P.GridPoint(prefill=128, context=256)
    assert cached.matches(S.StepRecord(0, 0.01, 0, prefill=[(128, 256)]))
    assert not cached.matches(S.StepRecord(0, 0.01, 0, prefill=[(384, 0)]))   # a cache miss


# -- fits and errors ----------------------------------------------------------------------------

def test_fit_recovers_known_coefficients_from_synthetic_timings():
    truth = LinearCost(c0=3e-3, c_prefill=1.1e-4, c_decode=4.3e-4, c_kv=3.4e-7)
    samples = []
    for point in P.engine_grid(1024, 32, 1024):
        shape = shape_of(point)
        t = truth.iteration_time(shape)
        # Three samples per point; the median is the true time, the others disturbed.
        samples += [(point.label, shape, t), (point.label, shape, t * 1.5),
                    (point.label, shape, t * 0.9)]
    points = summarise(samples)
    fit = fit_measurements(points)
    for term in ("c0", "c_prefill", "c_decode", "c_kv"):
        assert getattr(fit.cost, term) == pytest.approx(getattr(truth, term), rel=1e-9)
    assert fit.max_rel_error < 1e-9
    lo = fit_measurements(points, statistic="min").cost        # fitted to the 0.9 x samples
    assert lo.c0 == pytest.approx(0.9 * truth.c0, rel=1e-9)


def test_relative_errors_are_against_the_chosen_statistic():
    shape = BatchShape.of(decode_kv=[100])
    p = Measurement("decode 1 x kv 100", shape, median_s=0.010, min_s=0.008, samples=5)
    model = {"fixed": LinearCost(c0=0.012)}
    rows = relative_errors([p], model)
    assert rows[0]["fixed_ms"] == pytest.approx(12.0)
    assert rows[0]["fixed_error"] == pytest.approx(0.2)
    assert relative_errors([p], model, "min")[0]["fixed_error"] == pytest.approx(0.5)
    assert error_summary(rows, model)["fixed"]["median_abs_error"] == pytest.approx(0.2)


# -- a real engine ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_profile(tmp_path_factory):
    from tests.conftest import require_vllm
    require_vllm()
    from simulator.vllm.models import tiny_model
    root = tmp_path_factory.mktemp("profile")
    model = tiny_model(root / "tiny", layers=2, hidden_size=128, max_model_len=1024)
    out = root / "out"
    # In its own process: an in-process vLLM engine sets process-wide state (LD_PRELOAD,
    # thread binding) that later tests must not inherit.
    proc = subprocess.run([sys.executable, "-m", "simulator", "profile", str(model), "--out",
                           str(out), "--max-tokens", "64", "--max-batch", "2", "--max-kv",
                           "128", "--samples", "2", "--warmup", "0", "--rounds", "1",
                           "--executor", "uni"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fitted linear cost: --cost-model linear --cost-param c0=" in proc.stdout
    return model, out


def test_real_engine_profile_records_each_grid_point_with_its_shape(real_profile):
    _, out = real_profile
    grid = P.engine_grid(64, 2, 128)
    steps = pd.read_csv(out / "steps.csv")
    assert list(steps.groupby("point", sort=False).size().index) == [p.label for p in grid]
    assert (steps.groupby("point").size() == 2).all()          # --samples 2 per point
    for point in grid:
        rows = steps[steps.point == point.label]
        assert (rows.prefill_tokens == point.prefill).all()
        assert (rows.prefill_context == point.context).all()    # prefix-cache hits, exactly
        assert (rows.decode_requests == point.batch).all()
        assert (rows.decode_kv_tokens >= point.batch * point.kv).all()
        assert (rows.model_s > 0).all() and (rows.step_s > rows.model_s).all()


def test_real_engine_profile_loads_in_profile_cost_and_scores_each_model(real_profile):
    from simulator.cost.profile import ProfileCost
    from simulator.hardware import GPUSpec
    from simulator.vllm.models import spec_of_folder
    model, out = real_profile
    meta = json.loads((out / "profile.json").read_text())
    spec = spec_of_folder(model)
    peaks = meta["device_peaks"]
    cost = ProfileCost(out / "mlp.csv", spec, GPUSpec("cpu", 0, peaks["peak_flops"],
                                                      peaks["memory_bandwidth"]))
    assert cost.iteration_time(BatchShape.of(prefill=[(32, 0)], decode_kv=[64])) > 0
    assert set(meta["errors"]) == {"linear", "linear_d0_d1", "profile", "roofline"}
    errors = pd.read_csv(out / "errors.csv")
    its = pd.read_csv(out / "iterations.csv")
    assert len(errors) == len(its) == len(P.engine_grid(64, 2, 128))
    lin = LinearCost(**{k: meta["models"]["linear"][k]
                        for k in ("c0", "c_prefill", "c_decode", "c_kv")})
    row = its.iloc[0]
    shape = BatchShape(**{s: row[s] for s in BatchShape.__slots__})
    assert meta["fitted_to"] == "min"                    # the default
    assert errors.iloc[0]["linear_error"] == pytest.approx(
        (lin.iteration_time(shape) - row.min_s) / row.min_s)


# -- sim vs real helpers -------------------------------------------------------------------------

def test_front_end_delay_is_client_minus_engine_ttft_in_send_order():
    records = [{"sent_s": 1.0, "token_times": [1.30, 1.4], "done_s": 1.5, "prompt_tokens": 20,
                "error": None},
               {"sent_s": 0.0, "token_times": [0.25, 0.3], "done_s": 0.6, "prompt_tokens": 10,
                "error": None}]
    events = {"arrival": [{"request_id": "b", "engine_time": 101.05, "arrival_time": 101.04,
                           "prompt_tokens": 20},
                          {"request_id": "a", "engine_time": 100.02, "arrival_time": 100.01,
                           "prompt_tokens": 10}],
              "first_token": [{"request_id": "a", "engine_time": 100.22},
                              {"request_id": "b", "engine_time": 101.25}],
              "finish": [{"request_id": "a", "engine_time": 100.52},
                         {"request_id": "b", "engine_time": 101.45}]}
    d = svr.front_end_delays(records, events)
    assert d["ttft_s"] == pytest.approx([0.25 - 0.20, 0.30 - 0.20])
    assert d["e2e_s"] == pytest.approx([0.6 - 0.50, 0.5 - 0.40])
    assert d["api_to_engine_s"] == pytest.approx([0.01, 0.01])


def test_sim_vs_real_table_errors_are_relative_to_the_client():
    real = {"median_ttft_ms": 50.0, "median_tpot_ms": 5.0, "median_itl_ms": 4.0,
            "median_e2el_ms": 300.0, "request_throughput": 1.0, "output_throughput": 64.0}
    sim = {"median_ttft_ms": 30.0, "median_tpot_ms": 5.5, "median_e2el_ms": 280.0,
           "request_throughput": 1.0, "output_throughput": 64.0}
    sim_fe = {**sim, "median_ttft_ms": 50.0, "median_e2el_ms": 300.0}
    rows = {r["metric"]: r for r in svr.table(real, sim, sim_fe)}
    assert rows["median TTFT (ms)"]["error"] == pytest.approx(-0.4)
    assert rows["median TTFT (ms)"]["error_plus_front_end"] == pytest.approx(0.0)
    assert rows["median TPOT (ms)"]["error_plus_front_end"] == pytest.approx(0.1)
    assert rows["median ITL (ms)"]["sim"] == 5.5          # the simulator's ITL is its TPOT
    assert rows["median ITL (ms)"]["error"] == pytest.approx(0.375)
    assert rows["request throughput (req/s)"]["error"] == 0.0


def test_profile_cli_errors_are_one_line(tmp_path, capsys):
    from simulator.cli import main
    assert main(["profile", str(tmp_path), "--out", str(tmp_path / "out"), "--refit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"servesim: error: model folder {tmp_path} has no config.json (make one with "
                   f"`servesim model tiny DIR`)"]
    (tmp_path / "config.json").write_text(json.dumps({
        "num_attention_heads": 4, "num_hidden_layers": 2, "hidden_size": 128,
        "intermediate_size": 344, "vocab_size": 512, "max_position_embeddings": 512}))
    assert main(["profile", str(tmp_path), "--out", str(tmp_path / "out"), "--refit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"servesim: error: --refit: {tmp_path / 'out' / 'steps.csv'} is missing "
                   f"(run servesim profile first)"]


def test_live_and_simulated_step_figures(tmp_path):
    cost = LinearCost(c0=0.004, c_decode=0.001)
    steps = [{"start": 0.0, "model_s": 0.0045, "schedule_s": 0.0002, "update_s": 0.0003,
              "prefill": [], "decode_kv": [10]},                       # exact: 5 ms
             {"start": 0.1, "model_s": 0.0050, "schedule_s": 0.0005, "update_s": 0.0005,
              "prefill": [], "decode_kv": [10, 20]}]                   # 6 ms, predicted 6
    live = svr.step_errors(steps, cost)
    assert live["median_abs_error"] == pytest.approx(0.0, abs=1e-12)
    assert live["busy_s"] == pytest.approx(0.011)
    assert live["mean_decode_batch"] == 1.5
    timeline = tmp_path / "timeline.csv"
    timeline.write_text("start_s,duration_s,decode_requests\n0,0.004,1\n0.1,0.006,3\n"
                        "0.2,0.010,2\n")
    sim = svr.sim_steps(timeline)
    assert sim == {"steps": 3, "median_step_ms": pytest.approx(6.0), "busy_s": pytest.approx(0.02),
                   "mean_decode_batch": 2.0}
