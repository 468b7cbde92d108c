"""The object ``servesim serve`` names as vLLM's ``--scheduler-cls``, called the way vLLM's engine
core calls it (``Scheduler(vllm_config=..., ...)``), inside vLLM's real scheduler on the CPU."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_vllm

require_vllm()

from scheduler.base import PolicyError  # noqa: E402
from scheduler.state import ReplicaSpec  # noqa: E402
from simulator.hardware import model_spec  # noqa: E402
from simulator.vllm import server  # noqa: E402
from simulator.vllm.loop import build_scheduler, model_output, vllm_request  # noqa: E402
from simulator.vllm.plugin import ENV_PARAMS, ENV_POLICY  # noqa: E402
from traces.request import Request  # noqa: E402

OPTIONS = {"max_num_seqs": 8, "max_num_batched_tokens": 256, "enable_chunked_prefill": True,
           "long_prefill_token_threshold": 0}


def built(async_scheduling: bool | None = None):
    """The factory called with the engine core's arguments, ``async_scheduling`` set as if vLLM
    had resolved it so (a live CPU server resolves it to off: tests/test_live_engine.py)."""
    captured = {}
    build_scheduler(model_spec("llama-2-7b"), ReplicaSpec(40, 16, 2048), OPTIONS,
                    scheduler_cls=lambda **kwargs: captured.update(kwargs),
                    async_scheduling=bool(async_scheduling))
    if async_scheduling is not None:
        captured["vllm_config"].scheduler_config.async_scheduling = async_scheduling
    return server.servesim_scheduler(**captured)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_the_factory_follows_the_engines_resolved_mode_and_binds_the_policy(
        monkeypatch, async_scheduling):
    monkeypatch.setenv(ENV_POLICY, "sjf")
    monkeypatch.setenv(ENV_PARAMS, "predictor=oracle")
    lines = []
    monkeypatch.setattr(server, "report_active", lines.append)
    sched = built(async_scheduling)
    assert type(sched).__name__ == ("ServesimAsyncScheduler" if async_scheduling
                                    else "ServesimScheduler")
    assert sched.servesim_policy.name == "sjf"           # bound at start-up, before a request
    assert sched.servesim_spec.num_blocks == 40
    assert sched.vllm_config.scheduler_config.async_scheduling is async_scheduling
    mode = "on" if async_scheduling else "off"
    assert len(lines) == 1 and lines[0].startswith("servesim: policy sjf active (")
    assert "predictor=oracle" in lines[0] and "max_num_seqs=8" in lines[0]
    assert f"(async scheduling {mode}), KV 40 blocks of 16 tokens, max_num_seqs 8, " \
           f"max_num_batched_tokens 256" in lines[0]


def test_a_configuration_the_policy_cannot_use_fails_at_start_up(monkeypatch):
    monkeypatch.setenv(ENV_POLICY, "wait")      # neither a workload nor thresholds
    with pytest.raises(PolicyError, match="policy wait needs the workload"):
        built(False)


def test_policy_events_record_what_the_policy_was_told(monkeypatch, tmp_path):
    from vllm.v1.request import RequestStatus
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(ENV_POLICY, "vllm-v1")
    monkeypatch.setenv(server.ENV_EVENTS, str(events))
    monkeypatch.setattr(server, "report_active", lambda line: None)
    sched = built(False)
    reqs = {str(i): vllm_request(Request(i, 0.0, 20, 10)) for i in range(2)}
    for r in reqs.values():
        sched.add_request(r)
    for _ in range(3):
        out = sched.schedule()
        sched.update_from_output(out, model_output(out, reqs))
    sched.finish_requests(["1"], RequestStatus.FINISHED_ABORTED)     # a client went away
    while sched.has_unfinished_requests():
        out = sched.schedule()
        sched.update_from_output(out, model_output(out, reqs))
    seen = [(e["event"], e["id"]) for e in map(json.loads, events.read_text().splitlines())]
    assert seen[:2] == [("arrival", 0), ("arrival", 1)]
    assert ("abort", 1) in seen and ("finish", 0) in seen
    abort = [json.loads(x) for x in events.read_text().splitlines()
             if json.loads(x)["event"] == "abort"][0]
    assert (abort["prompt"], abort["output"]) == (20, 10) and 1 <= abort["generated"] < 10
