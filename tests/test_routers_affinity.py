"""The affinity routers (scheduler/routers.py): session-affinity and prefix-affinity.

The rules on hand-made loads first (which replica each picks, ties and fallbacks); the view's
cache read against a pool built by hand, and that reading it changes nothing; then dominance on
real and synthetic workloads: prefix affinity has a higher hit rate than round-robin on the
Mooncake conversation trace, session affinity keeps every turn of a session on one replica and
has a higher hit rate than round-robin on synthetic sessions, same seeds.
"""

from __future__ import annotations

import collections
import copy

import pytest

from conftest import require_shared
from scheduler.base import make_policy
from scheduler.routers import make_router
from scheduler.state import ReplicaSpec
from simulator.cli import main
from simulator.cluster import EngineLoad
from simulator.config import RunConfig, build_config
from simulator.cost.linear import LinearCost
from simulator.engine import Engine
from simulator.errors import ConfigError
from simulator.prefix_cache import RequestBlocks
from simulator.runner import build_workload, simulate
from traces.request import SYSTEM_PROMPT, Request, TokenRuns

MOONCAKE = ("traces", "conversation_trace.jsonl")


class _Load:
    """A replica as a router reads it, with a fixed cache hit per request id."""

    def __init__(self, index, outstanding=0, pending=0, hits=None):
        self.index, self.outstanding, self.pending_tokens = index, outstanding, pending
        self.num_waiting = self.num_resident = 0
        self.free_blocks = 100
        self.spec = ReplicaSpec(num_blocks=100, block_size=16, max_model_len=4096)
        self.hits = hits or {}
        self.reads = 0

    def cached_prefix_tokens(self, req):
        self.reads += 1
        return self.hits.get(req.request_id, 0)


def _router(name, n, params=None, seed=0):
    router = make_router(name, params)
    router.bind(n, seed)
    return router


def _req(rid, session=None):
    return Request(rid, 0.0, 64, 8, session=session)


def test_prefix_affinity_takes_the_longest_hit_then_the_least_load():
    loads = [_Load(0, outstanding=5, pending=10, hits={1: 512, 2: 256, 3: 256}),
             _Load(1, outstanding=1, pending=900, hits={2: 256, 3: 256}),
             _Load(2, outstanding=2, pending=20, hits={1: 128, 3: 256}),
             _Load(3, outstanding=0, pending=5000)]
    router = _router("prefix-affinity", 4)
    assert router.route(_req(1), loads) == 0          # the longest hit, however loaded
    assert router.route(_req(2), loads) == 1          # equal hits: fewer outstanding
    assert router.route(_req(3), loads) == 1
    assert router.route(_req(9), loads) == 3          # no hit anywhere: the least outstanding
    tokens = _router("prefix-affinity", 4, {"load": "pending-tokens"})
    assert tokens.route(_req(3), loads) == 0          # equal hits: fewer pending tokens
    assert tokens.route(_req(9), loads) == 0          # no hit: fewest pending tokens
    # Beyond max_imbalance outstanding over the least loaded, a hit counts for nothing.
    capped = _router("prefix-affinity", 4, {"max_imbalance": 2})
    assert capped.route(_req(1), loads) == 2          # replica 0 is 5 over: next hit, 128
    assert capped.route(_req(9), loads) == 3
    assert all(load.reads > 0 for load in loads)
    # An idle cluster with no hits spreads its arrivals (the rotating tie-break).
    idle = [_Load(i) for i in range(3)]
    rotating = _router("prefix-affinity", 3)
    assert [rotating.route(_req(k), idle) for k in range(6)] == [0, 1, 2, 0, 1, 2]


def test_session_affinity_pins_a_session_to_its_first_turns_replica():
    loads = [_Load(0, outstanding=3), _Load(1, outstanding=1), _Load(2, outstanding=2)]
    router = _router("session-affinity", 3)
    assert router.route(_req(0, session=7), loads) == 1     # first turn: least outstanding
    loads[1].outstanding = 9
    assert router.route(_req(1, session=7), loads) == 1     # later turns follow it
    assert router.route(_req(2, session=8), loads) == 2     # a new session by load
    assert router.route(_req(3), loads) == 2                # no session: by load
    rr = _router("session-affinity", 3, {"first": "round-robin"})
    assert [rr.route(_req(k, session=k // 2), loads) for k in range(6)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="router session-affinity: parameter first must be "
                                          "one of"):
        build_config(overrides={"replicas": 2, "router": "session-affinity",
                                "router_params": {"first": "session-affinity"}})


def test_bad_router_parameters_are_one_line_and_exit_2(capsys):
    assert main(["run", "--replicas", "2", "--router", "prefix-affinity", "-R", "load=kv",
                 "-n", "10", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "router prefix-affinity: parameter load" in err[0]
    assert main(["run", "--replicas", "2", "--router", "prefix-affinity", "-R",
                 "max_imbalance=-1", "-n", "10", "-q"]) == 2
    assert "max_imbalance must be >= 0" in capsys.readouterr().err


def test_the_views_cache_read_is_the_admission_hit_and_changes_nothing():
    """A pool of 40 blocks of 16 tokens: a request of a 200-token shared prefix ran and
    finished (its 12 full prompt blocks cached and evictable, and its answer's); a second
    request with the same prefix hits those 12 blocks (192 tokens), one whose prompt is the first
    192 tokens of the prefix hits 11 (all its tokens but one, in whole blocks); another prefix
    hits nothing.
    Reading changes neither the pool's queue, its holders, nor its counters."""
    spec = ReplicaSpec(num_blocks=40, block_size=16, max_model_len=4096)
    engine = Engine((), make_policy("vllm-v1"), LinearCost(c0=0.01), spec, prefix_caching=True)
    pool = engine.pool
    shared = TokenRuns(((SYSTEM_PROMPT, 0, 200),))
    first = RequestBlocks(shared, 0, 250, 16)
    pool.allocate(16)
    pool.register(first, 0, 15)              # 250 prompt + 5 output = 15 full blocks
    pool.release(first, 15, 1)

    def as_values(x):
        """The pool's state as plain values (its segments' slots read out), to compare."""
        if hasattr(x, "__slots__") and not isinstance(x, type):
            return tuple((k, as_values(getattr(x, k))) for k in x.__slots__ if hasattr(x, k))
        if isinstance(x, dict):
            return {k: as_values(v) for k, v in x.items()}
        if isinstance(x, (set, frozenset)):
            return set(x)
        if isinstance(x, (list, tuple, collections.deque)):
            return [as_values(v) for v in x]
        return copy.copy(x)

    def state():
        return as_values(pool)

    before = state()
    load = EngineLoad(0, engine)
    assert load.cached_prefix_tokens(Request(1, 0.0, 300, 4, prefix=shared)) == 192
    head = TokenRuns(((SYSTEM_PROMPT, 0, 192),))          # the prefix's first 12 blocks
    assert load.cached_prefix_tokens(Request(2, 0.0, 192, 4, prefix=head)) == 176
    other = TokenRuns(((SYSTEM_PROMPT, 1, 200),))
    assert load.cached_prefix_tokens(Request(3, 0.0, 300, 4, prefix=other)) == 0
    assert load.cached_prefix_tokens(Request(4, 0.0, 300, 4)) == 0
    assert load.cached_prefix_tokens(Request(5, 0.0, 1, 4, prefix=None)) == 0
    assert state() == before
    # Without the cache the view reads 0.
    plain = Engine((), make_policy("vllm-v1"), LinearCost(c0=0.01), spec)
    assert EngineLoad(0, plain).cached_prefix_tokens(Request(1, 0.0, 300, 4, prefix=shared)) \
        == 0


# ---------------------------------------------------------------------------------------------
# Dominance on workloads


@pytest.mark.parametrize("kv_capacity", [None, 10**9])
def test_prefix_affinity_beats_round_robin_hit_rate_on_mooncake(kv_capacity):
    """The first 1,000 requests of the Mooncake conversation trace at its own times, 4 replicas
    of llama-3.1-8b on H100: routing each request to the replica holding its longest prefix
    finds more of it cached than dealing them in turn. With the GPU's KV most blocks are evicted
    before they are asked for again, so the gain is small; with room for every block, prefix
    affinity reaches nearly the hit rate of one cache holding every earlier prompt (the closed
    form from the trace's hash_ids, tests/test_prefix_cache.py), never more."""
    path = require_shared(*MOONCAKE)

    def run(router):
        cfg = RunConfig(trace=str(path), num_requests=1_000, model="llama-3.1-8b",
                        gpu="h100-80gb", replicas=4, router=router, kv_capacity=kv_capacity,
                        timeline=False, seed=0).validate()
        s = simulate(cfg).summary
        assert s["completed"] == 1_000
        return cfg, s

    _, rr = run("round-robin")
    cfg, pa = run("prefix-affinity")
    assert pa["prefix_cache_hit_rate"] > 1.2 * rr["prefix_cache_hit_rate"], (pa, rr)
    if kv_capacity is not None:
        from test_prefix_cache import _mooncake_closed_form
        assert pa["prefix_cache_evictions"] == 0
        _, bound = _mooncake_closed_form(build_workload(cfg).frame, cfg.block_size)
        assert 0.95 * bound < pa["prefix_cache_hit_rate"] <= bound + 1e-12, (pa, bound)
        assert pa["prefix_cache_hit_rate"] > 2 * rr["prefix_cache_hit_rate"]


@pytest.mark.parametrize("seed", [0, 1])
def test_session_affinity_keeps_sessions_on_one_replica_and_beats_round_robin(seed):
    def run(router):
        cfg = RunConfig(num_requests=600, session_turns=4, think_time=2.0, rate=4.0,
                        prompt_len="64:512", output_len="16:256", replicas=4, router=router,
                        kv_capacity=60_000, timeline=False, seed=seed).validate()
        workload = build_workload(cfg)
        result = simulate(cfg, workload)
        sessions = workload.frame.set_index("request_id")["session_id"]
        replicas = result.requests.set_index("request_id")["replica"]
        return result.summary, replicas.groupby(sessions).nunique()

    rr, rr_spread = run("round-robin")
    sa, sa_spread = run("session-affinity")
    assert (sa_spread == 1).all() and len(sa_spread) == 150
    assert (rr_spread > 1).mean() > 0.9           # turns dealt in turn with the others
    assert sa["prefix_cache_hit_rate"] > 2 * rr["prefix_cache_hit_rate"], \
        (sa["prefix_cache_hit_rate"], rr["prefix_cache_hit_rate"])
    assert sa["completed"] == rr["completed"] == 600
