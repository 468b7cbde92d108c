"""The chain layout (simulator/prefix_cache.py, ``ChainLayout``): segments that always come
together are joined, and the blocks two chains share are still exactly those whose tokens,
and all tokens before them, are the same; a request's last segment is private exactly when no
other request has any of its blocks. Joining segments and deferring a private segment's
registrations change no result."""

from __future__ import annotations

import gc
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.base import make_policy
from scheduler.state import ReplicaSpec
from simulator.engine import Engine
from simulator.policycheck import CHECK_COST
from simulator.prefix_cache import ChainLayout, RequestBlocks, _cut_chains, laid_out, segments
from tests.test_fast_engine import POLICIES, assert_same_result, kv_room
from tests.test_prefix_reference import random_workload, tokens
from traces.request import ANSWER_OF, Request, TokenRuns

MOONCAKE = 7       # a namespace for hash_ids-like runs in the hand-made example


def _shared_blocks(a: list, b: list, block_size: int) -> int:
    """How many leading blocks two token lists share (every token up to each block's end)."""
    n = 0
    while (len(a) >= (n + 1) * block_size and len(b) >= (n + 1) * block_size
           and a[:(n + 1) * block_size] == b[:(n + 1) * block_size]):
        n += 1
    return n


def _names(blocks: RequestBlocks, n: int) -> list:
    return blocks.block_ids(n)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), block_size=st.sampled_from([1, 2, 3, 5, 8, 16]),
       n=st.integers(2, 30))
def test_joined_chains_share_exactly_the_blocks_their_tokens_share(seed, block_size, n):
    """The closed form: two requests share block j exactly when their first (j + 1) x block
    size tokens are equal (prompt, then output), by the tokens themselves."""
    reqs = random_workload(random.Random(seed), n)
    layout = ChainLayout(reqs, (block_size,))
    toks = {r.request_id: tokens(r) for r in reqs}
    chains = {r.request_id: layout.blocks(r, block_size) for r in reqs}
    raw_segments = joined_segments = 0
    for r in reqs:
        full = len(toks[r.request_id]) // block_size
        names = _names(chains[r.request_id], full)
        assert len(names) == full
        for q in reqs:
            if q.request_id == r.request_id:
                continue
            want = _shared_blocks(toks[r.request_id], toks[q.request_id], block_size)
            other = _names(chains[q.request_id], len(toks[q.request_id]) // block_size)
            got = 0
            while got < min(len(names), len(other)) and names[got] == other[got]:
                got += 1
            assert got == want, (r, q)
        # Private: no other request has any block of its last segment.
        tail = chains[r.request_id].starts[-1]
        others = {name for q in reqs if q.request_id != r.request_id
                  for name in _names(chains[q.request_id],
                                     len(toks[q.request_id]) // block_size)}
        assert chains[r.request_id].private == (not set(names[tail:]) & others)
        raw = RequestBlocks(r.prefix, r.request_id, r.prompt_tokens, block_size)
        raw.upto(full + 1)
        raw_segments += len(raw.sids)
        joined_segments += len(chains[r.request_id].sids)
    assert joined_segments <= raw_segments


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), block_size=st.sampled_from([1, 2, 3, 5, 8, 16]),
       n=st.integers(1, 30))
def test_the_vectorised_cut_is_segments_renamed(seed, block_size, n):
    """All chains cut at once (NumPy) give every chain ``segments()``' segments, with the same
    lengths, under names that map one to one onto ``segments()``' names."""
    reqs = random_workload(random.Random(seed), n)
    cut = _cut_chains(reqs, block_size)
    assert cut is not None
    sid, count, lengths = (a.tolist() for a in cut)
    assert len(lengths) == len(reqs)
    forward: dict[int, int] = {}
    backward: dict[int, int] = {}
    k = 0
    for r, m in zip(reqs, lengths):
        old = segments(r.prefix, r.request_id, r.prompt_tokens, block_size)
        assert [c for _, c in old] == count[k:k + m]
        for (a, _), b in zip(old, sid[k:k + m]):
            assert forward.setdefault(a, b) == b and backward.setdefault(b, a) == a
        k += m
    assert k == len(sid)


def test_keys_beyond_64_bits_are_cut_one_by_one():
    """A key NumPy cannot hold: the layout falls back to ``segments()``, and shares as before."""
    big = 1 << 70
    a = Request(0, 0.0, 40, 5, prefix=TokenRuns(((MOONCAKE, big, 32),)))
    b = Request(1, 0.0, 40, 5, prefix=TokenRuns(((MOONCAKE, big, 32),)))
    assert _cut_chains([a, b], 16) is None
    layout = ChainLayout([a, b], (16,))
    x, y = layout.blocks(a, 16), layout.blocks(b, 16)
    assert x.block_ids(2) == y.block_ids(2) and x.block_ids(3) != y.block_ids(3)


def test_runs_that_always_come_together_are_one_segment():
    """Hash-id runs of 512 tokens, 16-token blocks: a conversation's second turn extends the
    first; another request shares only the first id. Only where chains part do segments end."""
    def req(rid, ids, own=0):
        runs = tuple((MOONCAKE, h, 512) for h in ids)
        return Request(rid, 0.0, 512 * len(ids) + own, 10, prefix=TokenRuns(runs))
    first, second, other = req(0, [1, 2]), req(1, [1, 2, 3, 4], own=40), req(2, [1, 9])
    layout = ChainLayout([first, second, other], (16,))
    a, b, c = (layout.blocks(r, 16) for r in (first, second, other))
    # Id 1 goes on with 2 or 9: a segment of its own (32 blocks). Id 2 goes on with the
    # first turn's answer or with id 3: its own too. Ids 3 and 4, the second turn's own 40
    # tokens and its answer: never apart, one segment.
    assert b.ends[:-1] == [32, 64] and len(b.sids) == 3
    assert a.ends[:-1] == [32, 64] and len(a.sids) == 3
    assert c.ends[:-1] == [32] and len(c.sids) == 2
    assert a.sids[:2] == b.sids[:2] and c.sids[0] == a.sids[0] and c.sids[1] != a.sids[1]
    assert b.private and c.private and a.private      # answers, own prompts: nobody else's
    assert [len(ChainLayout(None).blocks(r, 16).block_ids(140)) for r in (first,)] == [140]


def test_a_run_cut_short_holds_a_prefix_of_the_joined_segment():
    """Id 5 always goes on with id 6 where it is whole: one segment. A prompt that ends 300
    tokens into id 5 holds its first 18 blocks; its 19th mixes id 5's last 12 tokens with 4
    of its own, so it shares 18 blocks, not 19."""
    whole = Request(0, 0.0, 1024, 10, prefix=TokenRuns(((MOONCAKE, 5, 512), (MOONCAKE, 6, 512))))
    cut = Request(1, 0.0, 304, 10, prefix=TokenRuns(((MOONCAKE, 5, 300),)))
    layout = ChainLayout([whole, cut], (16,))
    a, b = layout.blocks(whole, 16), layout.blocks(cut, 16)
    assert len(a.sids) == 1                       # ids 5 and 6, its answer: never apart
    names_a, names_b = a.block_ids(70), b.block_ids(19)
    assert names_a[:18] == names_b[:18] and names_a[18] != names_b[18]
    # Its one segment is in the cut prompt's chain too; that one's last (its own tokens and
    # answer) is in no other.
    assert not a.private and b.private


def test_only_the_requests_it_was_cut_from():
    reqs = [Request(0, 0.0, 100, 5), Request(1, 0.0, 50, 5)]
    layout = ChainLayout(reqs, (16,))
    with pytest.raises(ValueError, match="request 7 is not one of the requests"):
        layout.blocks(Request(7, 0.0, 10, 1), 16)
    with pytest.raises(ValueError, match="not cut for block size 8"):
        layout.blocks(reqs[0], 8)


def _run(reqs, policy, kv_tokens, block_size, *, chains, stepwise, preemption):
    spec = ReplicaSpec(num_blocks=kv_tokens // block_size, block_size=block_size,
                       max_model_len=4096, cost_model=CHECK_COST)
    return Engine(reqs, make_policy(policy), CHECK_COST, spec, prefix_caching=True,
                  stepwise=stepwise, preemption=preemption, chains=chains).run()


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), block_size=st.sampled_from([1, 3, 16]),
       scale=st.sampled_from([1.2, 2.0, 100.0]), n=st.integers(2, 40),
       preemption=st.sampled_from(["recompute", "restart"]), stepwise=st.booleans())
def test_joined_segments_and_deferred_registrations_change_nothing(
        policy, seed, block_size, scale, n, preemption, stepwise):
    """Against chains cut run by run with every block registered as it fills
    (``ChainLayout(None)``): equal tables, timelines, counters and cache report, through
    evictions, preemptions (a restart re-fills its own cached answer: adopted, not deferred)
    and session turns (a previous turn's answer is in a later chain: not private)."""
    reqs = random_workload(random.Random(seed), n)
    kv = kv_room(reqs, scale, block_size)
    try:
        plain = _run(reqs, policy, kv, block_size, chains=ChainLayout(None), stepwise=stepwise,
                     preemption=preemption)
    except Exception as e:  # noqa: BLE001  (a livelock, say: so must the joined run fail)
        with pytest.raises(type(e)):
            _run(reqs, policy, kv, block_size, chains=None, stepwise=stepwise,
                 preemption=preemption)
        return
    joined = _run(reqs, policy, kv, block_size, chains=None, stepwise=stepwise,
                  preemption=preemption)
    assert_same_result(joined, plain)


def test_a_cluster_refuses_replicas_with_layouts_of_their_own():
    """A router names a request's blocks by the cluster's layout; a replica built with its own
    requests would cut them by another, and hits read across would be silently wrong."""
    from scheduler.routers import make_router
    from simulator.cluster import Cluster
    reqs = random_workload(random.Random(3), 10)
    spec = ReplicaSpec(num_blocks=kv_room(reqs, 4.0, 16) // 16, block_size=16,
                       max_model_len=4096, cost_model=CHECK_COST)

    def own(i, env):
        return Engine(reqs, make_policy("vllm-v1"), CHECK_COST, spec, prefix_caching=True,
                      env=env)
    with pytest.raises(ValueError, match="replica 0 cuts its chains by a layout of its own"):
        Cluster(reqs, make_router("prefix-affinity"), own, 2)


def test_the_vectorised_cut_counts_long_prompts_exactly():
    """A prompt of 2^53 + 1 tokens, all in one run: no tokens of its own (a float sum would
    round the run to 2^53 and give it one). Its answer's first block, across the run's end,
    is the same as that of a later turn repeating the run and the answer."""
    run = (MOONCAKE, 1, (1 << 53) + 1)
    first = Request(0, 0.0, run[2], 20, prefix=TokenRuns((run,)))
    turn = Request(1, 0.0, run[2] + 20, 2, prefix=TokenRuns((run, (ANSWER_OF, 0, 20))))
    sid, count, lengths = (a.tolist() for a in _cut_chains([first, turn], 16))
    old = [segments(r.prefix, r.request_id, r.prompt_tokens, 16) for r in (first, turn)]
    assert lengths == [len(o) for o in old]
    assert count == [c for o in old for _, c in o]
    assert old[0][1][0] == old[1][1][0] and sid[1] == sid[lengths[0] + 1]


def _prefixed(n: int) -> list[Request]:
    return [Request(i, 0.1 * i, 64, 4, prefix=TokenRuns(((MOONCAKE, i % 3, 32),)))
            for i in range(n)]


def test_laid_out_moves_what_it_built_to_the_oldest_generation():
    gc.collect()
    before = gc.get_count()
    handed, layout = laid_out(_prefixed(300), (16,))
    # Nothing it made is left young (the next young collection would walk it all), nothing
    # stays frozen, and no collection ran (the counts would have been reset).
    assert layout.joins and gc.get_freeze_count() == 0
    assert gc.get_count()[0] <= before[0] + 5
    first = next(handed)
    assert any(o is first for o in gc.get_objects(generation=2))
    assert [r.request_id for r in handed] == list(range(1, 300))


def test_laid_out_leaves_a_freeze_of_the_process_alone():
    keep = [[] for _ in range(10)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        handed, _ = laid_out(_prefixed(5), (16,))
        assert gc.get_freeze_count() == frozen       # not unfrozen by the layout
        assert len(list(handed)) == 5
    finally:
        gc.unfreeze()
    del keep


def test_a_run_with_the_cache_leaves_nothing_frozen():
    engine = Engine(_prefixed(20), make_policy("vllm-v1"), CHECK_COST,
                    ReplicaSpec(num_blocks=64, block_size=16, max_model_len=256,
                                cost_model=CHECK_COST), prefix_caching=True)
    engine.run()
    assert gc.get_freeze_count() == 0
