"""The prefix cache against a straightforward reference (docs/prefix-caching.md).

A run's recorded decisions are replayed through a literal block pool: every block has an id, a
free queue (a deque, head evicted first) and the content it caches, and a block's content is
its request's tokens up to its end, chained block by block (vLLM's hash chain, with exact keys
in place of hashes). Nothing is shared with simulator/prefix_cache.py: tokens are spelt out one
by one from the requests' runs. At every step, what the policy saw (each waiting request's hit
and how many of its blocks live requests hold, each resident's shared blocks, the free blocks)
must equal the reference's; at the end, every request's cached prompt tokens, the hit, query,
admission and eviction counters and the timeline's cached blocks must too.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from scheduler.state import Status
from simulator.policycheck import check_outcome, simulate
from traces.request import ANSWER_OF, PROMPT_OF, SYSTEM_PROMPT, Request, TokenRuns

MOONCAKE_LIKE = 7            # a namespace for hash_ids-like runs of a fixed length


def random_workload(rng: random.Random, n: int) -> list[Request]:
    """Requests sharing prefixes every way the workloads do: one of two system prompts, a chain
    of hash_ids-like runs (8 tokens each) drawn from a small tree, or a session's next turn
    (the previous turn's runs, its own prompt and answer, cut anywhere), each then with a prompt
    of its own; bursts of arrivals."""
    reqs: list[Request] = []
    t = 0.0
    for rid in range(n):
        t += rng.choice([0.0, 0.0, rng.uniform(0, 0.2)])
        kind = rng.randrange(4)
        runs: list[tuple[int, int, int]] = []
        if kind == 0:
            g = rng.choice([1, 2])
            runs.append((SYSTEM_PROMPT, g, 20 if g == 1 else 37))
        elif kind == 1:
            ids = [rng.randrange(2)]
            for _ in range(rng.randrange(6)):
                ids.append(ids[-1] * 3 + rng.randrange(3))     # a tree: shared heads
            runs += [(MOONCAKE_LIKE, i, 8) for i in ids]
        elif kind == 2 and reqs:
            prev = rng.choice(reqs)
            prev_runs = list(prev.prefix.runs) if prev.prefix else []
            own = prev.prompt_tokens - sum(r[2] for r in prev_runs)
            runs += prev_runs
            if own > 0:
                runs.append((PROMPT_OF, prev.request_id, own))
            runs.append((ANSWER_OF, prev.request_id, prev.output_tokens))
        shared = sum(r[2] for r in runs)
        prompt = rng.randint(1, 30) + (rng.randint(0, shared) if kind == 2 else shared)
        clipped, left = [], prompt
        for ns, key, length in runs:        # a prompt shorter than its runs keeps their start
            if left <= 0:
                break
            clipped.append((ns, key, min(length, left)))
            left -= length
        reqs.append(Request(rid, t, prompt, rng.randint(1, 25),
                            prefix=TokenRuns(tuple(clipped)) if clipped else None))
    return reqs


def tokens(r: Request) -> list[tuple[int, int, int]]:
    """Every token of a request, prompt then output, as (namespace, key, position in its run)."""
    out = []
    runs = list(r.prefix.runs) if r.prefix else []
    for ns, key, length in runs:
        out += [(ns, key, i) for i in range(length)]
    out += [(PROMPT_OF, r.request_id, i) for i in range(r.prompt_tokens - len(out))]
    out += [(ANSWER_OF, r.request_id, i) for i in range(r.output_tokens)]
    return out


class Content:
    """Block contents as small ints: block j's is (block j-1's, its own tokens)."""

    def __init__(self):
        self.ids: dict[tuple, int] = {}

    def chain(self, toks: list, bs: int) -> list[int]:
        out, parent = [], -1
        for j in range(len(toks) // bs):
            parent = self.ids.setdefault((parent, tuple(toks[j * bs:(j + 1) * bs])),
                                         len(self.ids))
            out.append(parent)
        return out


class ReferencePool:
    """vLLM's block pool, literally: ids, reference counts, a free queue, cached contents."""

    def __init__(self, num_blocks: int):
        self.queue = deque(range(num_blocks))
        self.content: list[int | None] = [None] * num_blocks
        self.block_of: dict[int, int] = {}
        self.refs = [0] * num_blocks
        self.evictions = 0

    def hit(self, chain: list[int], limit: int) -> int:
        k = 0
        while k < limit and chain[k] in self.block_of:
            k += 1
        return k

    def touch(self, block: int) -> None:
        if self.refs[block] == 0:
            self.queue.remove(block)
        self.refs[block] += 1

    def take(self, n: int) -> list[int]:
        blocks = [self.queue.popleft() for _ in range(n)]
        for b in blocks:
            if self.content[b] is not None:
                del self.block_of[self.content[b]]
                self.content[b] = None
                self.evictions += 1
            self.refs[b] = 1
        return blocks

    def free(self, blocks: list[int]) -> None:
        for b in reversed(blocks):          # the request's tail is evicted first
            self.refs[b] -= 1
            if self.refs[b] == 0:
                if self.content[b] is None:
                    self.queue.appendleft(b)
                else:
                    self.queue.append(b)


class ReferenceRun:
    """Replays recorded steps through the reference pool."""

    def __init__(self, reqs: list[Request], num_blocks: int, bs: int):
        self.bs = bs
        content = Content()
        self.req = {r.request_id: r for r in reqs}
        self.chain = {r.request_id: content.chain(tokens(r), bs) for r in reqs}
        self.pool = ReferencePool(num_blocks)
        self.blocks: dict[int, list[int]] = {}          # held, in chain order
        self.registered: dict[int, int] = {}
        self.computed: dict[int, int] = {}
        self.generated: dict[int, int] = {}
        self.hits = self.queries = self.admissions = 0
        self.cached_prompt_tokens: dict[int, int] = {}
        self.cached_blocks: list[int] = []

    def hit(self, rid: int, num_tokens: int) -> int:
        return self.pool.hit(self.chain[rid], (num_tokens - 1) // self.bs)

    def expected_view(self, waiting: dict[int, int], resident: list[int]) -> tuple[dict, dict]:
        """What the policy must see: per waiting request (by its prompt + generated tokens)
        its hit in tokens and the hit's blocks live requests hold; per resident its blocks
        another live request holds or a waiting request's hit covers."""
        pool, seen = self.pool, {}
        wanted: dict[int, int] = {}
        for rid, num_tokens in waiting.items():
            chain = self.chain[rid][:self.hit(rid, num_tokens)]
            held = sum(pool.refs[pool.block_of[c]] > 0 for c in chain)
            seen[rid] = (len(chain) * self.bs, held)
            for c in chain:
                wanted[c] = wanted.get(c, 0) + 1
        shared = {rid: sum(pool.refs[pool.block_of[c]] + wanted.get(c, 0) > 1
                           for c in self.chain[rid][:self.registered[rid]])
                  for rid in resident}
        return seen, shared

    def step(self, step) -> None:
        pool, bs = self.pool, self.bs
        for rid in step.preempt:
            self._free(rid)
        for rid in step.admitted:
            num_tokens = step.num_tokens[rid]
            k = self.hit(rid, num_tokens)
            chain = self.chain[rid]
            held = [pool.block_of[c] for c in chain[:k]]
            for b in held:
                pool.touch(b)
            self.blocks[rid], self.registered[rid] = held, k
            self.computed[rid] = k * bs
            self.generated[rid] = num_tokens - self.req[rid].prompt_tokens
            self.admissions += 1
            self.queries += num_tokens
            self.hits += k * bs
            self.cached_prompt_tokens.setdefault(rid, k * bs)
        if not (step.prefill or step.decode):
            return
        work = step.prefill + [(rid, 1) for rid in step.decode]
        need = {rid: -(-(self.computed[rid] + n) // bs) - len(self.blocks[rid])
                for rid, n in work}
        fresh = iter(pool.take(sum(max(v, 0) for v in need.values())))
        for rid, n in work:
            self.blocks[rid] += [next(fresh) for _ in range(max(need[rid], 0))]
            self._register(rid, (self.computed[rid] + n) // bs)
        self.cached_blocks.append(len(pool.block_of))
        for rid, n in work:
            self.computed[rid] += n
            r = self.req[rid]
            if self.computed[rid] == r.prompt_tokens + self.generated[rid]:
                self.generated[rid] += 1
                if self.generated[rid] == r.output_tokens:
                    self._free(rid)

    def _register(self, rid: int, full: int) -> None:
        """Blocks full now are cached; one whose content is cached already is adopted and the
        request's own copy freed (the simplification docs/prefix-caching.md states)."""
        pool, blocks = self.pool, self.blocks[rid]
        for j in range(self.registered[rid], full):
            c = self.chain[rid][j]
            if c in pool.block_of:
                cached = pool.block_of[c]
                pool.touch(cached)
                pool.free([blocks[j]])
                blocks[j] = cached
            else:
                pool.content[blocks[j]] = c
                pool.block_of[c] = blocks[j]
        self.registered[rid] = max(self.registered[rid], full)

    def _free(self, rid: int) -> None:
        self.pool.free(self.blocks.pop(rid))
        self.registered[rid] = 0


def run_with_views(reqs, policy, *, kv_tokens, block_size):
    """Simulate with prefix caching, recording before each decision what the policy saw."""
    from scheduler.base import make_policy
    pol = make_policy(policy, None)
    states: dict = {}
    views: list[tuple[dict, dict, dict, dict]] = []
    on_arrival, schedule = pol.on_arrival, pol.schedule

    def arrive(st):
        states[st.request_id] = st
        on_arrival(st)

    def decide(view):
        waiting = {rid: st for rid, st in states.items() if st.status is Status.WAITING}
        views.append(({rid: st.num_tokens for rid, st in waiting.items()},
                      {rid: (st.cached, st.cached_shared_blocks) for rid, st in waiting.items()},
                      {st.request_id: st.shared_blocks for st in view.resident},
                      {"free": view.free_blocks}))
        return schedule(view)

    pol.on_arrival, pol.schedule = arrive, decide
    out = simulate(reqs, pol, kv_tokens=kv_tokens, block_size=block_size,
                   max_model_len=4096, prefix_caching=True)
    return out, views


POLICIES = ["vllm-v1", "sarathi", "vllm", "sjf", "orca"]


def compare_with_reference(policy: str, seed: int) -> tuple[int, int, int]:
    """Run a random workload, replay it through the reference and compare at every step;
    the run's hits, evictions and preemptions."""
    rng = random.Random(seed)
    block_size = [1, 4, 16, 3, 8, 5][seed]        # 3 and 5: blocks straddle runs
    reqs = random_workload(rng, 40)
    largest = max(r.prompt_tokens + r.output_tokens for r in reqs)
    # Tight enough that cached blocks are evicted and (for most policies) requests preempted.
    kv_tokens = -(-int(largest * rng.uniform(1.2, 2.5)) // block_size) * block_size
    out, views = run_with_views(reqs, policy, kv_tokens=kv_tokens, block_size=block_size)
    check_outcome(out, reqs)
    assert len(views) == len(out.steps)
    ref = ReferenceRun(reqs, out.spec.num_blocks, block_size)
    for i, (step, (num_tokens, seen, shared, free)) in enumerate(zip(out.steps, views)):
        want_seen, want_shared = ref.expected_view(num_tokens, step.resident)
        assert (seen, shared, free["free"]) == (want_seen, want_shared, len(ref.pool.queue)), \
            f"step {i} at t={step.now}"
        assert {rid: ref.hit(rid, step.num_tokens[rid]) * block_size
                for rid in step.admitted} == step.cached
        ref.step(step)
    cache = out.raw.prefix_cache
    assert cache.cached_prompt_tokens == ref.cached_prompt_tokens
    assert cache.stats == {"prefix_cache_hit_rate": ref.hits / ref.queries,
                           "prefix_cache_hits": ref.hits, "prefix_cache_queries": ref.queries,
                           "prefix_cache_admissions": ref.admissions,
                           "prefix_cache_evictions": ref.pool.evictions}
    assert cache.cached_blocks == ref.cached_blocks
    assert len(ref.pool.queue) == out.spec.num_blocks       # everything freed at the end
    return ref.hits, ref.pool.evictions, out.raw.preemptions


@pytest.mark.parametrize("policy", POLICIES)
def test_runs_match_the_reference_pool(policy):
    """Six seeds per policy; over them the runs hit, evict cached blocks and preempt, so the
    comparison covers each path (orca reserves a request's peak KV and never preempts)."""
    totals = [compare_with_reference(policy, seed) for seed in range(6)]
    assert sum(h > 0 for h, _, _ in totals) >= 5
    assert sum(e > 0 for _, e, _ in totals) >= 3
    if policy != "orca":
        assert sum(p > 0 for _, _, p in totals) >= 2
