"""Invariants every registered policy keeps on random workloads (property-based), checked by the
checker policy authors run on their own classes (simulator/policycheck.py).

Iterates the built-in policies (``builtin_policy_names``), so a policy added to
scheduler/policies is covered without touching this file.
"""

from __future__ import annotations

import itertools
import random

import pytest

from scheduler import QueuedPolicy, StepPlan
from tests.conftest import builtin_policy_names
from simulator.errors import PolicyViolation, SimulationStalled
from simulator.policycheck import InvariantError, check_policy

# Extra parameter sets that exercise a policy's less common paths (small budgets that force
# chunking, a large watermark, a small sequence cap). Each policy also runs with its defaults.
VARIANTS = {
    "vllm": [{"max_num_batched_tokens": 160, "watermark": 0.2}],
    "vllm-v1": [{"max_num_batched_tokens": 24, "max_num_seqs": 3}],
    "sarathi": [{"chunk_size": 16}],
    "sjf": [{"predictor": "noisy", "max_num_batched_tokens": 40}],
    "orca": [{"max_num_seqs": 2}],
}
CASES = [(name, None) for name in builtin_policy_names()] + \
    [(name, v) for name, vs in VARIANTS.items() if name in builtin_policy_names() for v in vs]
# Reserving a request's peak KV at admission makes preemption impossible; the recompute
# policies must meet it on these workloads (their KV is barely above the largest request).
NEVER_PREEMPT = {"orca", "static"}
MUST_PREEMPT = {"vllm", "vllm-v1", "sarathi", "sjf"}


@pytest.mark.parametrize("policy,params", CASES,
                         ids=[f"{n}" + (f"-{i}" if v else "") for i, (n, v) in enumerate(CASES)])
def test_invariants(policy, params):
    report = check_policy(policy, params, max_examples=50)
    assert report.examples >= 40
    assert report.with_rejections > 0
    if policy in NEVER_PREEMPT:
        assert report.with_preemptions == 0
    if policy in MUST_PREEMPT:
        assert report.with_preemptions > 0


class _Greedy(QueuedPolicy):
    """Runs everything resident and admits while KV allows (a correct baseline to break)."""

    name = "greedy"

    def schedule(self, view):
        plan = StepPlan(view, 10_000, on_preempt=self.requeue_preempted)
        plan.schedule_running()
        if not plan.preempted:
            plan.admit_waiting(self.waiting)
        return plan.decision()


class _Forgets(_Greedy):
    """Does not requeue its victims, and cannot say what it queues (so the engine cannot name
    the loss when it happens): the run stalls with the victims unfinished."""

    name = "forgets"

    def schedule(self, view):
        plan = StepPlan(view, 10_000)
        plan.schedule_running()
        if not plan.preempted:
            plan.admit_waiting(self.waiting)
        return plan.decision()

    def is_queued(self, req):
        return None


class _Shuffles(_Greedy):
    """Admits in an order drawn from an unseeded generator: not reproducible."""

    name = "shuffles"
    draws = itertools.count()

    def schedule(self, view):
        if len(self.waiting) > 1:
            items = list(self.waiting)
            random.Random(next(self.draws)).shuffle(items)
            self.waiting = type(self.waiting)()
            for r in items:
                self.waiting.append(r)
        return super().schedule(view)


class _Trap(_Greedy):
    name = "trap"

    def schedule(self, view):
        plan = StepPlan(view, 10_000, on_preempt=self.requeue_preempted)
        for req in list(plan.running):
            plan.schedule_resident(req, req.remaining)
        plan.admit_waiting(self.waiting)
        return plan.decision()


def test_the_checker_passes_a_correct_policy_class():
    report = check_policy(_Greedy, max_examples=20)
    assert report.examples >= 15 and report.with_preemptions > 0
    assert str(report).startswith("policy greedy: invariants hold on ")


@pytest.mark.parametrize("policy,error,message", [
    (_Forgets, SimulationStalled, "scheduled nothing"),
    (_Shuffles, InvariantError, "not deterministic"),
    (_Trap, PolicyViolation, "was preempted earlier in this step"),
])
def test_the_checker_finds_a_workload_that_breaks_a_faulty_policy(policy, error, message):
    with pytest.raises(error, match=message):
        check_policy(policy, max_examples=50, shrink=False)


@pytest.mark.parametrize("policy,params", CASES,
                         ids=[f"{n}" + (f"-{i}" if v else "") for i, (n, v) in enumerate(CASES)])
def test_invariants_with_prefix_sharing(policy, params):
    """Requests sharing prompt prefixes, prefix caching on: besides every invariant above, at
    every step a shared block counts once against capacity, no block in use is freed or
    evictable, and every waiting request's hit is cached (simulator/policycheck.py)."""
    report = check_policy(policy, params, max_examples=50, sharing=True)
    assert report.examples >= 40
    assert report.with_cache_hits > 0
    if policy in MUST_PREEMPT:
        assert report.with_preemptions > 0
