"""Stretches in a cluster (``Engine._stepped_stretch``) against the step-by-step reference: every
replica's timeline, every request's state and the routing must be equal, bit for bit, for
every steady-decode policy under every router (those that read free blocks and pending tokens
mid-stretch included), with admission control, closed-loop session turns, tight KV caches,
arrivals landing exactly on iteration ends, and prefill/decode disaggregation."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from scheduler.admission import Admission
from scheduler.base import is_steady_decode, make_policy
from scheduler.routers import make_router, router_names
from scheduler.state import ReplicaSpec
from simulator import engine
from simulator.cluster import native_cluster
from simulator.cost.linear import LinearCost
from simulator.disagg import KVLink, native_disaggregated
from simulator.metrics import requests_table, timeline_table
from tests.conftest import builtin_policy_names
from tests.test_fast_engine import assert_same_result, counted_policy, kv_room, turn_requests
from traces.request import Request

STEADY = [p for p in builtin_policy_names() if is_steady_decode(make_policy(p))]
ROUTERS = router_names()
COST = LinearCost(c0=0.004, c_prefill=2e-5, c_decode=3e-4, c_kv=1e-6)
# Every iteration 0.25 s and arrivals on the same grid: ties, where SimPy's event order decides.
GRID_COST = LinearCost(c0=0.25)


def _spec(kv_tokens: int, block_size: int, cost) -> ReplicaSpec:
    return ReplicaSpec(num_blocks=kv_tokens // block_size, block_size=block_size,
                       max_model_len=1 << 20, cost_model=cost)


def _cluster(reqs, policy, router, n, spec, *, stepwise, max_queue=None, caching=False):
    calls: list = []
    admission = Admission(max_queue=max_queue) if max_queue else None
    raw = native_cluster(reqs, make_router(router),
                         [counted_policy(policy, None, calls) for _ in range(n)], [spec] * n,
                         admission=admission, seed=3, stepwise=stepwise,
                         prefix_caching=[caching] * n).run()
    return raw, len(calls)


def _assert_equal_results(fast, step) -> None:
    pd.testing.assert_frame_equal(requests_table(fast.states), requests_table(step.states),
                                  check_exact=True)
    assert fast.replica_of == step.replica_of
    assert fast.end_s == step.end_s
    for f, s in zip(fast.replicas, step.replicas):
        assert_same_result(f, s)


def _assert_same(reqs, policy, router, n, spec, **kw) -> tuple[int, int]:
    """Both ways on one workload; returns (schedule calls with stretches, iterations)."""
    step, _ = _cluster(reqs, policy, router, n, spec, stepwise=True, **kw)
    fast, calls = _cluster(reqs, policy, router, n, spec, stepwise=False, **kw)
    _assert_equal_results(fast, step)
    return calls, sum(r.iterations for r in fast.replicas)


requests_rows = hs.lists(hs.tuples(hs.floats(0.0, 0.3), hs.integers(1, 300),
                                   hs.integers(1, 120)), min_size=1, max_size=40)


@pytest.mark.parametrize("policy", STEADY)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=requests_rows, router=hs.sampled_from(ROUTERS), n=hs.integers(2, 4),
       block_size=hs.sampled_from([1, 4, 16]), scale=hs.sampled_from([1.0, 1.5, 4.0, 100.0]),
       sessions=hs.booleans(), max_queue=hs.sampled_from([None, 2, 6]),
       steps=hs.sampled_from([2, engine.STRETCH_STEPS]))
def test_cluster_equal_to_the_step_engine(policy, rows, router, n, block_size, scale, sessions,
                                          max_queue, steps):
    reqs = turn_requests(rows, sessions)
    kv = kv_room(reqs, scale, block_size)
    with mock.patch.object(engine, "STRETCH_STEPS", steps):
        _assert_same(reqs, policy, router, n, _spec(kv, block_size, COST), max_queue=max_queue)


grid_rows = hs.lists(hs.tuples(hs.sampled_from([0.0, 0.25, 0.5, 1.0]), hs.integers(1, 100),
                               hs.integers(1, 40)), min_size=1, max_size=16)


@pytest.mark.parametrize("policy", STEADY)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=grid_rows, router=hs.sampled_from(ROUTERS), n=hs.integers(2, 3),
       block_size=hs.sampled_from([1, 4, 16]), sessions=hs.booleans())
def test_cluster_equal_when_arrivals_fall_on_iteration_ends(policy, rows, router, n,
                                                            block_size, sessions):
    reqs = turn_requests(rows, sessions)
    kv = kv_room(reqs, 1.5, block_size)
    _assert_same(reqs, policy, router, n, _spec(kv, block_size, GRID_COST))


def _poisson(n: int, rate: float, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    prompts = rng.integers(16, 1024, n)
    outputs = rng.integers(2, 400, n)
    return [Request(i, float(a), int(p), int(o))
            for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs))]


@pytest.mark.parametrize("router", ROUTERS)
def test_stretches_replace_most_schedule_calls_in_a_loaded_cluster(router):
    """Four replicas at a load where batches decode many iterations between arrivals: the
    same tables with a fraction of the policy calls."""
    reqs = _poisson(400, 8.0, seed=1)
    calls, iterations = _assert_same(reqs, "vllm-v1", router, 4, _spec(1 << 15, 16, COST))
    assert calls < iterations / 3, (calls, iterations)


@pytest.mark.parametrize("policy", STEADY)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 10_000), prefill=hs.integers(1, 2), decode=hs.integers(1, 3),
       router=hs.sampled_from(["round-robin", "least-kv", "jsq-tokens", "least-outstanding"]),
       kv=hs.sampled_from([4096, 1 << 16]))
def test_disaggregated_equal_to_the_step_engine(policy, seed, prefill, decode, router, kv):
    reqs = [r for r in _poisson(60, 6.0, seed) if r.prompt_tokens + r.output_tokens <= kv]

    def run(stepwise):
        spec = _spec(kv, 16, COST)
        return native_disaggregated(
            reqs, make_router(router), make_router(router),
            ([make_policy(policy) for _ in range(prefill)], spec),
            ([make_policy(policy) for _ in range(decode)], spec),
            KVLink(50.0, 1e-3), 1 << 17, seed=seed, stepwise=stepwise).run()
    fast, step = run(False), run(True)
    pd.testing.assert_frame_equal(requests_table(fast.states, handoffs=fast.handoffs),
                                  requests_table(step.states, handoffs=step.handoffs),
                                  check_exact=True)
    for f, s in zip(fast.prefill + fast.decode, step.prefill + step.decode):
        pd.testing.assert_frame_equal(timeline_table(f.timeline), timeline_table(s.timeline),
                                      check_exact=True)
        assert (f.iterations, f.peak_kv_blocks) == (s.iterations, s.peak_kv_blocks)


@pytest.mark.parametrize("policy", STEADY)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 100_000), router=hs.sampled_from(ROUTERS), n=hs.integers(2, 3),
       block_size=hs.sampled_from([1, 4, 16]), scale=hs.sampled_from([1.5, 4.0, 100.0]))
def test_cluster_with_prefix_caching_equal_to_the_step_engine(policy, seed, router, n,
                                                              block_size, scale):
    """Every replica with its block pool: routers that read the cache (prefix-affinity) and
    pending tokens (the waiting requests' hits) mid-stretch; the prefix-cache reference's
    workloads (system prompts, hash-id trees, session turns)."""
    import random

    from tests.test_prefix_reference import random_workload
    reqs = random_workload(random.Random(seed), 40)
    kv = kv_room(reqs, scale, block_size)
    spec = ReplicaSpec(num_blocks=kv // block_size, block_size=block_size,
                       max_model_len=4096, cost_model=COST)
    _assert_same(reqs, policy, router, n, spec, caching=True)
