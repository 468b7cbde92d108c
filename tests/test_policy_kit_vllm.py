"""The vLLM adapter checks a policy's answer as the simulator's engine does (scheduler.base
.decide and check_victims): a mistake is named at the step it happens, inside vLLM's scheduler."""

from __future__ import annotations

import pytest

from tests.conftest import require_vllm

require_vllm()

from scheduler import (Decision, PolicyViolation, QueuedPolicy, ReplicaSpec,  # noqa: E402
                       StepPlan)
from simulator.hardware import model_spec  # noqa: E402
from simulator.vllm.loop import build_scheduler, model_output, vllm_request  # noqa: E402
from traces.request import Request  # noqa: E402

OPTIONS = {"max_num_seqs": 16, "max_num_batched_tokens": 256, "enable_chunked_prefill": True,
           "long_prefill_token_threshold": 0}


class _Mistaken(QueuedPolicy):
    """Admits everything; on its second step makes one mistake with the latest admitted."""

    name = "mistaken"

    def __init__(self, mistake):
        super().__init__()
        self.mistake = mistake
        self.steps = 0

    def schedule(self, view):
        self.steps += 1
        if self.mistake == "not a decision":
            return [r for r in view.resident]
        plan = StepPlan(view, float("inf"), on_preempt=self.requeue_preempted)
        if self.steps == 1:
            plan.admit_waiting(self.waiting)
            return plan.decision()
        first, last = view.resident[0], view.resident[-1]
        if self.mistake == "reschedule":        # the StepPlan trap
            plan.preempt(last)
            plan.schedule_resident(last, 1)
        if self.mistake == "lose":              # a hand-made decision, victim not requeued
            return Decision(preempt=[last], decode=[first])
        return plan.decision()


@pytest.mark.parametrize("mistake,message", [
    ("not a decision", r"^policy mistaken at t=0.000000s: schedule returned list \[\], not a "
                       r"Decision$"),
    ("reschedule", r"^policy mistaken at t=1.000000s: request 1 was preempted earlier in this "
                   r"step and cannot be scheduled in it"),
    ("lose", r"^policy mistaken at t=1.000000s: request 1 was preempted but the policy did not "
             r"put it back in its waiting queue"),
])
def test_the_adapter_names_a_policy_mistake_at_its_step(mistake, message):
    sched = build_scheduler(model_spec("llama-2-7b"),
                            ReplicaSpec(num_blocks=60, block_size=16, max_model_len=4096),
                            OPTIONS)
    sched.configure(_Mistaken(mistake))
    now = [0.0]
    sched.clock = lambda: now[0]
    for i in range(2):
        sched.add_request(vllm_request(Request(i, 0.0, 20, 5)))
    with pytest.raises(PolicyViolation, match=message):
        out = sched.schedule()
        sched.update_from_output(out, model_output(out, sched.requests))
        now[0] = 1.0
        sched.schedule()
