"""How much of a workload's prompts repeat what earlier requests computed: the prefix-cache hit
a request would find if every request before it (in table order) had finished and nothing had
been evicted. The simulator's cache reaches it when arrivals are spaced and its capacity holds
everything (tests/test_prefix_cache.py); concurrency and eviction only lower it. The fluid
policies plan with this expected hit rate (``WorkloadHint.hit_rate``, docs/fluid.md).

A request computes the KV of its prompt and of all its output tokens but the last (prompt +
output - 1 tokens; the last token is sampled, never fed back). Its hit is the longest common
prefix, in tokens, of its prompt with what an earlier request computed, cut to all its tokens
but one (vLLM's ``max_cache_hit_length``) and down to whole blocks: a block is cached only when
full, and two requests that agree on a prefix agree on its block boundaries.

Common prefixes are found over ``TokenRuns`` rather than blocks, so the work is per run, not
per block: a trie of runs keyed by (hash of the runs before, namespace, key) that keeps, per
run, the most tokens of it any request computed. Two runs with the same namespace and key hold
the same tokens, so a prompt's run of ``n`` tokens agrees with a computed one of ``m`` on
``min(n, m)`` tokens; after a run of a different length the contents differ.
"""

from __future__ import annotations

from typing import Iterable

from traces.request import ANSWER_OF, PROMPT_OF, Request

_ROOT = 0


def repeated_prefix_tokens(requests: Iterable[Request], block_size: int) -> list[int]:
    """Each request's cached prompt tokens under an unbounded cache, one request at a time."""
    longest: dict[tuple[int, int, int], int] = {}   # (hash before, namespace, key) -> tokens
    hits = []
    for r in requests:
        runs = list(r.prefix.runs) if r.prefix is not None else []
        own = r.prompt_tokens - sum(n for _, _, n in runs)
        if own > 0:
            runs.append((PROMPT_OF, r.request_id, own))
        matched, h = 0, _ROOT
        for ns, key, n in runs:
            m = longest.get((h, ns, key))
            if m is None:
                break
            matched += min(n, m)
            if m < n:
                break
            h = hash((h, ns, key, n))
        hits.append(min(matched, r.prompt_tokens - 1) // block_size * block_size)
        if r.output_tokens > 1:
            runs.append((ANSWER_OF, r.request_id, r.output_tokens - 1))
        h = _ROOT
        for ns, key, n in runs:
            if longest.get((h, ns, key), 0) < n:
                longest[(h, ns, key)] = n
            h = hash((h, ns, key, n))
    return hits


def repeated_prefix_fraction(requests: Iterable[Request], block_size: int) -> float:
    """The expected hit rate: cached prompt tokens / prompt tokens (``repeated_prefix_tokens``),
    as vLLM's prefix-cache hit rate counts them; 0 for no requests."""
    requests = list(requests)
    total = sum(r.prompt_tokens for r in requests)
    return sum(repeated_prefix_tokens(requests, block_size)) / total if total else 0.0
