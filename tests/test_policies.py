"""Behaviour of each baseline policy against its rules (../shared/docs/scheduling-algorithms.md
section 6), checked on every decision the policy made during a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scheduler.base import PolicyError, make_policy
from scheduler.state import ReplicaSpec, RequestState
from simcase import requests, simulate
from traces import IndependentLengths, Poisson, Uniform, synthesize


def workload(n=60, rate=40.0, prompt=(32, 200), output=(4, 60), seed=1):
    w = synthesize(Poisson(rate), IndependentLengths(Uniform(*prompt), Uniform(*output)), seed,
                   num_requests=n)
    return list(w.requests())


# A KV cache of 1,024 tokens (64 blocks of 16) for prompts up to 200 and outputs up to 60 under a
# burst: continuous batching admits more than fits at peak, so decodes run out of blocks.
TIGHT_KV = 1024
PREEMPTING = ("vllm", "vllm-v1", "sarathi", "sjf")


def arrival_rank(out):
    return {int(r.request_id): (r.arrival_s, int(r.request_id))
            for r in out.requests.itertuples()}


# ---------------------------------------------------------------------------------------------
# vLLM V0


def test_vllm_v0_never_decodes_in_a_step_that_prefills():
    out = simulate(workload(), "vllm")
    tl = out.timeline
    assert (tl.prefill_requests > 0).any() and (tl.decode_requests > 0).any()
    assert not ((tl.prefill_requests > 0) & (tl.decode_requests > 0)).any()
    # The same workload under vLLM V1 does mix them: the check above can fail.
    tl1 = simulate(workload(), "vllm-v1").timeline
    assert ((tl1.prefill_requests > 0) & (tl1.decode_requests > 0)).any()


def test_vllm_v0_prefills_whole_prompts_first_come_first_served():
    out = simulate(workload(), "vllm")
    order = sorted(out.requests.itertuples(), key=lambda r: r.first_scheduled_s)
    arrivals = [r.arrival_s for r in order]
    assert arrivals == sorted(arrivals)      # no preemption here: admission is FCFS
    for step in out.steps:
        for rid, n in step.prefill:
            assert n == step.num_tokens[rid] - step.computed[rid]   # whole prompt, no chunk


def test_vllm_v0_needs_a_step_budget_of_max_model_len():
    # V0 cannot chunk: with a smaller budget a long prompt (or a preempted request recomputing
    # prompt + output) could never run. vLLM refuses the configuration; so do we.
    with pytest.raises(PolicyError, match=r"max_num_batched_tokens \(512\).*max_model_len \(1024\)"):
        simulate(requests((0.0, 100, 5)), "vllm", {"max_num_batched_tokens": 512},
                 max_model_len=1024)


def test_vllm_v0_preempts_the_latest_arrived_and_requeues_it_first():
    out = simulate(workload(), "vllm", kv_tokens=TIGHT_KV)
    rank = arrival_rank(out)
    preempting = [s for s in out.steps if s.preempt]
    assert preempting, "the workload must force preemptions"
    for s in preempting:
        by_arrival = sorted(s.resident, key=rank.get)
        # Victims, in order, are the latest arrivals among the running requests.
        assert s.preempt == by_arrival[::-1][:len(s.preempt)]
    _assert_victims_readmitted_first(out)


def _assert_victims_readmitted_first(out):
    """After a step that preempted, the next request admitted is the last victim (it went to
    the front of the waiting queue), unless another preemption came first."""
    pending = None
    for s in out.steps:
        if s.admitted and pending is not None:
            assert s.admitted[0] == pending
            pending = None
        if s.preempt:
            pending = s.preempt[-1]


# ---------------------------------------------------------------------------------------------
# vLLM V1


@pytest.mark.parametrize("budget", [48, 256])
def test_vllm_v1_never_exceeds_its_token_budget(budget):
    out = simulate(workload(), "vllm-v1", {"max_num_batched_tokens": budget})
    tl = out.timeline
    used = tl.prefill_tokens + tl.decode_requests
    assert used.max() == budget                   # the budget binds...
    assert (used <= budget).all()                 # ...and is never exceeded
    # Prompts longer than the budget were split across steps.
    chunks = sum(len(s.prefill) for s in out.steps)
    assert chunks > len(out.requests)


def test_vllm_v1_schedules_running_first_and_admits_nothing_after_a_preemption():
    out = simulate(workload(), "vllm-v1", kv_tokens=TIGHT_KV)
    assert any(s.preempt for s in out.steps)
    for s in out.steps:
        if s.admitted:
            assert not s.preempt
            scheduled = {rid for rid, _ in s.prefill} | set(s.decode)
            assert set(s.resident) <= scheduled    # every running request got its tokens first
        if s.preempt:
            # Victims are the tail of the running list (the latest admitted), in order.
            assert s.preempt == s.resident[::-1][:len(s.preempt)]
    _assert_victims_readmitted_first(out)


def test_vllm_v1_without_chunking_needs_a_budget_of_max_model_len():
    with pytest.raises(PolicyError, match="max_num_batched_tokens"):
        simulate(requests((0, 10, 2)), "vllm-v1",
                 {"enable_chunked_prefill": False, "max_num_batched_tokens": 1024},
                 max_model_len=2048)
    out = simulate(workload(), "vllm-v1",
                   {"enable_chunked_prefill": False, "max_num_batched_tokens": 256},
                   max_model_len=256)
    for s in out.steps:
        for rid, n in s.prefill:
            assert n == s.num_tokens[rid] - s.computed[rid]


# ---------------------------------------------------------------------------------------------
# Sarathi-Serve


def test_sarathi_never_exceeds_its_chunk_and_decodes_first():
    chunk = 64
    out = simulate(workload(), "sarathi", {"chunk_size": chunk})
    tl = out.timeline
    used = tl.prefill_tokens + tl.decode_requests
    assert used.max() == chunk and (used <= chunk).all()
    for s in out.steps:
        partial = [r for r in s.resident if r not in s.decoding]
        if not s.preempt:
            assert set(s.decoding) <= set(s.decode)      # no decode is ever stalled
        if s.admitted:
            # New chunks only after every ongoing prefill got its share.
            assert set(partial) <= {rid for rid, _ in s.prefill}


def test_sarathi_mixes_decodes_with_prefill_chunks():
    tl = simulate(workload(), "sarathi", {"chunk_size": 64}).timeline
    assert ((tl.prefill_requests > 0) & (tl.decode_requests > 0)).any()


# ---------------------------------------------------------------------------------------------
# Orca and static batching: reserve max KV, never preempt


@pytest.mark.parametrize("policy", ["orca", "static"])
def test_reserving_policies_never_preempt_where_vllm_does(policy):
    assert simulate(workload(), "vllm-v1", kv_tokens=TIGHT_KV).raw.preemptions > 0
    out = simulate(workload(), policy, kv_tokens=TIGHT_KV)
    assert out.raw.preemptions == 0
    assert (out.requests.status == "completed").all()
    lengths = {int(r.request_id): r.prompt_tokens + r.output_tokens - 1
               for r in out.requests.itertuples()}
    for s in out.steps:
        members = s.resident + s.admitted
        reserved = sum(out.spec.blocks_for(lengths[r]) for r in members)
        assert reserved <= out.spec.num_blocks


def test_orca_batches_at_iteration_level_with_whole_prompts():
    out = simulate(workload(), "orca", kv_tokens=TIGHT_KV)
    tl = out.timeline
    assert ((tl.prefill_requests > 0) & (tl.decode_requests > 0)).any()
    for s in out.steps:
        for rid, n in s.prefill:
            assert n == s.num_tokens[rid] - s.computed[rid]


def test_static_admits_nothing_while_a_batch_is_resident():
    out = simulate(workload(), "static", kv_tokens=TIGHT_KV)
    batches = 0
    for s in out.steps:
        if s.resident:
            assert not s.admitted
        if s.admitted:
            batches += 1
    assert 1 < batches < len(out.requests)
    # Seen from the requests table: a batch starts only after the previous one has finished.
    frame = out.requests.sort_values("first_scheduled_s")
    prev_end = -math.inf
    for start, batch in frame.groupby("first_scheduled_s", sort=True):
        assert start >= prev_end
        prev_end = batch.completion_s.max()


# ---------------------------------------------------------------------------------------------
# Shortest job first


def _priority_violations(out, key):
    """Steps where an admitted request ranks after one left waiting."""
    bad = 0
    for s in out.steps:
        if s.admitted and s.waiting_after:
            if max(map(key, s.admitted)) > min(map(key, s.waiting_after)):
                bad += 1
    return bad


def test_sjf_oracle_admits_in_order_of_output_length():
    reqs = workload(n=80, rate=80.0, output=(2, 200))
    out = simulate(reqs, "sjf", {"max_num_seqs": 4})
    table = out.requests.set_index("request_id")
    key = lambda rid: (table.output_tokens[rid], table.arrival_s[rid], rid)  # noqa: E731
    assert sum(len(s.admitted) for s in out.steps if s.waiting_after) > 20
    assert _priority_violations(out, key) == 0
    # FCFS on the same workload admits out of length order: the check can fail.
    fcfs = simulate(reqs, "vllm-v1", {"max_num_seqs": 4})
    assert _priority_violations(fcfs, key) > 0
    # And the short requests finish sooner under SJF.
    assert out.requests.e2el_ms.mean() < fcfs.requests.e2el_ms.mean()


def test_sjf_noisy_predictor_is_seeded_lognormal():
    sigma = 0.5

    def predictions(seed):
        pol = make_policy("sjf", {"predictor": "noisy", "noise_sigma": sigma})
        pol.bind(ReplicaSpec(num_blocks=100, block_size=16, max_model_len=4096, seed=seed))
        return np.array([pol.predict(RequestState(i, 0.0, 10, 1000)) for i in range(4000)])

    a = predictions(7)
    assert (a == predictions(7)).all()
    assert not (a == predictions(8)).all()
    log_err = np.log(a / 1000)
    assert abs(log_err.mean()) < 4 * sigma / math.sqrt(len(a))
    assert log_err.std() == pytest.approx(sigma, rel=0.05)


# ---------------------------------------------------------------------------------------------
# Recompute preemption


@pytest.mark.parametrize("policy", PREEMPTING)
def test_preempted_requests_recompute_and_finish_with_their_output(policy):
    out = simulate(workload(), policy, kv_tokens=TIGHT_KV)
    assert out.raw.preemptions > 0
    assert out.requests.preemptions.sum() == out.raw.preemptions
    assert (out.requests.status == "completed").all()
    for st in out.raw.states:
        assert st.generated == st.output_tokens
    lost = 0
    resumed_with_output = 0
    prompt = out.requests.prompt_tokens
    generated_at_preemption = {}
    for s in out.steps:
        for rid in s.admitted:
            if rid in generated_at_preemption:
                # A resumed request recomputes its prompt and every token it had generated.
                assert s.num_tokens[rid] == prompt[rid] + generated_at_preemption.pop(rid)
                resumed_with_output += s.num_tokens[rid] > prompt[rid]
        for rid in s.preempt:
            lost += s.computed[rid]
            generated_at_preemption[rid] = s.num_tokens[rid] - prompt[rid]
    assert resumed_with_output > 0 and not generated_at_preemption
    tl = out.timeline
    computed = int(tl.prefill_tokens.sum() + tl.decode_requests.sum())
    kept = int((out.requests.prompt_tokens + out.requests.output_tokens - 1).sum())
    assert lost > 0 and computed == kept + lost
