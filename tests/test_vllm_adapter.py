"""The servesim adapter inside vLLM's real V1 scheduler, built from a local config.json on the CPU.

Each test drives the scheduler the way vLLM's engine core does (schedule, fabricated model output,
update_from_output) and checks what reached vLLM's own queues and KV cache manager.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_vllm

require_vllm()

from scheduler.base import Policy, QueuedPolicy, make_policy, register  # noqa: E402
from scheduler.plan import StepPlan  # noqa: E402
from simulator.cost.linear import LinearCost  # noqa: E402
from tests.fluid_helpers import hint, with_cost  # noqa: E402
from tests.vllm_helpers import MODEL, OPTIONS, RejectLong, drive, drive_pipelined, spec  # noqa: E402
from traces.lengths import RequestType  # noqa: E402
from simulator.vllm.loop import (build_scheduler, model_output,  # noqa: E402
                                   vllm_request)
from traces.request import Request  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402

COST = LinearCost.paper(0.01, 1e-5)     # what the fluid policies plan with


def adapter(policy, blocks=60, options=OPTIONS, async_scheduling=False, workload_hint=None):
    s = build_scheduler(MODEL, spec(blocks), options, async_scheduling=async_scheduling)
    s.configure(policy, cost_model=COST, workload_hint=with_cost(workload_hint, COST))
    return s


def workload(n=24, seed=1):
    """Requests with varied prompt and output lengths, arriving over the first steps."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return [Request(i, float(i // 3), int(rng.integers(8, 200)), int(rng.integers(2, 40)))
            for i in range(n)]


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params", [("vllm-v1", {}), ("sjf", {}),
                                         ("sarathi", {"chunk_size": 128}), ("orca", {}),
                                         ("vllm", {}), ("static", {}), ("wait", {}),
                                         ("wait", {"chunk_size": 64}), ("nested-wait", {}),
                                         ("mcsf", {"predictor": "noisy"})])
def test_every_request_finishes_and_kv_never_over_allocated(name, params):
    # V0 runs whole prompts only, so its server needs a budget of max_model_len tokens.
    options = {**OPTIONS, "max_num_batched_tokens": 4096} if name in ("vllm", "wait") else \
        OPTIONS
    # WAIT and Nested WAIT plan with the workload, described as a run describes it.
    sched = adapter(make_policy(name, params), options=options,
                    workload_hint=hint(requests=workload()))
    steps = drive(sched, workload())
    finished = {rid for s in steps for rid in s.tokens}
    assert finished == {str(i) for i in range(24)}
    assert not sched.requests and not sched.running and not sched.waiting
    # All KV returned; the policy saw every request leave.
    assert sched.kv_cache_manager.block_pool.get_num_free_blocks() == 60
    assert not sched._states
    if name in ("orca", "static"):        # reserve peak KV at admission: never preempt
        assert not any(s.preempted for s in steps)


def test_stock_scheduler_and_adapter_with_vllm_v1_schedule_identically():
    """Same inputs, step by step: tokens per request, preemptions, admissions."""
    reqs = workload(n=40, seed=7)
    stock = build_scheduler(MODEL, spec(40), OPTIONS, scheduler_cls=Scheduler)
    ours = build_scheduler(MODEL, spec(40), OPTIONS)
    ours.configure(make_policy("vllm-v1", {"max_num_batched_tokens": 256, "max_num_seqs": 16}))
    a, b = drive(stock, reqs), drive(ours, reqs)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"step {i}: stock {x} != adapter {y}"
    # The workload exercised what matters: preemption under KV pressure and chunked prefill.
    assert sum(len(s.preempted) for s in a) > 0
    assert any(n > 1 and n == 256 - sum(v for k, v in s.tokens.items() if k != rid)
               for s in a for rid, n in s.tokens.items() if sum(s.tokens.values()) == 256)
    # vLLM carried out every decision as planned (the policy models vLLM 0.32's full-prompt
    # admission gate, which refuses admissions in this workload).
    stats = ours.servesim_stats
    assert stats.divergent_steps == stats.requeued == stats.vllm_preemptions == 0


def test_a_policy_without_vllms_admission_gate_is_overruled_and_kept_in_step():
    """vllm-v1 with reserve_full_prompt off plans admissions vLLM's gate refuses: they go back to
    the policy (on_requeue) and the schedule still equals the stock scheduler's."""
    reqs = workload(n=40, seed=7)
    stock = build_scheduler(MODEL, spec(40), OPTIONS, scheduler_cls=Scheduler)
    ours = build_scheduler(MODEL, spec(40), OPTIONS)
    ours.configure(make_policy("vllm-v1", {"max_num_batched_tokens": 256, "max_num_seqs": 16,
                                           "reserve_full_prompt": False}))
    assert drive(stock, reqs) == drive(ours, reqs)
    stats = ours.servesim_stats
    assert stats.requeued > 0 and stats.divergent_steps == stats.requeued
    assert stats.vllm_preemptions == 0


def test_stock_async_scheduler_and_async_adapter_schedule_identically():
    """The async variant with two batches in flight (vLLM's default engine mode)."""
    reqs = workload(n=20, seed=3)
    stock = build_scheduler(MODEL, spec(40), OPTIONS, scheduler_cls=AsyncScheduler,
                            async_scheduling=True)
    ours = adapter(make_policy("vllm-v1", {}), blocks=40, async_scheduling=True)
    assert drive_pipelined(stock, reqs) == drive_pipelined(ours, reqs)
    assert not ours.requests


def test_sync_adapter_refuses_an_async_engine():
    with pytest.raises(ValueError, match="no-async-scheduling"):
        from simulator.vllm.plugin import scheduler_class
        build_scheduler(MODEL, spec(), OPTIONS, scheduler_cls=scheduler_class(False),
                        async_scheduling=True)


def test_sjf_order_is_honored_by_vllm():
    """One request at a time (max_num_seqs 1): vLLM admits in predicted-output order."""
    lengths = [30, 5, 20, 2, 12, 8]
    reqs = [Request(i, 0.0, 32, o) for i, o in enumerate(lengths)]
    opts = {**OPTIONS, "max_num_seqs": 1}
    order = []

    def admitted(sched):
        def check(step, out):
            order.extend(r.req_id for r in out.scheduled_new_reqs)
        return check

    sched = adapter(make_policy("sjf", {}), options=opts)
    drive(sched, reqs, check=admitted(sched))
    assert order == [str(i) for i in sorted(range(6), key=lambda i: lengths[i])]
    order.clear()
    stock = build_scheduler(MODEL, spec(), opts, scheduler_cls=Scheduler)
    drive(stock, reqs, check=admitted(stock))
    assert order == [str(i) for i in range(6)]       # vLLM alone: FCFS


def gated_wait(threshold=4, patience=1000.0, rate=1.0, options=OPTIONS):
    """WAIT inside vLLM for one type (prompt 16, output 4, ``rate`` req/s), with an explicit
    threshold and patience; the adapter's clock reads ``clock[0]``."""
    policy = make_policy("wait", {"thresholds": str(threshold), "patience": patience,
                                  "d0": 0.01, "d1": 1e-5})
    sched = adapter(policy, options=options,
                    workload_hint=hint([RequestType("p16d4", 16, 4, rate)]))
    clock = [0.0]
    sched.clock = lambda: clock[0]
    return sched, clock


def test_wait_holds_new_prefills_until_the_threshold():
    sched, _ = gated_wait()
    for i in range(3):
        sched.add_request(vllm_request(Request(i, 0.0, 16, 4)))
        out = sched.schedule()
        assert not out.num_scheduled_tokens          # held: fewer than 4 waiting
        sched.update_from_output(out, model_output(out, sched.requests))
    assert len(sched.waiting) == 3 and not sched.running
    sched.add_request(vllm_request(Request(3, 0.0, 16, 4)))
    out = sched.schedule()
    assert out.num_scheduled_tokens == {str(i): 16 for i in range(4)}   # released together
    sched.update_from_output(out, model_output(out, sched.requests))
    # The pipeline advances only when the next 4 have arrived (the paper's rule): the first
    # four stay paused, with their KV, until requests 4-7 are in.
    for i in range(4, 8):
        out = sched.schedule()
        assert not out.num_scheduled_tokens and len(sched.running) == 4
        sched.update_from_output(out, model_output(out, sched.requests))
        sched.add_request(vllm_request(Request(i, 0.0, 16, 4)))
    out = sched.schedule()
    assert sorted(out.num_scheduled_tokens.items()) == \
        [(str(i), 1) for i in range(4)] + [(str(i), 16) for i in range(4, 8)]
    assert sched.servesim_stats.divergent_steps == 0


class ModelExecutorStandIn:
    """What vLLM's engine core asks of its model executor in ``step()``: outputs fabricated as
    everywhere in these tests, and the time each request first ran."""

    def __init__(self, sched, clock):
        self.sched, self.clock, self.first = sched, clock, {}

    def execute_model(self, out, non_block=False):
        from concurrent.futures import Future

        from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT
        for rid in out.num_scheduled_tokens:
            self.first.setdefault(rid, self.clock[0])
        result = Future()
        result.set_result(model_output(out, self.sched.requests) if out.num_scheduled_tokens
                          else EMPTY_MODEL_RUNNER_OUTPUT)
        return result


def serve_like_engine_core(sched, arrivals, clock, iteration_s=0.01, until=60.0):
    """vLLM 0.32's engine core loop (vllm/v1/engine/core.py), with vLLM's own ``step()``:
    while the scheduler has requests, run_busy_loop does not block on its input queue and calls
    step(), which calls schedule() and update_from_output() even when the batch is empty; after
    a step that ran nothing, _process_engine_step sleeps 1 ms. Time is ``clock[0]``: an
    iteration takes ``iteration_s``, an empty step 1 ms. Returns ({request id: first scheduled
    time}, [the policy's wake_at after each empty step])."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from vllm.v1.engine.core import EngineCore
    executor = ModelExecutorStandIn(sched, clock)
    core = SimpleNamespace(   # the parts of an EngineCore that step() touches
        scheduler=sched, model_executor=executor, _should_throttle_prefills=lambda: False,
        capture_iteration_details=lambda out: nullcontext(None),
        log_error_detail=lambda out: nullcontext(), _process_aborts_queue=lambda: None,
        _attach_iteration_details=lambda *args: None, _attach_weight_version=lambda *args: None)
    pending = sorted(arrivals, key=lambda r: r.arrival_s)
    wakes = []
    while clock[0] < until:
        while pending and pending[0].arrival_s <= clock[0]:
            sched.add_request(vllm_request(pending.pop(0)))
        if not sched.has_requests():
            if not pending:
                return executor.first, wakes
            clock[0] = pending[0].arrival_s          # an idle engine waits for input
            continue
        _, model_executed = EngineCore.step(core)
        if model_executed:
            clock[0] += iteration_s
        else:
            wakes.append(sched.wake_at)
            clock[0] += 0.001
    raise AssertionError(f"requests stranded: {sorted(sched.requests)} unfinished at "
                         f"t={clock[0]}")


@pytest.mark.parametrize("name", ["wait", "nested-wait"])
def test_patience_releases_below_threshold_requests_in_a_live_server(name):
    """A live server never says that arrivals are over (view.arrivals_done stays False), and
    nothing wakes the scheduler at a Decision.wake_at; but vLLM's engine core polls schedule()
    every millisecond while requests are unfinished, so the patience rule releases a group
    below its threshold when its wait plus the expected time to fill (missing / rate) reaches
    the patience. Here: threshold 4, rate 100 req/s, patience 0.5 s; two requests at t = 0 are
    released at 0.5 - 2/100 = 0.48 s (what the policy's wake_at says), each later stage after
    0.5 - 4/100 s more, and a lone request at t = 3 at 3 + 0.5 - 3/100: nobody is stranded."""
    policy = make_policy(name, {"thresholds": "4", "patience": 0.5, "d0": 0.01, "d1": 1e-5})
    sched = adapter(policy, workload_hint=hint([RequestType("p16d4", 16, 4, 100.0)]))
    clock = [0.0]
    sched.clock = lambda: clock[0]
    reqs = [Request(0, 0.0, 16, 4), Request(1, 0.0, 16, 4), Request(2, 3.0, 16, 4)]
    first, wakes = serve_like_engine_core(sched, reqs, clock)
    assert first["0"] == first["1"] == pytest.approx(0.48, abs=0.0011)
    assert wakes[0] == pytest.approx(0.48)
    assert first["2"] == pytest.approx(3.47, abs=0.0011)
    assert not sched.requests and sched.servesim_stats.divergent_steps == 0
    # Done after its prefill and 3 decodes, each held 0.46 s: 4.89 s (+1 ms polls).
    assert clock[0] == pytest.approx(3.47 + 0.01 + 3 * (0.46 + 0.01), abs=0.005)


@register
class PauseOdd(QueuedPolicy):
    """Admits everything, then decodes only even-numbered requests while any even one runs."""
    name = "test-pause-odd"

    def schedule(self, view):
        plan = StepPlan(view, float("inf"))
        evens = [r for r in plan.running if r.request_id % 2 == 0]
        for req in (evens or plan.running):
            plan.schedule_resident(req, req.remaining)
        while self.waiting and plan.admit(self.waiting.peek(), self.waiting.peek().remaining):
            self.waiting.pop()
        return plan.decision()


def test_paused_requests_keep_their_kv_and_are_not_scheduled():
    sched = adapter(make_policy("test-pause-odd"))
    for i in range(4):
        sched.add_request(vllm_request(Request(i, 0.0, 20, 5)))
    out = sched.schedule()                               # all four prefill together
    assert set(out.num_scheduled_tokens) == {"0", "1", "2", "3"}
    sched.update_from_output(out, model_output(out, sched.requests))
    for _ in range(4):                                   # evens decode, odds are paused
        out = sched.schedule()
        assert set(out.num_scheduled_tokens) == {"0", "2"}
        for rid in ("1", "3"):
            assert sched.requests[rid] in sched.running
            assert len(sched.kv_cache_manager.coordinator.get_blocks(rid)[0]) == 2
        sched.update_from_output(out, model_output(out, sched.requests))
    drive(sched, [])
    assert sched.servesim_stats.divergent_steps == 0


def test_policy_chunk_sizes_reach_vllm():
    sched = adapter(make_policy("sarathi", {"chunk_size": 48}))

    def check(step, out):
        assert out.total_num_scheduled_tokens <= 48

    steps = drive(sched, [Request(0, 0.0, 200, 3), Request(1, 0.0, 100, 3)], check=check)
    assert steps[0].tokens == {"0": 48}                  # a 48-token chunk, not vLLM's 256
    assert sched.servesim_stats.divergent_steps == 0


def test_what_vllm_refuses_goes_back_to_the_policy():
    """The policy may admit up to 16 at once; the server allows 2: the rest are handed back
    (on_requeue) and still all finish in FCFS order."""
    policy = make_policy("vllm-v1", {"max_num_seqs": 16})
    sched = adapter(policy, options={**OPTIONS, "max_num_seqs": 2})
    order = []
    drive(sched, [Request(i, 0.0, 20, 3) for i in range(6)],
          check=lambda step, out: order.extend(r.req_id for r in out.scheduled_new_reqs))
    assert order == [str(i) for i in range(6)]
    assert sched.servesim_stats.requeued > 0 and sched.servesim_stats.divergent_steps > 0


def test_policy_rejection_finishes_the_request_with_an_output():
    sched = adapter(make_policy(RejectLong))
    sched.add_request(vllm_request(Request(0, 0.0, 100, 3)))      # rejected by the policy
    sched.add_request(vllm_request(Request(1, 0.0, 30, 3)))
    out = sched.schedule()
    outputs = sched.update_from_output(out, model_output(out, sched.requests))
    finished = {o.request_id: o.finish_reason for eco in outputs.values() for o in eco.outputs
                if o.finish_reason is not None}
    assert "0" in finished and "0" not in sched.requests
    assert sched.rejected_reasons["0"] == "prompt exceeds 64 tokens"
    assert out.num_scheduled_tokens == {"1": 30}
    drive(sched, [])
    assert not sched.requests


def test_abort_of_a_waiting_request_leaves_the_policy_queue():
    sched = adapter(make_policy("vllm-v1", {"max_num_seqs": 1}), options={**OPTIONS,
                                                                          "max_num_seqs": 1})
    for i in range(3):
        sched.add_request(vllm_request(Request(i, 0.0, 20, 3)))
    out = sched.schedule()
    sched.update_from_output(out, model_output(out, sched.requests))
    sched.finish_requests("2", RequestStatus.FINISHED_ABORTED)
    assert [r.request_id for r in sched.servesim_policy.waiting] == [1]
    steps = drive(sched, [])
    assert "2" not in {rid for s in steps for rid in s.tokens}


@pytest.mark.parametrize("name", ["wait", "nested-wait"])
def test_an_aborted_request_leaves_the_threshold_count(name):
    """Threshold 4: three wait, one of them is aborted by its client, so the next arrival
    makes three, not four, and the gate stays closed; the one after opens it."""
    policy = make_policy(name, {"thresholds": "4", "patience": 1000.0, "d0": 0.01, "d1": 1e-5})
    sched = adapter(policy, workload_hint=hint([RequestType("p16d4", 16, 4, 1.0)]))
    sched.clock = lambda: 0.0

    def arrive_and_step(i):
        sched.add_request(vllm_request(Request(i, 0.0, 16, 4)))
        out = sched.schedule()
        sched.update_from_output(out, model_output(out, sched.requests))
        return set(out.num_scheduled_tokens)

    assert not any(arrive_and_step(i) for i in range(3))
    sched.finish_requests("1", RequestStatus.FINISHED_ABORTED)
    assert [r.request_id for r in policy.gates[0].queue] == [0, 2]
    assert arrive_and_step(3) == set()
    assert arrive_and_step(4) == {"0", "2", "3", "4"}
    assert "1" not in sched.requests and not sched._states.keys() - {"0", "2", "3", "4"}


def test_wait_takes_back_what_vllm_refuses_at_the_front_of_its_gate():
    """WAIT admits four at a time; the server runs two sequences at most: vLLM refuses two of
    each group (on_requeue puts them back in front of the gate's entry), and requests are
    still admitted in arrival order, every one of them finishing."""
    policy = make_policy("wait", {"thresholds": "4", "patience": 5.0, "d0": 0.01, "d1": 1e-5})
    sched = adapter(policy, options={**OPTIONS, "max_num_seqs": 2},
                    workload_hint=hint([RequestType("p16d4", 16, 4, 1.0)]))
    order = []
    drive(sched, [Request(i, 0.0, 16, 4) for i in range(8)],
          check=lambda step, out: order.extend(r.req_id for r in out.scheduled_new_reqs))
    assert order == [str(i) for i in range(8)]
    stats = sched.servesim_stats
    assert stats.requeued > 0 and stats.vllm_preemptions == 0


def test_mcsf_keeps_its_order_when_vllm_refuses_admissions():
    """MC-SF with noisy predictions, two sequences at most in the server: refused admissions
    come back with their predictions, so vLLM admits in predicted order throughout."""
    policy = make_policy("mcsf", {"predictor": "noisy", "noise_sigma": 1.0})
    sched = adapter(policy, options={**OPTIONS, "max_num_seqs": 2})
    reqs = [Request(i, 0.0, 16, o) for i, o in enumerate([30, 5, 20, 2, 12, 8, 25, 3])]
    for r in reqs:
        sched.add_request(vllm_request(r))
    predicted = dict(policy.predicted)
    order = []
    drive(sched, [], check=lambda step, out: order.extend(r.req_id for r in
                                                            out.scheduled_new_reqs))
    assert order == [str(i) for i in sorted(predicted, key=lambda i: (predicted[i], i))]
    assert sched.servesim_stats.requeued > 0
    sched.add_request(vllm_request(Request(8, 0.0, 16, 5)))
    sched.finish_requests("8", RequestStatus.FINISHED_ABORTED)
    assert not policy.waiting and not policy.predicted


def test_a_live_server_plans_wait_with_the_workload_from_its_environment(monkeypatch):
    """`vllm serve` builds the scheduler with no configure() call: the adapter reads the
    plug-in variables at the first request and binds WAIT to vLLM's own KV capacity, with the
    hint and cost model the same run fields give a simulation."""
    from simulator.vllm.plugin import ENV_POLICY, ENV_WORKLOAD
    from simulator.config import build_config
    from simulator.runner import build_replica, build_workload
    monkeypatch.setenv(ENV_POLICY, "wait")
    monkeypatch.setenv(ENV_WORKLOAD, "{types: [p16d4:20, p32d8:10], cost_model: linear, "
                                     "cost_params: {c0: 0.01, c_kv: 1e-5}}")
    sched = build_scheduler(MODEL, spec(60), OPTIONS)
    sched.add_request(vllm_request(Request(0, 0.0, 16, 4)))
    live = sched.servesim_policy
    assert live.name == "wait" and live.spec.num_blocks == 60
    run = build_config({}, {"types": ["p16d4:20", "p32d8:10"], "cost_model": "linear",
                            "cost_params": {"c0": 0.01, "c_kv": 1e-5}, "kv_capacity": 60 * 16})
    sim = make_policy("wait")
    sim.bind(build_replica(run, build_workload(run)))
    assert live.info["types"] == ["p16d4", "p32d8"] and live.info["cost_fit"] == "exact"
    for key in ("thresholds", "d0", "d1", "M_pi", "patience_s"):
        assert live.info[key] == sim.info[key], key


def test_vllm_scheduler_cls_path_resolves_lazily():
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from simulator.vllm import plugin as vllm_adapter
    cls = resolve_obj_by_qualname(vllm_adapter.qualname(async_scheduling=True))
    assert issubclass(cls, AsyncScheduler) and cls.__name__ == "ServesimAsyncScheduler"
    assert issubclass(vllm_adapter.ServesimScheduler, Scheduler)
    assert isinstance(make_policy("vllm-v1"), Policy)


def test_numeric_and_server_request_ids_never_share_a_policy_id():
    """A server mixing numeric ids with its own (``cmpl-...``) ones: the policy's ids stay
    unique among live requests, so SJF's per-id predictions are never overwritten."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request as VllmRequest

    def request(rid, output):
        return VllmRequest(rid, prompt_token_ids=[1] * 16,
                           sampling_params=SamplingParams(max_tokens=output, ignore_eos=True),
                           pooling_params=None, arrival_time=0.0)

    sched = adapter(make_policy("sjf", {}), options={**OPTIONS, "max_num_seqs": 1})
    sched.clock = lambda: 0.0
    outputs = {"cmpl-a": 9, "0": 3, "cmpl-b": 8, "1": 5, "2": 1, "7": 4}
    for rid, output in outputs.items():
        sched.add_request(request(rid, output))
    ids = {rid: st.request_id for rid, st in sched._states.items()}
    assert len(set(ids.values())) == len(outputs), ids
    assert ids["cmpl-a"] == 0 and ids["7"] == 7   # a number keeps its value while it is free
    policy = sched.servesim_policy
    assert {rid: policy.predicted[ids[rid]] for rid in outputs} == outputs
    order = []
    while sched.has_unfinished_requests():
        out = sched.schedule()
        order.extend(r.req_id for r in out.scheduled_new_reqs)
        sched.update_from_output(out, model_output(out, sched.requests))
    assert order == sorted(outputs, key=outputs.get)
