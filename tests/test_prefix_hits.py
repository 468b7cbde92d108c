"""Every built-in policy plans a waiting request by its uncached tokens: the engine says how
much of its prompt the prefix cache holds (``RequestState.cached``) and how many of those blocks
live requests hold already (``cached_shared_blocks``, which take no free block)."""

from __future__ import annotations

import pytest

from scheduler.base import make_policy
from tests.conftest import builtin_policy_names
from scheduler.state import ReplicaSpec, ReplicaView, RequestState
from simulator.cost.linear import LinearCost
from tests.fluid_helpers import hint
from traces.lengths import RequestType

BLOCK = 16
PROMPT, OUTPUT = 128, 4              # 8 blocks of prompt
CACHED, SHARED = 96, 6               # 6 full blocks cached, all held by other live requests
FREE = 2                             # enough for the 2 uncached blocks, not for 8

# The threshold policies plan with the workload: one type, released at a threshold of 1.
PARAMS = {"wait": {"thresholds": "1", "d0": 0.01, "d1": 1e-5},
          "nested-wait": {"thresholds": "1", "d0": 0.01, "d1": 1e-5}}


def decide(name: str, cached: int, shared: int):
    spec = ReplicaSpec(num_blocks=60, block_size=BLOCK, max_model_len=4096,
                       cost_model=LinearCost.paper(0.01, 1e-5),
                       workload_hint=hint([RequestType("p128d4", PROMPT, OUTPUT, 1.0)]))
    policy = make_policy(name, PARAMS.get(name, {}))
    policy.bind(spec)
    req = RequestState(0, 0.0, PROMPT, OUTPUT)
    req.cached, req.cached_shared_blocks = cached, shared
    policy.on_arrival(req)
    view = ReplicaView(spec)
    view.free_blocks, view.num_waiting, view.arrivals_done = FREE, 1, True
    return req, policy.schedule(view)


@pytest.mark.parametrize("name", builtin_policy_names())
def test_a_cache_hit_is_admitted_by_its_uncached_tokens_and_blocks(name):
    req, decision = decide(name, CACHED, SHARED)
    assert decision.prefill == [(req, PROMPT - CACHED)]
    # The same request without the hit needs 8 free blocks: not admitted.
    _, cold = decide(name, 0, 0)
    assert not cold.prefill


@pytest.mark.parametrize("name", ["vllm-v1", "sarathi", "vllm"])
def test_evictable_cached_blocks_are_taken_from_the_free_ones(name):
    """A hit whose blocks only the cache holds (they count as free): admission takes them too,
    so 2 free blocks cannot hold a 6-block hit plus its 2 new blocks (vLLM's allocate_slots)."""
    _, decision = decide(name, CACHED, 0)
    assert not decision.prefill
