"""The policy author's kit (scheduler/__init__.py): the mistakes a new policy easily makes are
refused at once, in one line naming the request or the class and the rule; a policy class runs
by path (package.module:Class); a plug-in that fails to load does not take the others down; and
StepPlan's admission helper keeps the whole-prompt safeguard unless a policy opts out."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
import textwrap

import pytest

import scheduler.base as base
from scheduler import (Decision, FCFSQueue, PolicyError, PolicyViolation, QueuedPolicy,
                       ReplicaSpec, ReplicaView, RequestState, Status, StepPlan, make_policy,
                       param, policy_class, policy_names, register)
from simcase import requests, simulate
from simulator.cli import main


def view_of(resident, num_blocks, block_size=1):
    spec = ReplicaSpec(num_blocks=num_blocks, block_size=block_size, max_model_len=1000)
    view = ReplicaView(spec)
    view.resident = list(resident)
    view.free_blocks = num_blocks - sum(r.kv_blocks for r in resident)
    return view


def resident(rid, prompt, output, computed, generated=0):
    r = RequestState(rid, 0.0, prompt, output)
    r.status, r.computed, r.generated, r.kv_blocks = Status.RESIDENT, computed, generated, computed
    return r


# ---------------------------------------------------------------------------------------------
# The StepPlan trap: a victim scheduled again in the step that preempted it


def test_step_plan_refuses_to_schedule_a_request_it_preempted_in_the_same_step():
    a, b = resident(0, 10, 5, computed=10, generated=1), resident(1, 10, 5, computed=10,
                                                                  generated=1)
    plan = StepPlan(view_of([a, b], num_blocks=20), 100)
    assert plan.schedule_resident(a, 1)          # a's new block preempts b (the tail)
    assert plan.is_preempted(b)
    with pytest.raises(PolicyViolation, match=r"^request 1 was preempted earlier in this step"):
        plan.schedule_resident(b, 1)
    b.status = Status.WAITING                    # as a requeued victim looks to a policy
    with pytest.raises(PolicyViolation, match=r"^request 1 was preempted earlier in this step"):
        plan.admit(b, 10)
    with pytest.raises(PolicyViolation, match="request 1 was preempted earlier"):
        plan.preempt(b)
    # The admission helper stops at a victim at the front of the queue instead: it waits.
    queue = FCFSQueue()
    queue.append(b)
    assert plan.admit_waiting(queue) == 0 and list(queue) == [b]


class _Trap(QueuedPolicy):
    """Runs every request the step started with, the ones it preempted included."""

    name = "trap"

    def schedule(self, view):
        plan = StepPlan(view, 64, on_preempt=self.requeue_preempted)
        for req in list(plan.running):
            plan.schedule_resident(req, min(req.remaining, 64))
        if not plan.preempted:
            plan.admit_waiting(self.waiting)
        return plan.decision()


def test_the_trap_stops_the_run_at_the_first_preemption_naming_the_victim():
    reqs = requests(*[(0.0, 40, 30)] * 4)
    with pytest.raises(PolicyViolation) as e:
        simulate(reqs, _Trap(), kv_tokens=128, block_size=16)
    msg = str(e.value)
    assert msg.startswith("policy trap at t=") and "\n" not in msg
    assert " was preempted earlier in this step" in msg
    # ... at the first preemption: the same run with the victims skipped preempts this request
    # first, at this very time.
    t = float(msg.split("t=")[1].split("s:")[0])
    victim = int(msg.split("request ")[1].split()[0])

    class Careful(_Trap):
        def schedule(self, view):
            plan = StepPlan(view, 64, on_preempt=self.requeue_preempted)
            plan.schedule_running()
            if not plan.preempted:
                plan.admit_waiting(self.waiting)
            return plan.decision()

    out = simulate(reqs, Careful(), kv_tokens=128, block_size=16)
    first = next(s for s in out.steps if s.preempt)
    assert first.now == pytest.approx(t) and first.preempt == [victim]


class _Handmade(QueuedPolicy):
    """Builds its Decision by hand (no StepPlan), with one of the mistakes StepPlan prevents."""

    name = "handmade"

    def __init__(self, mistake):
        super().__init__()
        self.mistake = mistake
        self.preempted = []

    def schedule(self, view):
        running = list(view.resident)
        if len(running) >= 2 and running[-1].generated >= 2:
            victim = running[-1]
            self.preempted.append(victim.request_id)
            if self.mistake == "requeue":
                self.requeue_preempted(victim)
                return Decision(preempt=[victim], decode=[running[0]])
            if self.mistake == "lose":
                return Decision(preempt=[victim], decode=[running[0]])
            return Decision(preempt=[victim], prefill=[(victim, victim.prompt_tokens)],
                            decode=[running[0]])
        batch = [(r, r.remaining) for r in running if r.is_prefill]
        batch += [(r, r.remaining) for r in [self.waiting.pop() for _ in range(len(self.waiting))]]
        return Decision(prefill=batch, decode=[r for r in running if not r.is_prefill])


@pytest.mark.parametrize("mistake,message", [
    ("reschedule", "was preempted and scheduled in the same decision"),
    ("lose", "was preempted but the policy did not put it back in its waiting queue"),
])
def test_engine_names_a_victim_scheduled_again_or_lost_at_the_step_that_preempted_it(mistake,
                                                                                   message):
    reqs = requests((0.0, 10, 5), (0.0, 10, 5))
    policy = _Handmade(mistake)
    with pytest.raises(PolicyViolation, match=message) as e:
        simulate(reqs, policy, kv_tokens=1000, block_size=1)
    assert policy.preempted == [1]                     # the first preemption is the one named
    assert "request 1 " in str(e.value) and "\n" not in str(e.value)
    # The same policy requeueing its victim runs to the end.
    out = simulate(reqs, _Handmade("requeue"), kv_tokens=1000, block_size=1)
    assert set(out.requests.status) == {"completed"}


class _NotADecision(QueuedPolicy):
    name = "not-a-decision"

    def schedule(self, view):
        return StepPlan(view, 64).decision().prefill


def test_schedule_returning_something_else_than_a_decision_is_named_at_once():
    with pytest.raises(PolicyViolation, match=r"^policy not-a-decision at t=0.000000s: schedule "
                                              r"returned list \[\], not a Decision$"):
        simulate(requests((0.0, 10, 2)), _NotADecision())


# ---------------------------------------------------------------------------------------------
# Classes that cannot run as policies


class _PlainParams:
    budget: int = 512


@dataclasses.dataclass
class _Base:
    budget: int = param(512, "tokens")


class _Undecorated(_Base):
    chunk: int = param(64, "chunk")


@dataclasses.dataclass
class _Required:
    budget: int


def _policy(params=None, schedule=True):
    body = {"name": "x"}
    if params is not None:
        body["Params"] = params
    if schedule:
        body["schedule"] = lambda self, view: Decision()
    return type("Mine", (QueuedPolicy,), body)


@pytest.mark.parametrize("cls,message", [
    (_policy(_PlainParams), "Params _PlainParams is not a dataclass"),
    (_policy(_Undecorated), "Params _Undecorated is not itself a dataclass, so its field "
                            "'chunk' is ignored"),
    (_policy(_Required), "Params field 'budget' has no default"),
    (_policy(schedule=False), "does not implement schedule"),
    (type("Other", (), {}), "is not a Policy subclass"),
])
def test_a_class_that_cannot_run_as_a_policy_is_refused_in_one_line(cls, message):
    with pytest.raises(PolicyError, match=message) as e:
        register(cls)
    assert "\n" not in str(e.value)
    assert "x" not in base._REGISTRY


def test_register_refuses_a_second_class_under_a_taken_name(monkeypatch):
    policy_names()                                       # the built-ins are registered
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    with pytest.raises(PolicyError, match="'vllm-v1' is already registered by "
                                          "scheduler.policies.vllm_v1.VllmV1"):
        register(type("Impostor", (QueuedPolicy,), {"name": "vllm-v1",
                                                    "schedule": lambda self, v: Decision()}))


# ---------------------------------------------------------------------------------------------
# A policy class by path, and plug-ins that fail to load

MODULE = '''
from dataclasses import dataclass
from scheduler import QueuedPolicy, StepPlan, param
from scheduler.policies.vllm_v1 import VllmV1


@dataclass
class BudgetParams:
    budget: int = param(256, "tokens per step", minimum=1)


class Fcfs(QueuedPolicy):
    Params = BudgetParams

    def schedule(self, view):
        plan = StepPlan(view, self.params.budget, on_preempt=self.requeue_preempted)
        plan.schedule_running()
        if not plan.preempted:
            plan.admit_waiting(self.waiting)
        return plan.decision()


class Tuned(VllmV1):
    """Extends a built-in without a name of its own: runs under its path, not as vllm-v1."""


class Idle(QueuedPolicy):
    def schedule(self, view):
        return StepPlan(view, 1).decision()
'''


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    (tmp_path / "kit_policies.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "kit_broken.py").write_text("import kit_missing_dependency\n")
    (tmp_path / "kit_failing.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    monkeypatch.setattr(sys, "path", list(sys.path))     # restored after the test
    for name in ("kit_policies", "kit_broken", "kit_failing"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_a_class_runs_by_path_in_run_and_is_named_by_it(module_dir, tmp_path, capsys):
    sys.path.insert(0, str(module_dir))
    out = tmp_path / "out"
    assert main(["run", "--policy", "kit_policies:Fcfs", "-p", "budget=128", "-n", "20",
                 "--out", str(out)]) == 0
    config = (out / "config.json").read_text()
    assert '"kit_policies:Fcfs"' in config
    assert policy_class("kit_policies:Tuned").name == "kit_policies:Tuned"
    assert policy_class("vllm-v1").name == "vllm-v1"        # the built-in keeps its own
    assert "kit_policies:Fcfs" not in policy_names()         # run, never registered
    assert make_policy("kit_policies:Fcfs", {"budget": "64"}).params.budget == 64


def test_a_sweep_runs_a_class_by_path_beside_a_builtin(module_dir, tmp_path):
    sys.path.insert(0, str(module_dir))
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: kit\nbase: {num_requests: 20, kv_capacity: 4000}\n"
                    "axes: {policy: ['kit_policies:Fcfs', vllm-v1]}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "res"), "-j", "1"]) == 0
    import pandas as pd
    table = pd.read_parquet(tmp_path / "res" / "results.parquet")
    assert sorted(table.policy) == ["kit_policies:Fcfs", "vllm-v1"]
    assert (table.completed == 20).all()


def test_a_module_in_the_current_folder_is_found_as_python_m_would(module_dir, monkeypatch):
    monkeypatch.chdir(module_dir)
    sys.path[:] = [p for p in sys.path if p not in ("", str(module_dir))]
    assert policy_class("kit_policies:Fcfs").__name__ == "Fcfs"


def test_servesim_check_runs_the_invariant_checker_on_a_class(module_dir, capsys):
    sys.path.insert(0, str(module_dir))
    assert main(["check", "kit_policies:Fcfs", "-p", "budget=64", "--examples", "5"]) == 0
    assert capsys.readouterr().out.startswith("policy kit_policies:Fcfs: invariants hold on 5 "
                                              "workloads (")
    assert main(["check", "kit_policies:Idle", "--examples", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("servesim: check failed: policy kit_policies:Idle scheduled nothing")
    assert "rows=[(" in err                              # the workload that shows it


def test_the_vllm_plugin_accepts_a_class_by_path(module_dir):
    from simulator.vllm.plugin import build_policy, load_plugin_config
    sys.path.insert(0, str(module_dir))
    cfg = load_plugin_config({"SERVESIM_POLICY": "kit_policies:Fcfs",
                              "SERVESIM_POLICY_PARAMS": "budget=96"})
    assert build_policy(cfg, {}).params.budget == 96


@pytest.mark.parametrize("spec,message", [
    ("kit_nowhere:Fcfs", "policy 'kit_nowhere:Fcfs': no module named 'kit_nowhere'"),
    ("kit_policies:Nope", "module kit_policies has no attribute 'Nope'"),
    ("kit_policies:BudgetParams", "is not a Policy subclass"),
    ("kit_broken:X", "importing kit_broken failed: ModuleNotFoundError: No module named "
                     "'kit_missing_dependency' (.*kit_broken.py:1)"),
    ("kit_failing:X", r"importing kit_failing failed: RuntimeError: boom \(.*kit_failing.py:2\)"),
    ("kit_policies:", "expected package.module:Class"),
])
def test_a_bad_path_is_one_line_with_exit_2(module_dir, capsys, spec, message):
    sys.path.insert(0, str(module_dir))
    with pytest.raises(PolicyError, match=message):
        policy_class(spec)
    assert main(["run", "--policy", spec, "-n", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture
def plugins(module_dir, monkeypatch):
    """Two installed plug-ins: one that fails to import, one whose value is a policy class."""
    sys.path.insert(0, str(module_dir))
    eps = importlib.metadata.EntryPoints([
        importlib.metadata.EntryPoint("kit-broken", "kit_broken", "servesim.policies"),
        importlib.metadata.EntryPoint("kit-fcfs", "kit_policies:Fcfs", "servesim.policies"),
    ])
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: eps.select(group=group))
    monkeypatch.setattr(base, "_plugins_loaded", False)
    monkeypatch.setattr(base, "_BROKEN_PLUGINS", {})
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.delitem(sys.modules, "kit_policies", raising=False)


def test_a_plugin_that_fails_to_import_leaves_the_others_working(plugins, capsys):
    names = policy_names()
    assert {"vllm-v1", "sarathi"} <= set(names)
    with pytest.raises(PolicyError, match=r"^policy 'kit-broken': plug-in 'kit-broken' "
                                          r"\(kit_broken\) failed to load: ModuleNotFoundError"):
        policy_class("kit-broken")
    assert main(["policies"]) == 0
    captured = capsys.readouterr()
    assert "sarathi" in captured.out
    assert captured.err.startswith("servesim: warning: plug-in 'kit-broken' (kit_broken) failed "
                                   "to load: ModuleNotFoundError: No module named "
                                   "'kit_missing_dependency'")


def test_a_plugin_whose_value_is_a_class_is_registered_under_its_entry_point_name(plugins):
    cls = policy_class("kit-fcfs")
    assert cls.__name__ == "Fcfs" and cls.name == "kit-fcfs" and "kit-fcfs" in policy_names()
    assert make_policy("kit-fcfs", {"budget": 8}).describe() == {"policy": "kit-fcfs",
                                                                 "budget": 8}


# ---------------------------------------------------------------------------------------------
# The admission safeguard every StepPlan user gets


class _Chunked(QueuedPolicy):
    """Running requests first, then admissions in chunks of 32 tokens."""

    name = "chunked"

    def __init__(self, reserve_full_prompt: bool):
        super().__init__()
        self.reserve = reserve_full_prompt

    def schedule(self, view):
        plan = StepPlan(view, 32, on_preempt=self.requeue_preempted,
                        reserve_full_prompt=self.reserve)
        plan.schedule_running()
        if not plan.preempted:
            plan.admit_waiting(self.waiting)
        return plan.decision()


def test_admission_reserves_the_whole_prompt_unless_the_policy_opts_out():
    # 100 blocks of one token; two 60-token prompts with 10 output tokens (peak 69 each). With
    # the safeguard the second starts only when 60 blocks are free, after the first completes;
    # without it, its chunks start beside the first and the two collide.
    reqs = requests((0.0, 60, 10), (0.0, 60, 10))
    safe = simulate(reqs, _Chunked(True), kv_tokens=100, block_size=1, max_model_len=100)
    first, second = safe.requests.itertuples()
    assert safe.raw.preemptions == 0
    assert second.first_scheduled_s == pytest.approx(first.completion_s)
    naive = simulate(reqs, _Chunked(False), kv_tokens=100, block_size=1, max_model_len=100)
    assert naive.raw.preemptions > 0
    assert naive.requests.first_scheduled_s.iloc[1] < naive.requests.completion_s.iloc[0]


def test_admit_waiting_respects_the_cap_the_budget_and_whole_prompts():
    spec_blocks = 1000
    waiting = FCFSQueue()
    for i, prompt in enumerate((10, 30, 5)):
        waiting.append(RequestState(i, 0.0, prompt, 4))
    plan = StepPlan(view_of([], spec_blocks), 35)
    assert plan.admit_waiting(waiting, max_running=5, whole=True) == 1   # 30 > 25 left
    assert [r.request_id for r in waiting] == [1, 2]
    assert plan.admit_waiting(waiting) == 1 and plan.budget == 0        # a 25-token chunk
    assert plan.tokens[next(iter(plan.running[1:]))] == 25
    waiting.append(RequestState(3, 0.0, 5, 4))
    plan = StepPlan(view_of([], spec_blocks), 1000)
    assert plan.admit_waiting(waiting, max_running=1) == 1 and len(waiting) == 1
    # A prompt larger than the whole step budget could never be admitted whole: said at once.
    waiting.append(RequestState(4, 0.0, 40, 4))
    with pytest.raises(PolicyViolation, match="request 3 needs 5 tokens in one step, more than "
                                              "the step budget 4"):
        StepPlan(view_of([], spec_blocks), 4).admit_waiting(waiting, whole=True)
