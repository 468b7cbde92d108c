"""The adapter with `vllm-v1` equals vLLM's own V1 scheduler on what vLLM's server settings turn
on: speculative decoding (refused), `--scheduling-policy priority`, and prefix caching (on by
default in vLLM 0.32). Each comparison drives vLLM's real scheduler (stock and adapter) through
the same requests and compares the schedules step for step, as in test_vllm_adapter.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require_vllm

require_vllm()

from simulator.vllm.loop import TOKEN_ID, build_scheduler, model_output  # noqa: E402
from simulator.vllm.plugin import PluginConfig, build_policy, scheduler_class  # noqa: E402
from tests.vllm_helpers import MODEL, OPTIONS, drive, drive_pipelined, spec  # noqa: E402
from traces.request import Request  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.request import Request as VllmRequest  # noqa: E402


def to_vllm(prompts: dict, priorities: dict | None = None, hashed: bool = False):
    """Request -> vLLM request with the prompt token ids ``prompts[id]``, the priority
    ``priorities[id]``, and block hashes (what the engine core adds when prefix caching is on)."""
    hasher = None
    if hashed:
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        init_none_hash(sha256)
        hasher = get_request_block_hasher(16, sha256)

    def make(r: Request):
        return VllmRequest(str(r.request_id), prompt_token_ids=list(prompts[r.request_id]),
                           sampling_params=SamplingParams(max_tokens=r.output_tokens,
                                                          ignore_eos=True),
                           pooling_params=None, arrival_time=r.arrival_s,
                           priority=(priorities or {}).get(r.request_id, 0),
                           block_hasher=hasher)
    return make


def stock_and_adapter(blocks: int, options: dict, policy_params: dict | None = None,
                      async_scheduling: bool = False):
    stock = build_scheduler(MODEL, spec(blocks), options, async_scheduling=async_scheduling,
                            scheduler_cls=AsyncScheduler if async_scheduling else Scheduler)
    ours = build_scheduler(MODEL, spec(blocks), options, async_scheduling=async_scheduling)
    if policy_params is not None:     # else the adapter builds vllm-v1 itself, as in a server
        # Parameters not given follow the server's options, as in a live server.
        ours.configure(build_policy(PluginConfig("vllm-v1", policy_params),
                                    ours.server_options()))
    return stock, ours


def assert_same_schedule(a, b):
    assert len(a) == len(b), f"stock ran {len(a)} steps, the adapter {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"step {i}: stock {x} != adapter {y}"


# -- speculative decoding ------------------------------------------------------------------------

@pytest.mark.parametrize("async_scheduling", [False, True])
def test_speculative_decoding_is_refused_at_start_up_in_one_line(async_scheduling):
    """vLLM schedules 1 + k tokens for a decode that carries k draft tokens; a policy plans one
    per decode, so the adapter would cut the drafts away: it refuses to start instead."""
    options = {**OPTIONS, "num_speculative_tokens": 2}
    stock = build_scheduler(MODEL, spec(), options, scheduler_cls=Scheduler)
    stock.add_request(to_vllm({0: [TOKEN_ID] * 20})(Request(0, 0.0, 20, 6)))
    out = stock.schedule()
    stock.update_from_output(out, model_output(out, stock.requests))
    from vllm.v1.outputs import DraftTokenIds
    stock.update_draft_token_ids(DraftTokenIds(["0"], [[5, 6]]))
    out = stock.schedule()
    assert out.num_scheduled_tokens == {"0": 3}                  # 1 + its 2 drafts
    assert out.scheduled_spec_decode_tokens == {"0": [5, 6]}

    with pytest.raises(ValueError) as refused:
        build_scheduler(MODEL, spec(), options, scheduler_cls=scheduler_class(async_scheduling),
                        async_scheduling=async_scheduling)
    message = str(refused.value)
    assert "\n" not in message
    assert "does not support speculative decoding" in message and "2 draft tokens" in message
    assert "--speculative-config" in message


# -- --scheduling-policy priority ----------------------------------------------------------------

def priority_workload(n=40, seed=11):
    """Varied lengths and priorities (0-4), arriving 0.4 steps apart (distinct arrival times:
    vLLM breaks ties on equal priority and arrival by comparing request id strings)."""
    rng = np.random.default_rng(seed)
    reqs = [Request(i, 0.4 * i, int(rng.integers(8, 200)), int(rng.integers(2, 40)))
            for i in range(n)]
    priorities = {r.request_id: int(rng.integers(0, 5)) for r in reqs}
    prompts = {r.request_id: [TOKEN_ID] * r.prompt_tokens for r in reqs}
    return reqs, to_vllm(prompts, priorities)


def test_priority_scheduling_orders_admissions_and_picks_victims_like_vllm():
    reqs, make = priority_workload()
    options = {**OPTIONS, "scheduling_policy": "priority"}
    stock, ours = stock_and_adapter(40, options)     # the policy comes from the server: no configure
    a, b = drive(stock, reqs, to_vllm=make), drive(ours, reqs, to_vllm=make)
    assert_same_schedule(a, b)
    assert ours.servesim_policy.params.scheduling_policy == "priority"   # mirrored
    admitted = [int(rid) for s in a for rid in s.new]
    assert admitted != sorted(admitted) and sum(len(s.preempted) for s in a) > 0
    stats = ours.servesim_stats
    assert stats.divergent_steps == stats.requeued == stats.vllm_preemptions == 0
    # And with two batches in flight (async scheduling).
    stock, ours = stock_and_adapter(40, options, async_scheduling=True)
    assert drive_pipelined(stock, reqs, to_vllm=make) == drive_pipelined(ours, reqs, to_vllm=make)
    assert ours.servesim_stats.divergent_steps == 0


@pytest.mark.parametrize("rule", [{"scheduling_policy": "fcfs"},
                                  {"scheduling_policy": "priority", "victim": "latest-admitted"}])
def test_either_fcfs_rule_under_a_priority_server_schedules_differently(rule):
    """The same workload with the policy's queue order, or its victim, held to FCFS: vLLM
    carries out the policy's decisions, and the schedule is no longer the stock priority
    scheduler's, so the comparison above depends on both rules."""
    reqs, make = priority_workload()
    options = {**OPTIONS, "scheduling_policy": "priority"}
    stock, ours = stock_and_adapter(40, options, rule)
    assert drive(stock, reqs, to_vllm=make) != drive(ours, reqs, to_vllm=make)
    assert ours.servesim_stats.divergent_steps == 0


# -- prefix caching ------------------------------------------------------------------------------

def sessions(n_sessions=5, first=96, message=30, output=2, second_turn_at=30.0):
    """Multi-turn chats: turn 1 of each session at t = 0 (a distinct prompt of ``first`` tokens),
    turn 2 at ``second_turn_at``: turn 1's prompt + its answer + a new message, so that all of
    turn 1's prompt blocks are a cached prefix. Token ids are distinct per session."""
    reqs, prompts = [], {}
    for s in range(n_sessions):
        base = 1000 * (s + 1)
        turn1 = [base + t for t in range(first)]
        turn2 = turn1 + [TOKEN_ID] * output + [base + 500 + t for t in range(message)]
        reqs += [Request(s, 0.0, len(turn1), output),
                 Request(n_sessions + s, second_turn_at, len(turn2), output)]
        prompts[s], prompts[n_sessions + s] = turn1, turn2
    return reqs, prompts


def run_both(stock, ours, reqs, make, async_scheduling):
    """Both schedulers through the same requests: each step's scheduled tokens."""
    if async_scheduling:
        return drive_pipelined(stock, reqs, to_vllm=make), drive_pipelined(ours, reqs,
                                                                            to_vllm=make)
    a, b = drive(stock, reqs, to_vllm=make), drive(ours, reqs, to_vllm=make)
    return [s.tokens for s in a], [s.tokens for s in b]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_cached_multi_turn_prompts_are_admitted_by_their_uncached_tokens(async_scheduling):
    """Five second turns of 128 tokens, 96 of them cached: vLLM computes 32 each and admits all
    five in one step of a 256-token budget; planned by whole prompts, two would fit."""
    reqs, prompts = sessions()
    options = {**OPTIONS, "enable_prefix_caching": True}
    stock, ours = stock_and_adapter(60, options, {}, async_scheduling)
    a, b = run_both(stock, ours, reqs, to_vllm(prompts, hashed=True), async_scheduling)
    assert_same_schedule(a, b)
    second = next(s for s in a if any(int(rid) >= 5 for rid in s))
    assert second == {str(i): 128 - 96 for i in range(5, 10)}
    stats = ours.servesim_stats
    assert stats.divergent_steps == stats.requeued == 0


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_blocks_shared_with_running_requests_cost_no_free_kv(async_scheduling):
    """A long-running request holds a 160-token system prompt (10 blocks); later requests start
    with the same system prompt. With little KV left, vLLM's full-prompt gate counts only their
    own blocks: the shared ones are already in use, not taken from the free ones."""
    system = list(range(2000, 2160))
    reqs = [Request(0, 0.0, 176, 200)]
    prompts = {0: system + list(range(3000, 3016))}
    for i in range(1, 9):
        reqs.append(Request(i, 3.0 + 0.1 * i, 192, 4))
        prompts[i] = system + [4000 + 100 * i + t for t in range(32)]
    options = {**OPTIONS, "enable_prefix_caching": True}
    stock, ours = stock_and_adapter(40, options, {}, async_scheduling)
    a, b = run_both(stock, ours, reqs, to_vllm(prompts, hashed=True), async_scheduling)
    assert_same_schedule(a, b)
    # Several requests of 12 blocks each run at once beside request 0, which a count of whole
    # prompts (12 blocks each, from 40 - 12 = 28 free) would not allow.
    most = max(len(s) for s in a)
    assert most - 1 > 28 // 12
    stats = ours.servesim_stats
    assert stats.divergent_steps == stats.requeued == 0
