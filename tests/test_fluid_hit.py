"""The fluid policies' view of the prefix cache: the hint's expected hit rate against closed
forms of the workload, and the fluid model, WAIT's and Nested WAIT's thresholds with cached
prompt tokens against hand-computed values (docs/fluid.md, "Prefix caching")."""

from __future__ import annotations

import pytest

from conftest import require_shared
from scheduler.base import make_policy
from scheduler.fluid import (FluidType, check_wait, equilibrium, nested_plan, types_from_lengths,
                             wait_thresholds, with_hit_rate)
from simulator.config import RunConfig
from simulator.runner import build_replica, build_workload, simulate

MOONCAKE = ("traces", "conversation_trace.jsonl")


def _hint(cfg: RunConfig):
    workload = build_workload(cfg)
    return workload, build_replica(cfg, workload).workload_hint


def test_hint_hit_rate_of_a_system_prompt_equals_its_closed_form():
    """300-token system prompt on a seeded 60%: every carrier but the first finds floor(300 /
    16) blocks cached; the hint says so with the cache on, and 0 with it off."""
    cfg = RunConfig(num_requests=100, system_prompt_len=300, system_prompt_share=0.6,
                    rate=5.0, seed=2).validate()
    workload, hint = _hint(cfg)
    carriers = int((workload.frame["system_prompt_tokens"] > 0).sum())
    expected = (carriers - 1) * (300 // 16 * 16) / workload.frame["prompt_tokens"].sum()
    assert 40 < carriers < 80
    assert hint.hit_rate == pytest.approx(expected, rel=1e-12)
    for off in (RunConfig(num_requests=100, system_prompt_len=300, system_prompt_share=0.6,
                          rate=5.0, seed=2, prefix_caching=False),
                RunConfig(num_requests=100, rate=5.0, seed=2)):      # nothing shared
        assert _hint(off.validate())[1].hit_rate == 0.0


@pytest.mark.parametrize("block_size", [16, 64])
def test_hint_hit_rate_of_sessions_equals_its_closed_form(block_size):
    """Sessions of 4 turns: turn k finds the whole blocks of turn k-1's prompt + answer - 1
    tokens (the KV turn k-1 computed) cached; the first turns nothing."""
    cfg = RunConfig(num_requests=120, session_turns=4, think_time=1.0, rate=2.0,
                    prompt_len="32:200", output_len="8:100", block_size=block_size,
                    seed=4).validate()
    workload, hint = _hint(cfg)
    f = workload.frame
    hits = 0
    for i in range(1, len(f)):
        if f["session_id"].iloc[i] == f["session_id"].iloc[i - 1]:
            computed = f["prompt_tokens"].iloc[i - 1] + f["output_tokens"].iloc[i - 1] - 1
            hits += computed // block_size * block_size
    assert hits > 0
    assert hint.hit_rate == pytest.approx(hits / f["prompt_tokens"].sum(), rel=1e-12)


def test_hint_hit_rate_of_mooncake_equals_the_engines_without_eviction():
    """The first 300 Mooncake conversation requests, one at a time with room for every block:
    the engine's measured hit rate (tests/test_prefix_cache.py checks it against the closed
    form from hash_ids) is the hint's; at the GPU's capacity with the trace's own arrivals the
    engine can only find less."""
    path = require_shared(*MOONCAKE)
    common = dict(trace=str(path), num_requests=300, model="llama-3.1-8b", gpu="h100-80gb",
                  timeline=False)
    spaced = RunConfig(**common, generate_arrivals=True, arrival="deterministic", rate=0.001,
                       kv_capacity=10**9).validate()
    workload, hint = _hint(spaced)
    measured = simulate(spaced, workload).summary["prefix_cache_hit_rate"]
    assert hint.hit_rate == pytest.approx(measured, rel=1e-12) and hint.hit_rate > 0.05
    _, own = _hint(RunConfig(**common).validate())
    assert own.hit_rate == hint.hit_rate       # a property of the requests, not of the run


# One type, the paper's stages (as tests/test_fluid.py): l = 2, l' = 3, lambda = 0.5, d0 = 1,
# d1 = 0.01, C = 100: w = 14, rho = 7. Half of the prompt cached: c = 1, the compute work
# w - c = 13, rho_c = 6.5, d1 rho_c = 0.065.
ONE = FluidType("a", 2, 3, 0.5)


def test_equilibrium_with_cached_prompt_tokens_by_hand():
    cached, = with_hit_rate([ONE], 0.5)
    assert cached.cached == 1.0 and cached.compute_work("paper") == 13.0
    eq = equilibrium([cached], d0=1.0, d1=0.01, capacity=100, convention="paper")
    assert eq.rho == pytest.approx(7.0) and eq.rho_compute == pytest.approx(6.5)
    assert eq.dT_star == pytest.approx(1 / 0.935)          # uncached: 1 / 0.93
    assert eq.M_star == pytest.approx(7 / 0.935)           # the KV held is still w per request
    assert eq.n_star == pytest.approx((0.5 / 0.935,))
    assert eq.throughput_bound == pytest.approx(1.5)       # the same output
    # M*(a) = C  <=>  a (d0 rho + d1 rho_c C) = C: 100 / (7 + 6.5), uncached 100 / 14.
    assert eq.max_rate_scale == pytest.approx(100 / 13.5)
    edge = equilibrium(with_hit_rate([FluidType("a", 2, 3, 0.5 * eq.max_rate_scale)], 0.5),
                       1.0, 0.01, 100, "paper")
    assert edge.M_star == pytest.approx(100)
    uncached = equilibrium([ONE], 1.0, 0.01, 100, "paper")
    assert eq.as_dict()["load"] == pytest.approx(0.065) and uncached.as_dict()["load"] == \
        pytest.approx(0.07)


def test_wait_thresholds_with_cached_prompt_tokens_by_hand():
    """dT(n) = d0 + d1 n (w - c): n = 2 gives 1 + 0.01 x 2 x 13 = 1.26 (uncached 1.28) with M_pi
    = 2 x 14 either way. The fractional fluid threshold n = (1 + eps) d0 lambda / (1 - d1 rho_c)
    = 1.1 x 0.5 / 0.935 (uncached / 0.93): smaller by 0.93 / 0.935."""
    cached = with_hit_rate([ONE], 0.5)
    plan = check_wait(cached, [2], 1.0, 0.01, 100, "paper")
    assert plan.dT == pytest.approx(1.26) and plan.M_pi == pytest.approx(28.0)
    assert check_wait([ONE], [2], 1.0, 0.01, 100, "paper").dT == pytest.approx(1.28)
    frac = wait_thresholds(cached, 1.0, 0.01, slack=0.1, capacity=100, convention="paper",
                           integer=False)
    plain = wait_thresholds([ONE], 1.0, 0.01, slack=0.1, capacity=100, convention="paper",
                            integer=False)
    assert frac.thresholds[0] == pytest.approx(1.1 * 0.5 / 0.935)
    assert plain.thresholds[0] == pytest.approx(1.1 * 0.5 / 0.93)
    assert frac.M_pi == pytest.approx(frac.thresholds[0] * 14)
    assert frac.dT == pytest.approx(1 + 0.01 * frac.thresholds[0] * 13)
    assert frac.time_ok and frac.memory_ok


def test_nested_plan_with_cached_prompt_tokens_by_hand():
    """Types a (l 2, o 3, rate 0.5) and b (l 4, o 6, rate 0.25), half of each prompt cached
    (1 and 2 tokens), paper stages. Segment 1: stages [0, 4), rate 0.75, prompt 4, cached 2:
    work (4 + 3/2) 4 = 22, compute work 20; segment 2: [4, 7), survival 1/3, prompt 4: work
    (4 + 5) 3 = 27, nothing cached (no prefill in it). q_2 = 1/3 + 0.05; n_1 = 1.1 x 0.75 /
    (1 - 0.01 (0.75 x 20 + 0.75 q_2 x 27)), n_2 = n_1 q_2; dT = d0 + d1 (20 n_1 + 27 n_2),
    M_pi = 22 n_1 + 27 n_2; uncached, 22 in place of 20 in both n_1 and dT."""
    types = [FluidType("a", 2, 3, 0.5), FluidType("b", 4, 6, 0.25)]
    plan = nested_plan(with_hit_rate(types, 0.5), 1.0, 0.01, convention="paper")
    seg1, seg2 = plan.segments
    assert (seg1.work, seg1.compute_work, seg2.work, seg2.compute_work) == (22, 20, 27, 27)
    q2 = 1 / 3 + 0.05
    n1 = 1.1 * 0.75 / (1 - 0.01 * (0.75 * 20 + 0.75 * q2 * 27))
    assert plan.thresholds == pytest.approx((n1, n1 * q2))
    assert plan.dT == pytest.approx(1 + 0.01 * (20 * n1 + 27 * n1 * q2))
    assert plan.M_pi == pytest.approx(22 * n1 + 27 * n1 * q2)
    plain = nested_plan(types, 1.0, 0.01, convention="paper")
    n1_plain = 1.1 * 0.75 / (1 - 0.01 * (0.75 * 22 + 0.75 * q2 * 27))
    assert plain.thresholds[0] == pytest.approx(n1_plain) and n1 < n1_plain
    assert plain.dT == pytest.approx(1 + 0.01 * (22 * n1_plain + 27 * n1_plain * q2))


@pytest.mark.parametrize("policy", ["wait", "nested-wait"])
def test_policies_plan_with_the_hints_hit_rate(policy):
    """WAIT and Nested WAIT on a system-prompt workload read the hint's hit rate: their types
    carry c = h l, and their thresholds and fluid iteration time are the fluid model's with it
    (smaller than with the cache off, by the formula's amount)."""
    common = dict(num_requests=200, system_prompt_len=1024, system_prompt_share=0.9, rate=8.0,
                  prompt_len="64:256", output_len="16:128", seed=3, policy=policy,
                  policy_params={"d0": 0.01, "d1": 2e-6})
    plans = {}
    for caching in (True, False):
        cfg = RunConfig(**common, prefix_caching=caching).validate()
        workload, hint = _hint(cfg)
        spec = build_replica(cfg, workload)
        pol = make_policy(policy, cfg.policy_params)
        pol.bind(spec)
        f = workload.frame
        bounds = types_from_lengths(f["prompt_tokens"], f["output_tokens"], hint.arrival_rate,
                                    10, "equal-width", "max")
        types = with_hit_rate(bounds, hint.hit_rate)
        if policy == "wait":
            plan = wait_thresholds(types, 0.01, 2e-6, 0.1, spec.kv_capacity_tokens)
        else:
            plan = nested_plan(types, 0.01, 2e-6, capacity=spec.kv_capacity_tokens)
        assert pol.info["thresholds"] == pytest.approx(list(plan.thresholds))
        assert pol.info["dT"] == pytest.approx(plan.dT)
        assert pol.info.get("hit_rate", 0.0) == hint.hit_rate
        plans[caching] = (hint.hit_rate, pol.info["dT"])
    (h_on, dT_on), (h_off, dT_off) = plans[True], plans[False]
    assert h_off == 0.0 and h_on > 0.5 and dT_on < dT_off


def test_wait_on_a_disaggregated_decode_pool_plans_decode_only():
    """A decode replica receives every prompt computed (simulator/disagg.py): WAIT there plans
    with hit rate 1, so its iterations charge each request's decode work w - l only (the
    paper's own simulator's decode-only setting). dT by hand from the thresholds: d0 + d1 sum_j
    n_j (w_j - l_j); memory keeps w."""
    from simulator.runner import _pool_spec
    cfg = RunConfig(policy="wait", policy_params={"d0": 0.01, "d1": 2e-6}, rate=8.0,
                    num_requests=200, prompt_len="256:512", output_len="32:96", seed=2,
                    prefill_replicas=1, decode_replicas=2).validate()
    workload = build_workload(cfg)
    spec = build_replica(cfg, workload)
    decode = make_policy("wait", cfg.policy_params)
    decode.bind(_pool_spec(spec, 2, decode_only=True))
    aggregated = make_policy("wait", cfg.policy_params)
    aggregated.bind(_pool_spec(spec, 2))
    assert decode.info["hit_rate"] == 1.0 and "hit_rate" not in aggregated.info
    f = workload.frame
    types = with_hit_rate(types_from_lengths(f["prompt_tokens"], f["output_tokens"],
                                             spec.workload_hint.arrival_rate / 2, 10,
                                             "equal-width", "max"), 1.0)
    plan = wait_thresholds(types, 0.01, 2e-6, 0.1, spec.kv_capacity_tokens)
    assert decode.info["thresholds"] == pytest.approx(list(plan.thresholds))
    by_hand = 0.01 + 2e-6 * sum(n * (t.work() - t.prompt)
                                for n, t in zip(plan.thresholds, types))
    assert decode.info["dT"] == pytest.approx(by_hand)
    assert decode.info["dT"] < aggregated.info["dT"]
