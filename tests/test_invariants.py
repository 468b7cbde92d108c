"""Invariants every registered policy keeps on random workloads (property-based).

Iterates ``policy_names()``, so a policy registered later is covered without touching this file.
Workloads are small but adversarial: bursts, tiny KV caches that force preemption, and requests
that can never fit (rejected at arrival, or by the policy) mixed with ones that can.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pytest

from scheduler.base import policy_names
from simcase import requests, simulate
from simulator.cost.linear import LinearCost

MAX_MODEL_LEN = 160
# Extra parameter sets that exercise a policy's less common paths (small budgets that force
# chunking, a large watermark, a small sequence cap). Each policy also runs with its defaults.
VARIANTS = {
    "vllm": [{"max_num_batched_tokens": MAX_MODEL_LEN, "watermark": 0.2}],
    "vllm-v1": [{"max_num_batched_tokens": 24, "max_num_seqs": 3}],
    "sarathi": [{"chunk_size": 16}],
    "sjf": [{"predictor": "noisy", "max_num_batched_tokens": 40}],
    "orca": [{"max_num_seqs": 2}],
}
CASES = [(name, None) for name in policy_names()] + \
    [(name, v) for name, vs in VARIANTS.items() if name in policy_names() for v in vs]

row = st.tuples(
    st.one_of(st.just(0.0), st.floats(0.0, 0.1)),     # gap to the previous arrival (bursts)
    st.integers(1, 150),                              # prompt
    st.integers(1, 40),                               # output
)
case = st.fixed_dictionaries({
    "rows": st.lists(row, min_size=1, max_size=14),
    "block_size": st.sampled_from([1, 4, 16]),
    # KV capacity relative to the largest request: below 1 rejects it, just above 1 preempts.
    "kv_scale": st.floats(0.7, 2.5),
    "seed": st.integers(0, 3),
})


def _workload(rows):
    t, out = 0.0, []
    for gap, p, o in rows:
        t += gap
        out.append((t, p, o))
    return requests(*out)


@pytest.mark.parametrize("policy,params", CASES,
                         ids=[f"{n}" + (f"-{i}" if v else "") for i, (n, v) in enumerate(CASES)])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=case)
def test_invariants(policy, params, c):
    reqs = _workload(c["rows"])
    bs = c["block_size"]
    largest = max(min(p + o, MAX_MODEL_LEN) for _, p, o in c["rows"])
    kv_tokens = max(int(c["kv_scale"] * largest) // bs, 1) * bs
    cost = LinearCost(c0=0.01, c_prefill=1e-4, c_decode=1e-3, c_kv=1e-5)
    out = simulate(reqs, policy, params, kv_tokens=kv_tokens, block_size=bs,
                   max_model_len=MAX_MODEL_LEN, cost=cost, seed=c["seed"])
    spec = out.spec
    frame = out.requests.set_index("request_id")
    event(f"preemptions: {'yes' if out.raw.preemptions else 'no'}")
    event(f"rejections: {'yes' if (frame.status == 'rejected').any() else 'no'}")

    # Every request ends completed or rejected (with a reason); none is left behind.
    assert set(frame.status) <= {"completed", "rejected"}
    for r in reqs:
        f = frame.loc[r.request_id]
        never_fits = (r.prompt_tokens + r.output_tokens > MAX_MODEL_LEN or
                      spec.blocks_for(r.prompt_tokens + r.output_tokens - 1) > spec.num_blocks)
        if never_fits:
            assert f.status == "rejected"
        if f.status == "rejected":
            assert isinstance(f.reject_reason, str) and f.reject_reason
        else:
            assert f.arrival_s <= f.first_scheduled_s <= f.first_token_s <= f.completion_s

    # Tokens produced equal the output lengths, and the KV is all returned at the end.
    for s in out.raw.states:
        if s.status.value == "finished":
            assert s.generated == s.output_tokens and s.kv_blocks == 0
    assert out.free_blocks_at_end == spec.num_blocks

    # KV used never exceeds capacity.
    tl = out.timeline
    assert (tl.kv_used_tokens <= spec.kv_capacity_tokens).all()
    assert out.raw.peak_kv_blocks <= spec.num_blocks

    # Token accounting: every token computed is either kept until completion or was discarded by
    # a preemption; every token emitted belongs to some request's output.
    completed = frame[frame.status == "completed"]
    lost = sum(step.computed[rid] for step in out.steps for rid in step.preempt)
    computed = int(tl.prefill_tokens.sum() + tl.decode_requests.sum())
    assert computed == int((completed.prompt_tokens + completed.output_tokens - 1).sum()) + lost
    emitted = sum(len(step.decode) for step in out.steps) + sum(
        1 for step in out.steps for rid, n in step.prefill
        if step.computed[rid] + n == step.num_tokens[rid])
    assert emitted == int(completed.output_tokens.sum())
    assert out.raw.preemptions == int(frame.preemptions.sum()) == \
        sum(len(step.preempt) for step in out.steps)
