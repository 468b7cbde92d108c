"""A cluster of replicas behind a router (simulator/cluster.py, scheduler/routers.py).

Closed forms first: random routing splits Poisson arrivals into N independent Poisson streams,
so with batch size 1 and a constant iteration time D every replica is an M/D/1 queue of rate
lambda / N (the method of tests/test_queueing.py: batch means pooled over seeds, a tolerance in
standard errors); round-robin of deterministic arrivals gives replica i exactly the requests
i, i + N, i + 2N, ... Where no closed form exists, dominance: load-aware routers beat random
routing at high load on the same arrivals. Then invariants over random clusters and routers,
and determinism.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from scheduler import routers
from scheduler.routers import Router, make_router, register_router, router_names
from simulator.config import RunConfig, build_config
from simulator.errors import ConfigError, PolicyViolation
from simulator.runner import simulate

D = 0.1                  # seconds per iteration
N = 4                    # replicas


def md1_cluster(rho: float, router: str, seed: int, requests: int, **extra) -> RunConfig:
    """N replicas, each running one request (prompt 1, output 1: one iteration of D) at a time,
    fed Poisson arrivals at N rho / D: each replica at utilisation rho under even routing."""
    return RunConfig(policy="vllm-v1", policy_params={"max_num_seqs": 1}, cost_model="linear",
                     cost_params={"c0": D}, rate=N * rho / D, num_requests=requests,
                     prompt_len="1", output_len="1", seed=seed, replicas=N, router=router,
                     **extra).validate()


# ---------------------------------------------------------------------------------------------
# Closed forms

REQUESTS = 40_000        # per seed, over all replicas
SEEDS = (0, 1, 2)
WARMUP = 250             # requests dropped from the start of each replica (empty-system bias)
BATCHES = 5              # batch means per replica per seed (about 1,950 requests each)
Z = 4.0                  # tolerance in standard errors (two-sided p ~ 6e-5)


def test_random_routing_of_poisson_arrivals_is_n_independent_md1_queues():
    rho = 0.8
    waits: dict[int, list] = {i: [] for i in range(N)}
    shares = []
    for seed in SEEDS:
        result = simulate(md1_cluster(rho, "random", seed, REQUESTS))
        req, tl = result.requests, result.timeline
        assert (tl.prefill_requests + tl.decode_requests == 1).all()
        assert np.allclose(tl.duration_s, D, rtol=0, atol=1e-15)
        for i in range(N):
            mine = req[req.replica == i].sort_values("arrival_s")
            q = mine.queue_ms.to_numpy() / 1e3
            waits[i].append(np.array([b.mean() for b in np.array_split(q[WARMUP:], BATCHES)]))
            shares.append(len(mine) / REQUESTS)
    # Thinning: each replica gets a binomial share 1/N of the arrivals.
    assert np.allclose(shares, 1 / N, atol=Z * math.sqrt((1 / N) * (1 - 1 / N) / REQUESTS))

    expected = rho * D / (2 * (1 - rho))         # Pollaczek-Khinchine, per replica
    pooled = np.concatenate([np.concatenate(w) for w in waits.values()])
    mean, se = pooled.mean(), pooled.std(ddof=1) / math.sqrt(len(pooled))
    assert se < 0.05 * expected
    assert abs(mean - expected) < Z * se, (mean, expected, se)
    assert abs(mean - rho * D / (1 - rho)) > 3 * Z * se     # tells M/D/1 from M/M/1
    for i, w in waits.items():                   # and every replica on its own
        w = np.concatenate(w)
        se_i = w.std(ddof=1) / math.sqrt(len(w))
        assert abs(w.mean() - expected) < Z * se_i, (i, w.mean(), expected, se_i)


def test_round_robin_of_deterministic_arrivals_gives_each_replica_every_nth_request():
    n, requests = 3, 60
    cfg = RunConfig(arrival="deterministic", rate=5.0, num_requests=requests, replicas=n,
                    router="round-robin", prompt_len="64:512", output_len="4:64",
                    seed=4).validate()
    result = simulate(cfg)
    req = result.requests.sort_values("arrival_s")
    assert (req.replica.to_numpy() == np.arange(requests) % n).all()
    for i in range(n):
        ids = req[req.replica == i].request_id.to_numpy()
        assert (np.diff(ids) == n).all() and ids[0] == i
    cluster = result.summary["cluster"]
    assert [r["requests"] for r in cluster["per_replica"]] == [requests // n] * n
    assert cluster["requests_per_replica_cv"] == 0.0


# ---------------------------------------------------------------------------------------------
# Dominance: at high load, routers that look at the load beat a random choice


@pytest.mark.parametrize("seed", [0, 1])
def test_load_aware_routers_beat_random_at_high_load_md1(seed):
    means = {r: simulate(md1_cluster(0.9, r, seed, 8_000)).record.latency["mean_e2el_ms"]
             for r in ("random", "power-of-d", "least-outstanding", "jsq-tokens")}
    for router in ("power-of-d", "least-outstanding", "jsq-tokens"):
        assert means[router] < means["random"], means
    # Power of two choices already takes most of the gain (Mitzenmacher): below half of random.
    assert means["power-of-d"] < 0.5 * means["random"], means


@pytest.mark.parametrize("seed", [0, 1])
def test_load_aware_routers_beat_random_with_continuous_batching(seed):
    def mean_e2el(router):
        cfg = RunConfig(num_requests=1_500, rate=14.0, replicas=N, router=router,
                        prompt_len="64:1024", output_len="16:256", kv_capacity=12_000,
                        seed=seed).validate()
        return simulate(cfg).record.latency["mean_e2el_ms"]
    means = {r: mean_e2el(r) for r in ("random", "power-of-d", "least-outstanding", "least-kv")}
    for router in ("power-of-d", "least-outstanding", "least-kv"):
        assert means[router] < means["random"], means


# ---------------------------------------------------------------------------------------------
# Invariants over random clusters and routers


POLICIES = ["vllm-v1", "sarathi", "orca", "sjf", "wait"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replicas=hs.integers(2, 5), router=hs.sampled_from(router_names()),
       policy=hs.sampled_from(POLICIES), preemption=hs.sampled_from(["recompute", "restart"]),
       kv=hs.integers(600, 4_000), rate=hs.floats(2, 200), seed=hs.integers(0, 10_000),
       other=hs.none() | hs.tuples(hs.integers(300, 4_000), hs.sampled_from(POLICIES)))
def test_cluster_invariants(replicas, router, policy, preemption, kv, rate, seed, other):
    fields = dict(router=router, policy=policy, preemption=preemption, kv_capacity=kv,
                  rate=rate, num_requests=80, prompt_len="8:700", output_len="1:200", seed=seed,
                  cost_model="linear")
    if other is None:
        fields["replicas"] = replicas
    else:   # a second group with another KV capacity (small ones reject) and policy
        fields["groups"] = [{"count": replicas - 1},
                            {"count": 1, "kv_capacity": other[0], "policy": other[1]}]
    cfg = build_config(fields, refuse_unused=False)
    result = simulate(cfg)                       # no stall: it returns
    req, tl, summary = result.requests, result.timeline, result.summary
    # Conservation of requests: each exactly once, on one replica, completed or rejected.
    assert sorted(req.request_id) == list(range(80))
    assert req.replica.between(0, replicas - 1).all()
    assert set(req.status) <= {"completed", "rejected"}
    per = summary["cluster"]["per_replica"]
    assert len(per) == replicas
    assert sum(r["requests"] for r in per) == 80
    assert sum(r["completed"] for r in per) == summary["completed"]
    assert sum(r["rejected"] for r in per) == summary["rejected"]
    assert summary["completed"] + summary["rejected"] == 80
    # KV within each replica's capacity, at every iteration.
    for i, r in enumerate(per):
        want = kv if other is None or i < replicas - 1 else other[0]
        assert r["kv_capacity_tokens"] == (want // cfg.block_size) * cfg.block_size
        assert (tl[tl.replica == i].kv_used_tokens <= r["kv_capacity_tokens"]).all()
        assert r["peak_kv_tokens"] <= r["kv_capacity_tokens"]
    # Conservation of tokens, per replica: every completed request computed its prompt and
    # output - 1 tokens on its own replica (more when preempted work was recomputed).
    done = req[req.status == "completed"]
    for i in range(replicas):
        mine_done = done[done.replica == i]
        mine_tl = tl[tl.replica == i]
        need = int((mine_done.prompt_tokens + mine_done.output_tokens - 1).sum())
        computed = int(mine_tl.prefill_tokens.sum() + mine_tl.decode_requests.sum())
        if per[i]["preemptions"] == 0:
            assert computed == need, (i, computed, need)
        else:
            assert computed > need
    # Latencies in causal order.
    assert (done.first_token_s >= done.arrival_s).all()
    assert (done.completion_s >= done.first_token_s).all()


# ---------------------------------------------------------------------------------------------
# Determinism, and the front door


@pytest.mark.parametrize("router", ["random", "power-of-d", "jsq-tokens"])
def test_same_seed_same_tables(router):
    def run(seed):
        return simulate(RunConfig(replicas=3, router=router, num_requests=300, rate=12.0,
                                  kv_capacity=20_000, seed=seed).validate())
    a, b = run(7), run(7)
    assert a.requests.equals(b.requests) and a.timeline.equals(b.timeline)
    assert {k: v for k, v in a.summary.items() if "wall" not in k} == \
        {k: v for k, v in b.summary.items() if "wall" not in k}
    if router == "random":
        assert not a.requests.replica.equals(run(8).requests.replica)


@pytest.mark.parametrize("fields", [
    dict(num_requests=300, rate=30.0, prompt_len="32:512", output_len="8:256", kv_capacity=6144,
         seed=3),
    dict(num_requests=200, arrival="deterministic", rate=20.0, kv_capacity=8000,
         policy="sarathi", preemption="restart")])
def test_a_one_replica_cluster_is_the_single_replica_run(fields):
    # Composing Engines on a shared clock changes nothing of a replica: one replica behind a
    # router gives the single run's tables exactly (preemptions included).
    from scheduler.base import make_policy
    from simulator.cluster import native_cluster
    from simulator.metrics import requests_table, timeline_table
    from simulator.runner import build_replica, build_workload
    cfg = RunConfig(**fields).validate()
    single = simulate(cfg)
    workload = build_workload(cfg)
    raw = native_cluster(workload.requests(), make_router("round-robin"),
                         [make_policy(cfg.policy, cfg.policy_params)],
                         [build_replica(cfg, workload)], preemptions=[cfg.preemption]).run()
    assert single.record.preemptions > 0
    assert requests_table(raw.states).equals(single.requests)
    assert timeline_table(raw.replicas[0].timeline).equals(single.timeline)


def test_one_replica_keeps_the_single_replica_schema():
    result = simulate(RunConfig(num_requests=20).validate())
    assert "replica" not in result.requests.columns and "cluster" not in result.summary


def test_router_and_parameters_are_checked_by_name():
    with pytest.raises(ConfigError, match="unknown router 'nope'"):
        build_config(overrides={"replicas": 2, "router": "nope"})
    with pytest.raises(ConfigError, match="router power-of-d: parameter d must be >= 1"):
        build_config(overrides={"replicas": 2, "router": "power-of-d",
                                "router_params": {"d": "0"}})
    with pytest.raises(ConfigError, match=r"router \(--router\) does nothing with one replica"):
        build_config(overrides={"router": "random"})
    with pytest.raises(ConfigError, match="router power-of-d: parameter d=3 exceeds the 2 "):
        build_config(overrides={"replicas": 2, "router": "power-of-d",
                                "router_params": {"d": "3"}})
    assert make_router("power-of-d", {"d": "3"}).params.d == 3


def test_a_router_naming_no_replica_is_a_violation(monkeypatch):
    monkeypatch.setattr(routers, "_ROUTERS", dict(routers._ROUTERS))   # registered here only

    @register_router
    class Outside(Router):
        name = "test-outside"

        def route(self, req, replicas):
            return len(replicas)

    with pytest.raises(PolicyViolation, match="router test-outside .* returned 2 for request 0"):
        simulate(RunConfig(replicas=2, router="test-outside", num_requests=5).validate())


# ---------------------------------------------------------------------------------------------
# Capacity: the smallest replica count


def test_replica_search_finds_the_smallest_stable_count_of_deterministic_queues():
    # Deterministic arrivals at 25 req/s dealt round-robin to N replicas that each serve one
    # request per D = 0.1 s: replica i sees one arrival every N / 25 s, so it keeps up iff
    # N / 25 >= D, i.e. N >= 2.5. With 3, no request waits (E2E exactly D); with 2, the queue
    # grows without bound.
    from simulator.sweep.capacity import replica_search
    cfg = RunConfig(policy="vllm-v1", policy_params={"max_num_seqs": 1}, cost_model="linear",
                    cost_params={"c0": D}, arrival="deterministic", rate=25.0, num_requests=600,
                    prompt_len="1", output_len="1", replicas=8, router="round-robin",
                    slo={"e2el_ms": 1.5 * D * 1e3}).validate()
    for criterion in ("slo", "stable"):
        r = replica_search(cfg, criterion=criterion, seeds=1, max_replicas=8, workers=1)
        assert r.replicas == 3 and r.low.replicas == 2
        assert [p.replicas for p in r.probes] == [1, 2, 4, 3]
        assert r.high.runs[0]["mean_e2el_ms"] == pytest.approx(D * 1e3)
        assert not r.low.stable
    r = replica_search(cfg, criterion="stable", seeds=1, max_replicas=2, workers=1)
    assert r.replicas is None and r.low.replicas == 2


def test_capacity_command_searches_replicas(capsys):
    from simulator.cli import main
    args = ["capacity", "--search", "replicas", "--router", "round-robin", "--policy", "vllm-v1",
            "-p", "max_num_seqs=1", "--cost-model", "linear", "--cost-param", f"c0={D}",
            "--arrival", "deterministic", "--rate", "25", "-n", "400", "--prompt-len", "1",
            "--output-len", "1", "--criterion", "stable", "--seeds", "1", "--workers", "1",
            "--max-replicas", "8", "-q"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == \
        "replicas for stable latency: 3 (passes at 3, fails at 2)"
    assert main(args + ["--rate-max", "30"]) == 2
    assert "--rate-min/--rate-max bound a rate search" in capsys.readouterr().err


def test_replicas_and_router_are_sweep_axes(tmp_path, capsys):
    import pandas as pd

    from simulator.cli import main
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: cl\nbase: {num_requests: 60, rate: 8}\n"
                    "axes:\n  replicas: [2, 3]\n  router: [round-robin, power-of-d]\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "-j", "1"]) == 0
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(zip(table.replicas, table.router)) == [
        (2, "round-robin"), (2, "power-of-d"), (3, "round-robin"), (3, "power-of-d")]
    assert (table["cluster.replicas"] == table.replicas).all()
    # 60 requests dealt in turn: exactly even over 2 and 3 replicas.
    assert (table[table.router == "round-robin"]["cluster.requests_per_replica_cv"] == 0).all()


# ---------------------------------------------------------------------------------------------
# Admission control at the front


def test_token_bucket_admits_at_most_burst_plus_rate_times_any_window():
    rate, burst = 4.0, 3
    cfg = RunConfig(arrival="deterministic", rate=10.0, num_requests=300, replicas=2,
                    router="round-robin", admission_rate=rate, admission_burst=burst,
                    prompt_len="16", output_len="4").validate()
    result = simulate(cfg)
    req = result.requests
    refused = req[req.replica == -1]
    assert (refused.status == "rejected").all()
    assert (refused.reject_reason == "admission_token_bucket").all()
    assert refused.reject_detail.str.contains(r"tokens left \(rate 4/s, burst 3\)").all()
    t = req[req.replica >= 0].arrival_s.to_numpy()
    # The bucket's defining bound, over every window between two admitted arrivals ...
    count = np.arange(len(t))[None, :] - np.arange(len(t))[:, None] + 1
    window = t[None, :] - t[:, None]
    upper = np.triu(np.ones_like(window, dtype=bool))
    assert (count[upper] <= burst + rate * window[upper] + 1e-9).all()
    # ... and arrivals faster than the bucket fill it to exactly that over the whole run.
    span = req.arrival_s.max() - req.arrival_s.min()
    assert abs(len(t) - (burst + rate * span)) <= 1
    assert result.summary["cluster"]["admission"]["refused"] == len(refused)
    assert result.summary["rejected"] == len(refused)
    assert sum(r["requests"] for r in result.summary["cluster"]["per_replica"]) == len(t)


def test_max_queue_bounds_the_waiting_requests():
    cfg = RunConfig(policy="vllm-v1", policy_params={"max_num_seqs": 1}, cost_model="linear",
                    cost_params={"c0": D}, rate=20.0, num_requests=400, prompt_len="1",
                    output_len="1", max_queue=3, seed=2).validate()   # one replica, rho = 2
    result = simulate(cfg)
    req, tl = result.requests, result.timeline
    # The timeline counts the waiting after the iteration took its request from the queue.
    assert tl.waiting.max() == 3 - 1
    refused = req[req.reject_reason == "admission_queue_full"]
    assert len(refused) > 0 and (refused.replica == -1).all()
    # Served at most one per D with at most 3 ahead: no admitted request waits 4 D or more.
    done = req[req.status == "completed"]
    assert done.queue_ms.max() < 4 * D * 1e3
    assert len(done) + len(refused) == 400
    with pytest.raises(ConfigError, match="admission_burst .* sizes the token bucket"):
        build_config(overrides={"admission_burst": 4})


# ---------------------------------------------------------------------------------------------
# Replica groups that differ


def test_groups_differ_in_cost_model_kv_and_policy():
    # Deterministic arrivals every 0.5 s dealt in turn to a replica of iteration time 0.1 s and
    # one of 0.3 s, one request at a time: nothing queues, so every request takes exactly its
    # replica's iteration time.
    groups = [{"count": 1, "cost_model": "linear", "cost_params": {"c0": 0.1},
               "policy": "vllm-v1", "policy_params": {"max_num_seqs": 1}},
              {"count": 1, "cost_model": "linear", "cost_params": {"c0": 0.3},
               "policy": "orca", "policy_params": {"max_num_seqs": 1}, "kv_capacity": 4096}]
    cfg = build_config({"groups": groups, "router": "round-robin", "arrival": "deterministic",
                        "rate": 4.0, "num_requests": 40, "prompt_len": "1", "output_len": "1"})
    assert cfg.replicas == 2
    result = simulate(cfg)
    req = result.requests
    for replica, d in ((0, 0.1), (1, 0.3)):
        assert np.allclose(req[req.replica == replica].e2el_ms, d * 1e3, rtol=1e-9)
    per = result.summary["cluster"]["per_replica"]
    assert [r["policy"] for r in per] == ["vllm-v1", "orca"]
    assert per[1]["kv_capacity_tokens"] == 4096 and per[0]["kv_capacity_tokens"] != 4096


def test_groups_are_checked_field_by_field():
    with pytest.raises(ConfigError, match=r"groups\[0\]: 'rate' is not a replica field"):
        build_config({"groups": [{"count": 1, "rate": 3}]})
    with pytest.raises(ConfigError, match=r"groups\[0\]: 'frontend_delay' is not a replica"):
        build_config({"groups": [{"count": 2, "frontend_delay": 0.01}]})
    with pytest.raises(ConfigError, match="frontend_delay applies to one replica"):
        build_config({"replicas": 2, "frontend_delay": 0.01})
    with pytest.raises(ConfigError, match=r"groups\[1\].count must be an integer"):
        build_config({"groups": [{"count": 1}, {"gpu": "h100-80gb"}]})
    with pytest.raises(ConfigError, match="replicas 3 differs from the groups' total count 2"):
        build_config({"groups": [{"count": 2}], "replicas": 3})
    with pytest.raises(ConfigError, match=r"groups\[0\]: .*chunk_size"):
        build_config({"groups": [{"count": 2, "policy": "orca",
                                  "policy_params": {"chunk_size": 8}}]})


def test_report_draws_per_replica_load(tmp_path):
    from simulator.report.build import run_figures
    result = simulate(RunConfig(replicas=3, router="random", num_requests=120, rate=9.0,
                                seed=1).validate())
    paths = run_figures(result.requests, result.timeline, result.summary, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["latency_cdf.png", "replicas.png"]
    assert (tmp_path / "replicas.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# The routing rules on hand-made loads


class _Load:
    def __init__(self, index, outstanding=0, waiting=0, free=100, pending=0):
        from scheduler.state import ReplicaSpec
        self.index, self.outstanding, self.num_waiting = index, outstanding, waiting
        self.num_resident = outstanding - waiting
        self.free_blocks, self.pending_tokens = free, pending
        self.spec = ReplicaSpec(num_blocks=100, block_size=16, max_model_len=4096)


def _route(name, loads, params=None, times=1, seed=0):
    from traces.request import Request
    router = make_router(name, params)
    router.bind(len(loads), seed)
    return [router.route(Request(k, 0.0, 8, 8), loads) for k in range(times)]


def test_routing_rules_on_hand_made_loads():
    loads = [_Load(0, outstanding=3, waiting=1, free=10, pending=900),
             _Load(1, outstanding=1, waiting=1, free=20, pending=5000),
             _Load(2, outstanding=2, waiting=0, free=90, pending=50),
             _Load(3, outstanding=1, waiting=0, free=40, pending=700)]
    assert _route("round-robin", loads, times=6) == [0, 1, 2, 3, 0, 1]
    # Fewest outstanding: replicas 1 and 3 tie; the tie goes to the first at or after a
    # start that moves on by one each arrival (0 -> 1, 1 -> 1, 2 -> 3, 3 -> 3, 0 -> 1).
    assert _route("least-outstanding", loads, times=5) == [1, 1, 3, 3, 1]
    assert _route("least-kv", loads, times=3) == [2, 2, 2]          # 10% of its KV in use
    assert _route("jsq-tokens", loads, times=3) == [2, 2, 2]        # 50 tokens pending
    # d = N compares every replica: the global least outstanding (first sampled of a tie).
    assert set(_route("power-of-d", loads, {"d": 4}, times=50)) == {1, 3}
    # d = 1 is random routing; d = 2 never picks the most loaded replica.
    assert set(_route("power-of-d", loads, {"d": 1}, times=200)) == {0, 1, 2, 3}
    assert 0 not in _route("power-of-d", loads, {"d": 2}, times=200)
    assert _route("random", loads, times=20, seed=5) == _route("random", loads, times=20, seed=5)
    assert sorted(set(_route("random", loads, times=200))) == [0, 1, 2, 3]
