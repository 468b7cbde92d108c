"""A cluster with prefix caching and closed-loop sessions (simulator/cluster.py,
simulator/closed_loop.py, docs/clusters.md).

Each replica caches on its own block pool; the cluster holds the session turns and its router
places every one. Checked: one replica behind the cluster gives the single replica's tables
exactly, sessions and cache included (the shared closed-loop code changes nothing); turns arrive
exactly their think time after the previous turn ended, wherever it was served, refused at the
front or rejected too; the whole cluster's cache figures are its replicas' sums; invariants over
random clusters with caching, and determinism.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from scheduler.base import make_policy
from scheduler.routers import make_router
from simulator.cluster import native_cluster
from simulator.config import RunConfig, build_config
from simulator.metrics import requests_table, timeline_table
from simulator.runner import build_replica, build_workload, simulate

SESSIONS = dict(session_turns=4, think_time=1.5, rate=3.0, prompt_len="32:400",
                output_len="8:120")


def _turn_times(cfg: RunConfig):
    """The run's requests table and workload table, both by request id."""
    workload = build_workload(cfg)
    result = simulate(cfg, workload)
    return result, result.requests.set_index("request_id"), workload.frame.set_index("request_id")


def _assert_closed_loop(frame: pd.DataFrame, table: pd.DataFrame) -> int:
    """Every later turn arrived exactly its think time after the previous turn of its session
    ended (completed, or rejected: then at the instant it arrived); returns how many turns
    followed a rejected one."""
    after_rejected = 0
    for rid, row in table[table["think_s"] > 0].iterrows():
        prev = rid - 1                     # turns of a session are consecutive request ids
        assert table.loc[prev, "session_id"] == row["session_id"]
        p = frame.loc[prev]
        if p["status"] == "completed":
            ended = p["completion_s"]
        else:
            assert p["status"] == "rejected"
            ended = p["arrival_s"]         # refused or rejected as it arrived
            after_rejected += 1
        assert frame.loc[rid, "arrival_s"] >= ended
        assert frame.loc[rid, "arrival_s"] == pytest.approx(ended + row["think_s"], abs=1e-9)
    return after_rejected


@pytest.mark.parametrize("router", ["round-robin", "random", "session-affinity",
                                    "prefix-affinity"])
def test_session_turns_on_a_cluster_arrive_after_the_previous_turn_plus_think_time(router):
    cfg = RunConfig(num_requests=160, replicas=3, router=router, seed=5, **SESSIONS).validate()
    result, frame, table = _turn_times(cfg)
    assert (frame["status"] == "completed").all() and len(frame) == 160
    assert _assert_closed_loop(frame, table) == 0
    if router in ("round-robin", "random"):
        # The turns of a session do move between replicas: the cluster, not a replica, holds
        # them (a replica-local hold would deadlock or misplace them).
        moved = frame.groupby(table["session_id"])["replica"].nunique()
        assert (moved > 1).any()


def test_a_turn_refused_at_the_front_still_releases_the_next_turn():
    # A token bucket of burst 1 at 0.5/s refuses most first turns (sessions start at 3/s): the
    # turn after a refused one arrives its think time after the refusal, and the run ends.
    cfg = RunConfig(num_requests=120, replicas=2, router="session-affinity", seed=2,
                    admission_rate=0.5, admission_burst=1, **SESSIONS).validate()
    result, frame, table = _turn_times(cfg)
    assert set(frame["status"]) == {"completed", "rejected"}
    refused = frame[frame["reject_reason"] == "admission_token_bucket"]
    assert (refused["replica"] == -1).all() and len(refused) > 20
    assert _assert_closed_loop(frame, table) > 20


def test_a_turn_rejected_as_too_long_still_releases_the_next_turn():
    # Prompts grow turn by turn past max_model_len: the replica rejects those turns as they
    # arrive, one replica or several, and the turns after them still come.
    for replicas in (1, 2):
        cfg = RunConfig(num_requests=80, replicas=replicas, seed=3, max_model_len=450,
                        **SESSIONS).validate()
        result, frame, table = _turn_times(cfg)
        too_long = frame.index[frame["reject_reason"] == "over_max_model_len"]
        followed = [rid for rid in too_long
                    if rid + 1 in table.index and table.loc[rid + 1, "think_s"] > 0]
        assert len(followed) > 5
        assert _assert_closed_loop(frame, table) == len(followed)


@pytest.mark.parametrize("fields", [
    dict(num_requests=120, kv_capacity=6_000, seed=4, **SESSIONS),
    dict(num_requests=200, rate=12.0, system_prompt_len=300, system_prompt_share=0.6,
         prompt_len="16:300", output_len="4:300", kv_capacity=2_500, seed=1,
         policy="sarathi")])
def test_a_one_replica_cluster_with_caching_is_the_single_replica_run(fields):
    cfg = RunConfig(**fields).validate()
    single = simulate(cfg)
    assert single.summary["prefix_cache_hits"] > 0 and single.summary["preemptions"] > 0
    workload = build_workload(cfg)
    raw = native_cluster(workload.requests(), make_router("round-robin"),
                         [make_policy(cfg.policy, cfg.policy_params)],
                         [build_replica(cfg, workload)], prefix_caching=[True]).run()
    cache = raw.replicas[0].prefix_cache
    assert requests_table(raw.states, cached_prompt_tokens=cache.cached_prompt_tokens).equals(
        single.requests)
    assert timeline_table(raw.replicas[0].timeline, cached_blocks=cache.cached_blocks).equals(
        single.timeline)
    assert {k: v for k, v in cache.stats.items()} == \
        {k: v for k, v in single.summary.items() if k.startswith("prefix_cache_")}


def test_cluster_cache_figures_are_the_sums_of_the_replicas():
    cfg = RunConfig(num_requests=200, replicas=3, router="round-robin", seed=6,
                    kv_capacity=50_000, **SESSIONS).validate()
    result = simulate(cfg)
    s, req, tl = result.summary, result.requests, result.timeline
    per = s["cluster"]["per_replica"]
    for key in ("hits", "queries", "admissions", "evictions"):
        assert s[f"prefix_cache_{key}"] == sum(r[f"prefix_cache_{key}"] for r in per)
    assert s["prefix_cache_hit_rate"] == s["prefix_cache_hits"] / s["prefix_cache_queries"]
    assert s["preemptions"] == 0
    for i, r in enumerate(per):
        mine = req[req.replica == i]
        # No preemption: each request was admitted once, its hit counted once.
        assert r["prefix_cache_admissions"] == len(mine)
        assert r["prefix_cache_hits"] == int(mine["cached_prompt_tokens"].sum())
        assert r["prefix_cache_queries"] == int(mine["prompt_tokens"].sum())
        assert r["prefix_cache_hit_rate"] == r["prefix_cache_hits"] / r["prefix_cache_queries"]
        assert (tl[tl.replica == i]["cached_blocks"] >= 0).all()
    assert 0 < s["prefix_cache_hit_rate"] < 1


def test_groups_may_cache_or_not():
    groups = [{"count": 1}, {"count": 1, "prefix_caching": False}]
    cfg = build_config({"groups": groups, "router": "round-robin", "num_requests": 80,
                        "seed": 2, **SESSIONS})
    result = simulate(cfg)
    per = result.summary["cluster"]["per_replica"]
    assert "prefix_cache_hits" in per[0] and "prefix_cache_hits" not in per[1]
    req, tl = result.requests, result.timeline
    assert (req[req.replica == 1]["cached_prompt_tokens"] == 0).all()
    assert (tl[tl.replica == 1]["cached_blocks"] == 0).all()
    assert result.summary["prefix_cache_hits"] == per[0]["prefix_cache_hits"] > 0


def test_prefix_affinity_without_any_cache_is_warned_of():
    """With the cache off on every replica it can only route by load: said in the workload's
    warnings (the CLI prints them); not with one group caching, nor with another router."""
    said = "router prefix-affinity routes by load only: prefix caching is off on every replica"

    def warnings(**fields):
        cfg = build_config({"replicas": 2, "num_requests": 20, "router": "prefix-affinity",
                            **fields})
        return build_workload(cfg).meta.get("warnings", [])
    assert any(w.startswith(said) for w in warnings())                    # nothing shared
    assert any(w.startswith(said) for w in warnings(prefix_caching=False, **SESSIONS))
    assert not any(w.startswith(said) for w in warnings(**SESSIONS))      # on by default
    assert not any(w.startswith(said) for w in warnings(router="round-robin"))
    assert not any(w.startswith(said) for w in warnings(
        replicas=1, groups=[{"count": 1}, {"count": 1, "prefix_caching": False}],
        prefix_caching=True))


def test_config_json_records_whether_the_cache_was_on(tmp_path):
    """Unset, ``prefix_caching`` follows the workload; the run's config says what it was."""
    from simulator.runner import write_outputs
    for fields, on in (({}, False), (SESSIONS, True), ({**SESSIONS, "prefix_caching": False},
                                                       False)):
        result = simulate(build_config({"num_requests": 8, **fields}))
        assert result.config.prefix_caching is on
        write_outputs(result, tmp_path / str(on), replace=True)
        assert json.loads((tmp_path / str(on) / "config.json").read_text())[
            "prefix_caching"] is on


# ---------------------------------------------------------------------------------------------
# Invariants over random clusters with caching, and determinism

ROUTERS = ["round-robin", "random", "least-outstanding", "jsq-tokens", "session-affinity",
           "prefix-affinity"]
POLICIES = ["vllm-v1", "sarathi", "orca", "sjf"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replicas=hs.integers(2, 4), router=hs.sampled_from(ROUTERS),
       policy=hs.sampled_from(POLICIES), kv=hs.integers(800, 6_000), rate=hs.floats(1, 40),
       seed=hs.integers(0, 10_000), turns=hs.sampled_from([1, 2, 4]),
       system=hs.sampled_from([0, 64, 400]), admission=hs.booleans())
def test_cluster_with_caching_invariants(replicas, router, policy, kv, rate, seed, turns,
                                         system, admission):
    fields = dict(replicas=replicas, router=router, policy=policy, kv_capacity=kv, rate=rate,
                  num_requests=60, prompt_len="8:500", output_len="1:150", seed=seed,
                  cost_model="linear", prefix_caching=True)
    if turns > 1:
        fields.update(session_turns=turns, think_time=0.5)
    if system:
        fields.update(system_prompt_len=system, system_prompt_share=0.7)
    if admission:
        fields.update(admission_rate=rate / 2, admission_burst=3)
    cfg = build_config(fields, refuse_unused=False)
    workload = build_workload(cfg)
    result = simulate(cfg, workload)             # no stall: it returns
    req, tl, s = result.requests, result.timeline, result.summary
    # Every request once, completed or rejected, on one replica (or refused at the front).
    assert sorted(req.request_id) == list(range(len(workload)))
    assert set(req.status) <= {"completed", "rejected"}
    assert req.replica.between(-1 if admission else 0, replicas - 1).all()
    per = s["cluster"]["per_replica"]
    assert s["completed"] + s["rejected"] == len(workload)
    for key in ("hits", "queries", "evictions"):
        assert s[f"prefix_cache_{key}"] == sum(r[f"prefix_cache_{key}"] for r in per)
    done = req[req.status == "completed"]
    for i, r in enumerate(per):
        mine_tl = tl[tl.replica == i]
        # KV within capacity (shared blocks once), cached blocks within it too.
        assert (mine_tl.kv_used_tokens <= r["kv_capacity_tokens"]).all()
        assert (mine_tl.cached_blocks * cfg.block_size <= r["kv_capacity_tokens"]).all()
        # Tokens conserved: a completed request computed prompt + output - 1 tokens, less its
        # hit (more when preempted work was recomputed).
        mine = done[done.replica == i]
        need = int((mine.prompt_tokens + mine.output_tokens - 1 - mine.cached_prompt_tokens)
                   .sum())
        computed = int(mine_tl.prefill_tokens.sum() + mine_tl.decode_requests.sum())
        if r["preemptions"] == 0:
            assert computed == need, (i, computed, need)
        assert r["prefix_cache_hits"] <= r["prefix_cache_queries"]
    if turns > 1:
        table = workload.frame.set_index("request_id")
        _assert_closed_loop(req.set_index("request_id"), table)


@pytest.mark.parametrize("router", ["session-affinity", "prefix-affinity", "random"])
def test_same_seed_same_tables_with_caching(router):
    def run(seed):
        return simulate(RunConfig(replicas=3, router=router, num_requests=200, seed=seed,
                                  kv_capacity=8_000, system_prompt_len=200,
                                  system_prompt_share=0.5, **SESSIONS).validate())
    a, b = run(7), run(7)
    assert a.requests.equals(b.requests) and a.timeline.equals(b.timeline)
    assert {k: v for k, v in a.summary.items() if "wall" not in k} == \
        {k: v for k, v in b.summary.items() if "wall" not in k}
    assert not a.requests.equals(run(8).requests)
    assert np.isfinite(a.summary["prefix_cache_hit_rate"])
