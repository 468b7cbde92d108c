"""vLLM in the loop (simulator/vllm/loop.py): simulated time around vLLM's real scheduler."""

from __future__ import annotations

import pytest

from tests.conftest import require_vllm

require_vllm()

from scheduler.base import QueuedPolicy, make_policy, register  # noqa: E402
from scheduler.plan import StepPlan  # noqa: E402
from scheduler.state import Decision, ReplicaSpec  # noqa: E402
from simulator.cost.linear import LinearCost  # noqa: E402
from simulator.engine import Engine  # noqa: E402
from simulator.errors import SimulationStalled  # noqa: E402
from simulator.hardware import model_spec  # noqa: E402
from simulator.vllm.loop import VllmLoopEngine  # noqa: E402
from tests.vllm_helpers import RejectLong  # noqa: E402
from traces.request import Request  # noqa: E402

COST = LinearCost.paper(d0=0.01, d1=1e-5)
SPEC = ReplicaSpec(num_blocks=200, block_size=16, max_model_len=4096, cost_model=COST)


def run(policy, requests):
    return VllmLoopEngine(requests, policy, COST, SPEC, model_spec("llama-2-7b")).run()


@register
class BatchOfFour(QueuedPolicy):
    """No new prefill until 4 requests wait (or no more will arrive), then all of them; a
    request that waited ``patience`` seconds is released alone (``wake_at``)."""
    name = "test-batch-of-four"
    patience = None

    def schedule(self, view):
        plan = StepPlan(view, float("inf"))
        for req in plan.running:
            plan.schedule_resident(req, req.remaining)
        waiting = self.waiting
        due = self.patience is not None and waiting and \
            view.now >= waiting.peek().arrival_s + self.patience
        if len(waiting) >= 4 or (view.arrivals_done and waiting) or due:
            while waiting and plan.admit(waiting.peek(), waiting.peek().remaining):
                waiting.pop()
        d = plan.decision()
        if d.empty and waiting and self.patience is not None:
            d.wake_at = waiting.peek().arrival_s + self.patience
        return d


def test_gated_batches_start_together_and_drain_at_the_end():
    reqs = [Request(i, float(i), 32, 3) for i in range(6)]
    raw = run(make_policy("test-batch-of-four"), reqs)
    start = [s.first_scheduled_s for s in raw.states]
    assert start[:4] == [3.0] * 4          # held until the fourth arrival
    assert start[4:] == [5.0, 5.0]         # two are never four: drained once arrivals end
    assert all(s.finished_s is not None for s in raw.states)
    # The native engine runs the same policy to the same times.
    native = Engine(reqs, make_policy("test-batch-of-four"), COST, SPEC).run()
    assert [(s.first_scheduled_s, s.first_token_s, s.finished_s) for s in native.states] == \
        [(s.first_scheduled_s, s.first_token_s, s.finished_s) for s in raw.states]
    # Closed form: a 4-request prefill of 32 tokens each costs d0 + d1 * 4 * 32.
    assert raw.states[0].first_token_s == pytest.approx(3.0 + 0.01 + 1e-5 * 128)


def test_wake_at_releases_a_lone_request_after_its_patience():
    policy = make_policy("test-batch-of-four")
    policy.patience = 0.5
    reqs = [Request(0, 0.0, 32, 2), Request(1, 10.0, 32, 2)]
    raw = run(policy, reqs)
    assert [s.first_scheduled_s for s in raw.states] == [0.5, 10.0]


@register
class Never(QueuedPolicy):
    name = "test-never"

    def schedule(self, view):
        return Decision()


def test_a_policy_that_strands_requests_stops_the_run():
    with pytest.raises(SimulationStalled, match="scheduled nothing"):
        run(make_policy("test-never"), [Request(0, 0.0, 16, 2)])


def test_requests_that_can_never_fit_are_rejected_at_arrival():
    reqs = [Request(0, 0.0, 16, 2), Request(1, 0.0, 4000, 200), Request(2, 0.0, 3300, 10)]
    raw = run(make_policy("vllm-v1"), reqs)
    status = [s.status.value for s in raw.states]
    assert status == ["finished", "rejected", "rejected"]
    assert [s.reject_reason for s in raw.states[1:]] == ["over_max_model_len", "over_kv_capacity"]
    assert "max_model_len" in raw.states[1].reject_detail
    assert "capacity is 3200" in raw.states[2].reject_detail


def test_a_policys_rejections_have_one_code_in_both_engines():
    """Native engine and vLLM in the loop: the code rejected_by_policy, the policy's reason as
    the detail, the arrival check's codes beside it, the summary counting each."""
    from simulator.metrics import Summary, requests_table
    reqs = [Request(0, 0.0, 16, 2), Request(1, 0.0, 100, 2), Request(2, 0.01, 4000, 200),
            Request(3, 0.02, 30, 2)]
    for engine in (Engine(reqs, make_policy(RejectLong), COST, SPEC),
                   VllmLoopEngine(reqs, make_policy(RejectLong), COST, SPEC,
                                  model_spec("llama-2-7b"))):
        frame = requests_table(engine.run().states)
        assert list(frame["status"]) == ["completed", "rejected", "rejected", "completed"]
        assert list(frame["reject_reason"][1:3]) == ["rejected_by_policy", "over_max_model_len"]
        assert frame["reject_detail"][1] == "prompt exceeds 64 tokens"
        assert Summary.of(frame).rejected_by_reason == {"over_max_model_len": 1,
                                                        "rejected_by_policy": 1}


def test_vllm_limits_follow_the_policy_and_never_cut_an_unbudgeted_plan():
    from simulator.vllm.loop import scheduler_options
    v1 = scheduler_options(make_policy("vllm-v1", {"max_num_batched_tokens": 2048,
                                                   "max_num_seqs": 64}), SPEC)
    assert (v1["max_num_batched_tokens"], v1["max_num_seqs"], v1["reserve_full_prompt"]) == \
        (2048, 64, True)
    # Orca has no token budget (whole prompts): vLLM's must hold any step the policy can plan.
    orca = scheduler_options(make_policy("orca"), SPEC)
    assert orca["max_num_batched_tokens"] == SPEC.max_model_len * orca["max_num_seqs"]
    # A chunk size is no step budget: WAIT-CP plans several chunks in one step (Sarathi's plan
    # keeps within its chunk_size anyway).
    for name in ("wait", "sarathi"):
        options = scheduler_options(make_policy(name, {"chunk_size": 256}), SPEC)
        assert options["max_num_batched_tokens"] == SPEC.max_model_len * options["max_num_seqs"]
