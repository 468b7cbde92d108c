"""Nested WAIT: the prefix rule and per-stage caps, no overflow with the memory-with-buffer
capacity, memory repair under a violated condition, the chunked variant, and segments from data."""

import numpy as np
import pytest

from scheduler.fluid import from_request_types, nested_buffer, nested_plan
from simulator.cost.linear import LinearCost
from tests.fluid_helpers import hint, run, typed_requests
from traces import IndependentLengths, Poisson, Uniform, synthesize
from traces.lengths import RequestType
from traces.request import Request

SHORT_LONG = [RequestType("short", 50, 10, 14.0), RequestType("long", 50, 30, 6.0)]


def test_prefix_rule_and_stage_caps():
    """Segments [0, 2) and [2, 4) (outputs 2 and 4), caps n = (2, 1), patience out of reach.
    A segment runs only if every earlier segment's entry holds its threshold; an open segment
    runs min(n_k, queue) of each stage."""
    types = [RequestType("s", 10, 2, 1.0), RequestType("l", 10, 4, 1.0)]
    arrivals = [0.0, 0.0, 5.0, 5.0, 10.0, 10.0, 100.0]   # the last keeps arrivals open
    reqs = [Request(i, t, 10, 4) for i, t in enumerate(arrivals)]
    r = run(reqs, "nested-wait", {"thresholds": "2,1", "patience": 1000.0},
            cost=LinearCost(c0=1.0), kv_tokens=1000, workload_hint=hint(types))
    tl = r.timeline.set_index("start_s")
    # t=0: both prefill (entry 2 >= 2). t=1: entry 0 < 2, so nothing runs until t=5.
    assert list(tl.index[:3]) == [0.0, 5.0, 10.0]
    # t=5: two prefills + two decodes reaching the boundary of segment 2 (output 2 = stage 2).
    assert (tl.loc[5.0, "prefill_requests"], tl.loc[5.0, "decode_requests"]) == (2, 2)
    # t=6..10: segment 2's entry holds 2 >= 1, but segment 1's holds 0 < 2: the prefix rule
    # keeps everything paused. t=10: segment 1 (2 prefills, 2 decodes) and one of the two
    # boundary waiters (cap 1 per stage).
    assert (tl.loc[10.0, "prefill_requests"], tl.loc[10.0, "decode_requests"]) == (2, 3)
    assert (r.requests["status"] == "completed").all()


def test_capacity_with_buffer_never_overflows():
    # Rates near the edge of the time condition dT(n) < n_1 / Lambda_1, so the boundary queue of
    # segment 2 builds up beyond n_2: memory above M_pi, which the safety buffer must absorb.
    busy = [RequestType("short", 50, 10, 14.0 * 5.7), RequestType("long", 50, 30, 6.0 * 5.7)]
    d0, d1 = 0.01, 5e-6
    plan = nested_plan(from_request_types(busy), d0, d1, thresholds=[4, 2])
    assert plan.time_ok and plan.ratios_ok
    reqs = typed_requests(busy, 20_000, seed=4)
    buffer = nested_buffer(plan, d0, reqs[-1].arrival_s, delta=0.01)

    def serve(capacity):
        return run(reqs, "nested-wait", {"thresholds": "4,2"}, cost=LinearCost.paper(d0, d1),
                   kv_tokens=capacity, workload_hint=hint(busy))

    bare = serve(int(plan.M_pi))
    assert bare.raw.preemptions > 0               # M_pi alone is not enough here ...
    safe = serve(int(plan.M_pi + buffer))
    assert safe.raw.preemptions == 0              # ... M_pi + buffer is, over the whole run
    assert plan.M_pi < safe.peak_kv_tokens <= plan.M_pi + buffer
    assert (safe.requests["status"] == "completed").all()


def test_memory_repair_keeps_kv_within_capacity_when_the_condition_fails():
    busy = [RequestType("short", 50, 10, 70.0), RequestType("long", 50, 30, 30.0)]
    plan = nested_plan(from_request_types(busy), 0.01, 5e-6, thresholds=[4, 2])
    capacity = int(0.5 * plan.M_pi)          # far below M_pi: overflow must be repaired
    reqs = typed_requests(busy, 3_000, seed=6)
    r = run(reqs, "nested-wait", {"thresholds": "4,2"}, cost=LinearCost.paper(0.01, 5e-6),
            kv_tokens=capacity, workload_hint=hint(busy))
    frame = r.requests
    assert (frame["status"] == "completed").all()
    assert r.raw.preemptions > 0
    assert r.peak_kv_tokens <= capacity
    # Repair evicts requests waiting at the segment boundary first: survivors, i.e. long
    # requests (short ones only by the last-resort preemption of a decode that cannot grow).
    evicted = frame[frame["preemptions"] > 0]
    assert (evicted["output_tokens"] == 30).mean() > 0.75


def test_chunked_variant_completes_and_chunks():
    reqs = typed_requests(SHORT_LONG, 1_000, seed=7)
    r = run(reqs, "nested-wait", {"chunk_size": 16}, cost=LinearCost.paper(0.01, 5e-6),
            kv_tokens=40_000, block_size=16, workload_hint=hint(SHORT_LONG))
    assert (r.requests["status"] == "completed").all()
    assert (r.timeline["prefill_tokens"] <= 16 * r.timeline["prefill_requests"]).all()
    assert r.policy.prefix_rule is False


def test_segments_from_the_length_distribution():
    w = synthesize(Poisson(8.0), IndependentLengths(Uniform(20, 80), Uniform(1, 100)), 3,
                   num_requests=800)
    reqs = list(w.requests())
    for segments in (1, 2, 5):
        r = run(reqs, "nested-wait", {"segments": segments}, cost=LinearCost.paper(0.01, 5e-6),
                kv_tokens=60_000, block_size=16, workload_hint=hint(requests=reqs))
        info = r.policy.info
        assert len(info["segments"]) == segments
        assert info["segments"][-1][1] == max(q.output_tokens for q in reqs)
        assert (r.requests["status"] == "completed").all()
    # Unknown lengths: the policy never reads a request's true output length to decide.
    r2 = run([Request(q.request_id, q.arrival_s, q.prompt_tokens, q.output_tokens)
              for q in reqs], "nested-wait", {"segments": 5}, cost=LinearCost.paper(0.01, 5e-6),
             kv_tokens=60_000, block_size=16, workload_hint=hint(requests=reqs))
    assert np.allclose(r2.requests["completion_s"], r.requests["completion_s"])


def test_default_thresholds_follow_the_fluid_model():
    types = [RequestType("s", 50, 10, 14.0), RequestType("l", 50, 30, 6.0)]
    reqs = typed_requests(types, 500, seed=8)
    r = run(reqs, "nested-wait", cost=LinearCost.paper(0.01, 5e-6), kv_tokens=100_000,
            workload_hint=hint(types))
    plan = nested_plan(from_request_types(types), 0.01, 5e-6, capacity=100_000)
    assert r.policy.info["thresholds"] == pytest.approx(list(plan.thresholds))
    assert r.policy.info["conditions_met"]
    assert r.policy.info["patience_s"] == pytest.approx(plan.dT)
