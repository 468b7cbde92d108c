"""The fast engine (stretches of identical decode iterations in one step) against the step-by-step
reference (``stepwise``): the request and timeline tables must be equal, bit for bit, for every
built-in policy, on Hypothesis workloads (bursts, KV barely above the largest request so that
stretches end at KV shortages and preemptions follow, arrivals landing exactly on iteration
ends, closed-loop session turns) and on the benchmark workloads at small size."""

from __future__ import annotations

import re
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.base import is_steady_decode, make_policy, policy_class
from scheduler.policies.vllm_v1 import VllmV1
from scheduler.state import ReplicaSpec
from simulator.config import RunConfig
from simulator.cost.base import BatchShape, CostModel
from simulator.cost.factory import build_cost_model
from simulator.cost.linear import LinearCost
from simulator import engine
from simulator.engine import Engine
from simulator.hardware import gpu_spec, model_spec
from simulator.metrics import requests_table, timeline_table
from simulator.policycheck import CHECK_COST, MAX_MODEL_LEN, cases
from simulator.runner import simulate, workload_hint
from tests.conftest import builtin_policy_names
from traces.request import Request
from traces.workload import Workload

POLICIES = builtin_policy_names()
STEADY = [p for p in POLICIES if is_steady_decode(make_policy(p))]


def counted_policy(policy, params, calls: list):
    """Policy ``policy`` whose every ``schedule`` call appends the view's time to ``calls``."""
    pol = make_policy(policy, params)
    schedule = pol.schedule
    pol.schedule = lambda view: calls.append(view.now) or schedule(view)
    return pol


def kv_room(reqs, scale: float, block_size: int) -> int:
    """KV tokens for ``scale`` times the largest request, in whole blocks."""
    largest = max(r.prompt_tokens + r.output_tokens for r in reqs)
    return -(-int(scale * largest) // block_size) * block_size


def turn_requests(rows, sessions: bool) -> list[Request]:
    """Requests from (gap, prompt, output) rows. With sessions, every other request is the next
    turn of the one before it, sent a think time (the gap) after that one's answer."""
    t, reqs = 0.0, []
    for i, (gap, prompt, output) in enumerate(rows):
        t += gap
        follows = i - 1 if sessions and i % 2 else None
        reqs.append(Request(i, t, prompt, output, follows=follows, think_s=gap))
    return reqs


def _run(reqs, policy, params, kv_tokens, block_size, cost, *, stepwise, seed=0,
         prefix_caching=False, max_model_len=MAX_MODEL_LEN):
    # The checker's max_model_len (policycheck.MAX_MODEL_LEN) by default: its workloads mix in
    # requests longer than that, to be rejected.
    spec = ReplicaSpec(num_blocks=kv_tokens // block_size, block_size=block_size,
                       max_model_len=max_model_len, cost_model=cost,
                       workload_hint=workload_hint(Workload.from_requests(reqs), cost_model=cost),
                       seed=seed)
    calls: list = []
    raw = Engine(reqs, counted_policy(policy, params, calls), cost, spec,
                 prefix_caching=prefix_caching, stepwise=stepwise).run()
    return raw, len(calls)


def assert_same_result(fast, step) -> None:
    """Two runs of one replica (EngineResult) equal: request and timeline tables, end time,
    counters and, with prefix caching, the cache report (hits per request, cached blocks after
    every iteration, hits, queries, evictions)."""
    pd.testing.assert_frame_equal(requests_table(fast.states), requests_table(step.states),
                                  check_exact=True)
    pd.testing.assert_frame_equal(timeline_table(fast.timeline), timeline_table(step.timeline),
                                  check_exact=True)
    assert (fast.end_s, fast.iterations, fast.preemptions, fast.peak_kv_blocks) == \
        (step.end_s, step.iterations, step.preemptions, step.peak_kv_blocks)
    assert (fast.prefix_cache is None) == (step.prefix_cache is None)
    if fast.prefix_cache is not None:
        a, b = fast.prefix_cache, step.prefix_cache
        assert (a.cached_prompt_tokens, a.cached_blocks, a.stats) == \
            (b.cached_prompt_tokens, b.cached_blocks, b.stats)


def _no_address(message: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", message)


def _assert_same(reqs, policy, params, kv_tokens, block_size, cost=CHECK_COST, seed=0):
    """Both engines on one workload: equal tables and counters. Returns (fast schedule calls,
    iterations)."""
    try:
        step, _ = _run(reqs, policy, params, kv_tokens, block_size, cost, stepwise=True,
                       seed=seed)
    except Exception as e:  # noqa: BLE001  (a policy failing on a drawn workload: so must fast)
        with pytest.raises(type(e)) as fast_error:
            _run(reqs, policy, params, kv_tokens, block_size, cost, stepwise=False, seed=seed)
        assert _no_address(str(fast_error.value)) == _no_address(str(e))
        return 0, 0
    fast, calls = _run(reqs, policy, params, kv_tokens, block_size, cost, stepwise=False,
                       seed=seed)
    assert_same_result(fast, step)
    return calls, fast.iterations


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_equal_to_the_step_engine_on_adversarial_workloads(policy, case):
    _assert_same(case.requests(), policy, None, case.kv_tokens, case.block_size, seed=case.seed)


# Every iteration takes 0.25 s and requests arrive on the same grid: arrivals fall exactly on
# iteration ends, where the order of SimPy's events decides what a step sees.
GRID_COST = LinearCost(c0=0.25)
grid_rows = st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]),
                               st.integers(1, 100), st.integers(1, 40)), min_size=1, max_size=14)


@pytest.mark.parametrize("policy", STEADY)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=grid_rows, block_size=st.sampled_from([1, 4, 16]), scale=st.floats(1.0, 2.5),
       sessions=st.booleans(), steps=st.sampled_from([2, engine.STRETCH_STEPS]))
def test_equal_when_arrivals_fall_on_iteration_ends(policy, rows, block_size, scale, sessions,
                                                    steps):
    """``steps``: how many iterations of a stretch are priced one by one before arrays take
    over (2: nearly every stretch goes through the arrays)."""
    reqs = turn_requests(rows, sessions)
    # Room for the largest request (a session turn that follows a request rejected at arrival
    # is a case of its own, outside this comparison).
    kv = kv_room(reqs, scale, block_size)
    with mock.patch.object(engine, "STRETCH_STEPS", steps):
        _assert_same(reqs, policy, None, kv, block_size, GRID_COST)


@pytest.mark.parametrize("steps", [2, engine.STRETCH_STEPS])
def test_stretches_replace_schedule_calls(steps):
    """Sparse arrivals, long outputs: most iterations run inside stretches."""
    reqs = [Request(i, 2.0 * i, 60, 100) for i in range(20)]
    with mock.patch.object(engine, "STRETCH_STEPS", steps):
        calls, iterations = _assert_same(reqs, "vllm-v1", None, 1 << 16, 16)
    assert iterations >= 20 * 100 and calls < iterations / 10


def test_a_stretch_ends_where_kv_runs_short():
    """Two requests filling a small cache: the stretch stops before the iteration whose new block
    does not fit; the policy then preempts, as step by step."""
    reqs = [Request(0, 0.0, 20, 100), Request(1, 0.0, 20, 100)]   # 119 KV tokens each
    calls, _ = _assert_same(reqs, "vllm-v1", None, 128, 16)
    step, _ = _run(reqs, "vllm-v1", None, 128, 16, CHECK_COST, stepwise=True)
    assert step.preemptions > 0 and calls > 2


def test_wake_at_bounds_a_stretch():
    """MC-SF with requests waiting asks again at every iteration (wake_at = now)."""
    reqs = [Request(i, 0.0, 100, 50) for i in range(6)]   # 149 KV tokens each, at most
    calls, iterations = _assert_same(reqs, "mcsf", None, 400, 16)
    steps, _ = _run(reqs, "mcsf", None, 400, 16, CHECK_COST, stepwise=True)
    assert iterations > calls     # stretches once nothing waits ...
    assert calls > 6              # ... but not while something does


BENCH = {
    "p512d20": dict(rate=22.0, num_requests=400, prompt_len="512", output_len="20"),
    "azure-like": dict(rate=4.0, num_requests=150, prompt_len="32:3000", output_len="1:600"),
    "tight-kv": dict(rate=30.0, num_requests=200, prompt_len="32:512", output_len="8:256",
                     kv_capacity=6144),
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("workload", list(BENCH))
def test_equal_on_the_benchmark_workloads(policy, workload):
    fast, step = (simulate(RunConfig(policy=policy, stepwise=s, **BENCH[workload]).validate())
                  for s in (False, True))
    pd.testing.assert_frame_equal(fast.requests, step.requests, check_exact=True)
    pd.testing.assert_frame_equal(fast.timeline, step.timeline, check_exact=True)
    drop = ("wall_s", "sim_requests_per_wall_s")
    assert {k: v for k, v in fast.summary.items() if k not in drop} == \
        {k: v for k, v in step.summary.items() if k not in drop}


# -- the contract --------------------------------------------------------------------------


def test_a_subclass_does_not_inherit_the_promise():
    class Tweaked(VllmV1):
        name = "tweaked"

    assert is_steady_decode(VllmV1()) and not is_steady_decode(Tweaked())


def test_the_cache_read_by_a_decision_is_the_head_only_for_policies_declaring_it():
    from scheduler.base import cache_read_by
    from scheduler.state import RequestState

    class Tweaked(VllmV1):
        name = "tweaked"
        steady_decode = True

    spec = ReplicaSpec(num_blocks=64, block_size=16, max_model_len=4096, cost_model=CHECK_COST)
    own, sub = VllmV1(), Tweaked()
    for pol in (own, sub):
        pol.bind(spec)
    assert cache_read_by(own) == set() and cache_read_by(sub) is None
    for pol in (own, sub):
        for i in (7, 3):
            pol.on_arrival(RequestState(i, 0.0, 10, 10))
    assert cache_read_by(own) == {7} and cache_read_by(sub) is None
    assert cache_read_by(make_policy("wait")) is None


def test_threshold_policies_make_no_promise():
    """WAIT's gates run on patience timers and token buckets refilled at every call."""
    for name in ("wait", "nested-wait"):
        assert not vars(policy_class(name)).get("steady_decode", False)


# -- cost models: a stretch's times are iteration_time's, to the bit ------------------------


class Quadratic(CostModel):
    """A cost model without a closed form for stretches: the generic method applies."""

    name = "quadratic"

    def iteration_time(self, shape):
        return 1e-3 + 1e-12 * shape.kv_tokens ** 2


@pytest.mark.parametrize("cost", [
    build_cost_model("roofline", model_spec("llama-2-7b"), gpu_spec("a100-80gb")),
    build_cost_model("roofline", model_spec("llama-3.1-8b"), gpu_spec("h100-80gb")),
    LinearCost(c0=0.013, c_prefill=1e-4, c_decode=3.3e-4, c_kv=7.1e-7),
    Quadratic(),
], ids=["roofline-a100", "roofline-h100", "linear", "generic"])
@given(requests=st.integers(1, 512), kv=st.integers(1, 2_000_000), n=st.integers(1, 300))
@settings(max_examples=60, deadline=None)
def test_stretch_times_equal_iteration_time(cost, requests, kv, n):
    kv = max(kv, requests)
    times = cost.decode_stretch_times(requests, kv, n)
    expected = [cost.iteration_time(BatchShape(decode_requests=requests,
                                               decode_kv_tokens=kv + i * requests))
                for i in range(n)]
    assert times.shape == (n,)
    assert np.array_equal(times, np.array(expected))


# -- prefix caching: stretches with the block pool ---------------------------------------------


def _run_cached(reqs, policy, kv_tokens, block_size, *, stepwise):
    return _run(reqs, policy, None, kv_tokens, block_size, CHECK_COST, stepwise=stepwise,
                prefix_caching=True, max_model_len=4096)


def _assert_same_cached(reqs, policy, kv_tokens, block_size) -> tuple[int, int, int]:
    """Both engines with prefix caching on: equal tables, counters and cache report. Returns
    (fast schedule calls, iterations, evictions)."""
    step, _ = _run_cached(reqs, policy, kv_tokens, block_size, stepwise=True)
    fast, calls = _run_cached(reqs, policy, kv_tokens, block_size, stepwise=False)
    assert_same_result(fast, step)
    return calls, fast.iterations, fast.prefix_cache.stats["prefix_cache_evictions"]


@pytest.mark.parametrize("policy", STEADY)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), block_size=st.sampled_from([1, 3, 4, 16]),
       scale=st.sampled_from([1.2, 2.0, 6.0, 100.0]), n=st.integers(2, 40))
def test_equal_with_prefix_caching(policy, seed, block_size, scale, n):
    """Shared system prompts, hash_ids-like trees and session turns (the prefix-cache
    reference's workloads), caches from barely the largest request (evictions, preemptions) to
    room for everything."""
    import random

    from tests.test_prefix_reference import random_workload
    reqs = random_workload(random.Random(seed), n)
    _assert_same_cached(reqs, policy, kv_room(reqs, scale, block_size), block_size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), block_size=st.sampled_from([1, 4, 16]),
       scale=st.sampled_from([1.2, 2.0, 6.0]), n=st.integers(2, 40), gate=st.booleans(),
       chunked=st.booleans(), cap=st.sampled_from([0, 16, 200]), priority=st.booleans(),
       budget=st.sampled_from([4096, 8192]))
def test_equal_with_prefix_caching_whatever_vllm_v1_admits_by(seed, block_size, scale, n, gate,
                                                               chunked, cap, priority, budget):
    """vLLM V1's admission settings (the full-prompt gate, chunked prefill, a chunk cap, the
    scheduling policy) decide whether its refusals outlast a shorter hit (the hit-loss
    promise): every combination, with evictions, equals the step engine."""
    import random

    from tests.test_prefix_reference import random_workload
    reqs = random_workload(random.Random(seed), n)
    params = dict(reserve_full_prompt=gate, enable_chunked_prefill=chunked,
                  long_prefill_token_threshold=cap, max_num_batched_tokens=budget,
                  scheduling_policy="priority" if priority else "fcfs")
    kv = kv_room(reqs, scale, block_size)
    step, _ = _run(reqs, "vllm-v1", params, kv, block_size, CHECK_COST, stepwise=True,
                   prefix_caching=True, max_model_len=4096)
    fast, _ = _run(reqs, "vllm-v1", params, kv, block_size, CHECK_COST, stepwise=False,
                   prefix_caching=True, max_model_len=4096)
    assert_same_result(fast, step)


def test_pooled_stretches_replace_schedule_calls_and_evict_as_step_by_step():
    """Sessions of long answers in a cache that must evict: stretches run with the pool, and
    its evictions and cached blocks are the step engine's."""
    from traces.request import ANSWER_OF, PROMPT_OF, TokenRuns
    reqs, t = [], 0.0
    for i in range(30):
        t += 1.5
        prev = reqs[i - 3] if i >= 3 else None
        runs = ((PROMPT_OF, prev.request_id, prev.prompt_tokens),
                (ANSWER_OF, prev.request_id, prev.output_tokens)) if prev else ()
        prompt = (prev.prompt_tokens + prev.output_tokens if prev else 0) + 40
        reqs.append(Request(i, t, min(prompt, 900), 120,
                            prefix=TokenRuns(runs) if runs else None))
    calls, iterations, evictions = _assert_same_cached(reqs, "vllm-v1", 2048, 16)
    assert evictions > 0 and calls < iterations / 4, (calls, iterations, evictions)


def test_a_step_that_only_preempts_is_followed_by_a_decision_at_once():
    """Two residents whose blocks are all shared fill the cache: freeing one frees nothing, so
    sarathi preempts both and (as vLLM V1 after a preemption) admits nobody in that step. The
    engine asks again at once instead of sleeping (it used to report a stall)."""
    import random

    from tests.test_prefix_reference import random_workload
    reqs = random_workload(random.Random(16), 13)
    (raw, _), (fast, _) = (_run_cached(reqs, "sarathi", 97, 1, stepwise=s) for s in (True, False))
    assert all(st.status.value == "finished" for st in raw.states)
    assert raw.preemptions >= 2
    _assert_same_cached(reqs, "sarathi", 97, 1)


def test_hits_are_looked_up_lazily_only_for_queue_order_policies_off_the_reference():
    """A queue-order policy has a waiting request looked up as its queue's peek returns it
    (FCFS and priority queues call ``on_peek``); WAIT, the stepwise reference and a run without
    the cache look every waiting request up before each decision."""
    import random

    from scheduler.queues import FCFSQueue, PriorityQueue
    from scheduler.state import RequestState
    from tests.test_prefix_reference import random_workload
    seen = []
    for q in (FCFSQueue(), PriorityQueue(key=lambda r: -r.request_id)):
        q.on_peek = seen.append
        for i in (1, 2):
            q.append(RequestState(i, 0.0, 5, 5))
        assert q.peek() is seen[-1] and seen[-1].request_id == (1 if isinstance(q, FCFSQueue)
                                                                 else 2)
    reqs = random_workload(random.Random(3), 12)
    spec = ReplicaSpec(num_blocks=64, block_size=4, max_model_len=4096, cost_model=CHECK_COST,
                       workload_hint=workload_hint(Workload.from_requests(reqs),
                                                   cost_model=CHECK_COST))

    def lazy(policy, **kw):
        e = Engine(reqs, make_policy(policy), CHECK_COST, spec, **kw)
        e.run()
        return e._lazy_hits
    assert lazy("vllm-v1", prefix_caching=True) and lazy("sarathi", prefix_caching=True)
    assert not lazy("vllm-v1", prefix_caching=True, stepwise=True)
    assert not lazy("vllm-v1") and not lazy("wait", prefix_caching=True)


def test_a_livelock_of_preemptions_stops_the_run_in_one_line():
    """vllm V0 with restart preemption, a tight cache and a victim whose blocks are all shared
    (preempting it frees nothing): every request it admits is preempted again before it
    finishes, for ever. Both engines stop with SimulationStalled once LIVELOCK_PREEMPTIONS
    preemptions passed without a completion; with recompute preemption the run finishes."""
    import random

    from simulator.errors import SimulationStalled
    from tests.test_prefix_reference import random_workload
    reqs = random_workload(random.Random(5), 18)
    spec = ReplicaSpec(num_blocks=88 // 4, block_size=4, max_model_len=4096,
                       cost_model=CHECK_COST)

    def run(preemption, stepwise):
        return Engine(reqs, make_policy("vllm", {"max_num_seqs": 3}), CHECK_COST, spec,
                      prefix_caching=True, preemption=preemption, stepwise=stepwise).run()
    with mock.patch.object(engine, "LIVELOCK_PREEMPTIONS", 300):
        for stepwise in (True, False):
            with pytest.raises(SimulationStalled, match=r"preempted 301 times since a request "
                                                        r"last finished .* a livelock"):
                run("restart", stepwise)
            done = run("recompute", stepwise)
            assert all(st.status.value == "finished" for st in done.states)


def test_a_cached_workloads_hint_pickles_and_computes_its_hit_rate_once():
    """The hint's hit rate is a pass over every request's prefix: made at its first read (a
    fluid policy's), by a function that pickles (a sweep's workers)."""
    import pickle

    from simulator.runner import build_workload
    from traces.prefix_reuse import repeated_prefix_fraction
    workload = build_workload(RunConfig(num_requests=60, system_prompt_len=300,
                                        system_prompt_share=0.6, rate=5.0, seed=2).validate())
    hint = workload_hint(workload, prefix_block_size=16)
    assert callable(hint.expected_hit_rate)
    copy = pickle.loads(pickle.dumps(hint))
    expected = repeated_prefix_fraction(workload.requests(), 16)
    assert 0 < expected < 1
    assert hint.hit_rate == copy.hit_rate == expected and hint.expected_hit_rate == expected


def _shared_head_workload(n: int = 60) -> list[Request]:
    """Requests every 0.4 s sharing a long system prompt and each with long output, in a cache
    that fits three or four of them: the queue's head waits for blocks while the decodes
    evict the cached blocks of its hit, stretch after stretch."""
    from traces.request import SYSTEM_PROMPT, TokenRuns
    shared = TokenRuns(((SYSTEM_PROMPT, 0, 600),))
    return [Request(i, 0.4 * i, 600 + 40 + 7 * (i % 5), 150 + 11 * (i % 7), prefix=shared)
            for i in range(n)]


@pytest.mark.parametrize("params", [{}, {"enable_chunked_prefill": False,
                                         "max_num_batched_tokens": 4096}])
def test_stretches_run_on_through_evictions_that_only_shorten_the_heads_hit(params):
    """vLLM V1 with its full-prompt gate admits the head exactly when its whole prompt's
    blocks less the held ones fit, whatever its hit: stretches no longer end where an
    eviction shortens that hit (Policy.refusal_outlasts_hit_loss). The run is the step
    engine's, with fewer decisions than when the promise is withdrawn (then every such
    eviction ends the stretch)."""
    reqs = _shared_head_workload()
    step, _ = _run(reqs, "vllm-v1", params, 3000, 16, CHECK_COST, stepwise=True,
                   prefix_caching=True, max_model_len=4096)
    fast, calls = _run(reqs, "vllm-v1", params, 3000, 16, CHECK_COST, stepwise=False,
                       prefix_caching=True, max_model_len=4096)
    assert_same_result(fast, step)
    assert fast.prefix_cache.stats["prefix_cache_evictions"] > 0
    with mock.patch.object(VllmV1, "refusal_outlasts_hit_loss", lambda self: False):
        without, calls_without = _run(reqs, "vllm-v1", params, 3000, 16, CHECK_COST,
                                      stepwise=False, prefix_caching=True, max_model_len=4096)
    assert_same_result(without, step)
    assert calls < calls_without, (calls, calls_without)


def test_the_hit_loss_promise_is_own_and_follows_the_gate():
    from scheduler.base import outlasts_hit_loss

    class Tweaked(VllmV1):
        name = "tweaked"

    assert outlasts_hit_loss(VllmV1()) and not outlasts_hit_loss(Tweaked())
    assert not outlasts_hit_loss(make_policy("vllm-v1", {"reserve_full_prompt": False}))
    whole = {"reserve_full_prompt": False, "enable_chunked_prefill": False}
    assert outlasts_hit_loss(make_policy("vllm-v1", whole))
    assert not outlasts_hit_loss(make_policy("vllm-v1", {**whole,
                                                         "long_prefill_token_threshold": 16}))
    assert outlasts_hit_loss(make_policy("vllm-v1", {"long_prefill_token_threshold": 16}))
    assert not outlasts_hit_loss(make_policy("sarathi"))


def test_a_chunk_cap_without_the_gate_keeps_no_hit_loss_promise():
    """Found by a review's fuzz with the promise forced on: without the full-prompt gate, a
    capped chunk (long_prefill_token_threshold, here without chunked prefill) needs
    ceil((cached + 16) / 4) blocks, and an eviction that shortened the head's hit by the block
    a decode had already reserved left the free count a decision sees at 6: the head fit at
    the next decision. With the promise such a stretch ran on past it (first_token_s
    differed); without it the run is the step engine's."""
    from traces.request import TokenRuns
    reqs = [Request(0, 0.0, 60, 21, prefix=TokenRuns(((7, 1, 8), (7, 4, 8), (7, 14, 8),
                                                       (7, 43, 8), (2, 0, 5), (3, 0, 18)))),
            Request(1, 0.0, 38, 21, prefix=TokenRuns(((1, 2, 37),))),
            Request(2, 0.2, 48, 13, prefix=TokenRuns(((1, 1, 20),))),
            Request(3, 0.2, 52, 10, prefix=TokenRuns(((7, 1, 8), (7, 3, 8), (7, 9, 8),
                                                       (7, 28, 8))))]
    params = dict(enable_chunked_prefill=False, reserve_full_prompt=False,
                  long_prefill_token_threshold=16, max_num_batched_tokens=89,
                  scheduling_policy="priority")
    runs = [_run(reqs, "vllm-v1", params, 88, 4, CHECK_COST, stepwise=stepwise,
                 prefix_caching=True, max_model_len=89)[0] for stepwise in (True, False)]
    assert_same_result(runs[1], runs[0])
