"""Automatic prefix caching: vLLM V1's block pool, counted rather than stored.

The model follows ``vllm/v1/core/block_pool.py``, ``kv_cache_manager.py`` and
``kv_cache_utils.py`` (vLLM 0.32):

- A full block is identified by a hash chained on its parent block's hash and on its tokens'
  identity (``hash_request_tokens``: parent hash, token ids). Here the tokens' identity is the
  request's ``TokenRuns`` (which content each token repeats), so no token ids are stored.
- A block becomes cached when it is full, at the step that computes its last token (vLLM caches
  ``num_computed_tokens + num_new_tokens`` in ``allocate_slots``), prompt and output alike.
- Blocks of running and finished requests stay cached. Freeing a block drops a reference; at
  zero references a cached block joins the tail of the free queue, an uncached one its head
  (``BlockPool.free_blocks``), and a request's blocks are freed last block first
  (``SingleTypeKVCacheManager.free``), so its tail is evicted before its head. A new block is
  taken from the head of the free queue, evicting the cached block there
  (``get_new_blocks``, ``_maybe_evict_cached_block``): eviction happens only when a block is
  needed. A hit on a free cached block takes it out of the queue (``touch``).
- A request's hit is the longest run of cached full blocks from its start, at most all its
  tokens but one (``get_computed_blocks``: ``max_cache_hit_length = num_tokens - 1``).

One simplification: vLLM keeps two blocks with equal hashes when two requests compute the same
block (``BlockHashToBlockMap`` holds both); here the second request adopts the cached block and
frees its own copy at once (``register``). The compute is the same; the pool holds one block
fewer until the requests finish. With it, a cached block's parent is cached, and held, at least
as long as the block: along a request's chain the cached blocks, the held ones and the ones
held or wanted by two requests are each a prefix.

**Segments.** Work is done per run of blocks, not per block. A request's chain is cut into
segments: the whole blocks inside one run of its content (a Mooncake hash id: 32 blocks of 16
tokens; a request's own prompt; its answer), and each block that straddles two runs on its
own. A segment is named by its first block's chained hash (``sid``), which fixes everything
before it, and block ``j`` of it is ``(sid, j)``: two chains share a block exactly when they
share it under the per-block hash chain. Chains can carry different lengths of one segment (a
run cut short by the end of a prompt): each holds or wants a prefix of it. Since the cached,
held and shared blocks of a chain are prefixes, so are they inside each segment, and a segment
keeps only how many of its blocks are cached, the prefixes its holders hold (``holds``) and
those they hold or waiting requests want (``claims``), as multisets of lengths.

Since the free queue holds every uncached free block ahead of every cached one, uncached free
blocks are a count (``plain_free``). The cached ones form ``queue``: chunks of consecutive
blocks of one segment, in the order they were freed (head: evicted first; a chunk emptied by
a hit stays in it, empty, until it reaches the head). A segment's
evictable blocks (cached, not held) are the chunks that partition ``[held, cached)``, the
oldest at the top: an eviction takes a segment's last blocks first, as vLLM's free order does,
and a hit or an adoption takes its lowest evictable blocks, the most recently freed.
"""

from __future__ import annotations

import gc
import itertools
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from operator import itemgetter
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from traces.request import ANSWER_OF, PROMPT_OF, Request, TokenRuns

ROOT_HASH = 0     # the parent hash of a request's first block (vLLM's NONE_HASH)
# A prefix search walks a chain of at most this many segments (to its limit) from the head,
# and bisects a longer one (BlockPool._prefix).
_WALKED_SEGMENTS = 8
ENDLESS = 1 << 62  # the answer run's length: output tokens follow the prompt without end


def segments(prefix: TokenRuns | None, request_id: int, prompt_tokens: int,
             block_size: int) -> list[tuple[int, int]]:
    """A request's chain as segments ``(sid, blocks)``, the last one endless (output tokens
    follow the prompt). The whole blocks inside one run form one segment, named by its first block's
    hash: the hash before it (which stands for everything earlier), namespace, key and offset
    in the run. A block across runs is a segment of one block, hashing the hash before it and,
    per run it overlaps, namespace, key, offset and tokens taken (so a Mooncake hash id, 512
    tokens, is one segment of 32 blocks of 16 tokens: runs that a block size divides cost no
    straddling block). The hash a segment passes on
    is its last block's, hashed as its first one. ``hash`` of a tuple of ints is the same in
    every process."""
    runs = list(prefix.runs) if prefix is not None else []
    own = prompt_tokens - sum(map(itemgetter(2), runs))
    if own > 0:
        runs.append((PROMPT_OF, request_id, own))
    runs.append((ANSWER_OF, request_id, ENDLESS))
    h = ROOT_HASH
    out: list[tuple[int, int]] = []
    piece: list[int] | None = None      # a block across runs, as it is filled
    need = 0                            # the tokens it still needs
    for ns, key, n in runs:
        if not n:
            continue
        off = 0
        if piece is not None:
            off = need if need < n else n
            piece += (ns, key, 0, off)
            need -= off
            if need:
                continue                # the run ends inside the block
            h = hash(tuple(piece))
            piece = None
            out.append((h, 1))
        if n - off >= block_size:
            count = (n - off) // block_size
            sid = hash((h, ns, key, off))
            off += count * block_size
            h = hash((h, ns, key, off - block_size)) if count > 1 else sid
            out.append((sid, count))
            if n == ENDLESS:
                return out     # the answer's segment: it covers everything after it
        if off < n:                     # a block starts inside the run and goes on past it
            piece = [h, ns, key, off, n - off]
            need = block_size - (n - off)
    raise AssertionError("the answer's run is endless")


def block_hashes(prefix: TokenRuns | None, request_id: int, prompt_tokens: int,
                 block_size: int, batch: int = 1024) -> Iterator[list[int]]:
    """The chain's full blocks 0, 1, 2, ... as one int each, at most ``batch`` at a time
    (endless: output tokens follow the prompt): block ``j`` of segment ``sid`` is
    ``hash((sid, j))``, so two chains have equal ints exactly where they share a block (up to
    the hash's own collisions). For what needs a per-block name outside the pool (vLLM in the
    loop's token ids, tests)."""
    for sid, count in segments(prefix, request_id, prompt_tokens, block_size):
        for lo in range(0, count, batch):
            yield [hash((sid, j)) for j in range(lo, min(count, lo + batch))]


class ChainLayout:
    """The segments of a known set of requests' chains, per block size, with runs of segments
    that always come together joined into one (a radix tree's path compression).

    Segment ``s`` at its longest length in these chains (``c`` blocks) is joined with the
    segment ``t`` after it when every chain carrying ``s`` at length ``c`` goes on with ``t``:
    the joined segment, named ``s``, is ``s``'s ``c`` blocks and then ``t``'s. Every chain
    that has any of ``t`` has all of ``s`` before it (``t``'s name hashes ``s``'s last block),
    and a chain with less of ``s`` holds a prefix of the joined segment and then leaves it, so
    two chains still share block ``j`` of a segment exactly when they share that block. The
    pool then works per run of content that no two chains tell apart: the Mooncake
    conversation trace's 26 segments per request become 3. Cut once for each block size
    given, it holds no request; only the requests it was cut from can be cut so (``blocks``
    refuses others). ``ChainLayout(None)`` joins nothing."""

    __slots__ = ("_by_block_size",)

    def __init__(self, requests: Iterable[Request] | None, block_sizes: Iterable[int] = ()):
        self._by_block_size: dict[int, dict[int, tuple[list, list, list, bool]]] | None = None
        if requests is not None:
            requests = list(requests)
            self._by_block_size = {bs: self._join(requests, bs) for bs in set(block_sizes)}

    @property
    def joins(self) -> bool:
        """Whether it was cut from requests (else it cuts every chain run by run)."""
        return self._by_block_size is not None

    def blocks(self, req: Request, block_size: int) -> RequestBlocks:
        """A new ``RequestBlocks`` for ``req``'s chain."""
        if self._by_block_size is None:
            return RequestBlocks(req.prefix, req.request_id, req.prompt_tokens, block_size)
        layout = self._by_block_size.get(block_size)
        if layout is None:
            raise ValueError(f"this chain layout was not cut for block size {block_size}")
        cut = layout.get(req.request_id)
        if cut is None:
            raise ValueError(f"request {req.request_id} is not one of the requests this "
                             f"chain layout was cut from")
        return RequestBlocks(req.prefix, req.request_id, req.prompt_tokens, block_size, cut)

    @staticmethod
    def _join(requests: list[Request], block_size: int
              ) -> dict[int, tuple[list, list, list, bool]]:
        """Each request's segments, joined; and whether its last one is in no other chain.
        Vectorised: a trace holds a few hundred thousand segments."""
        if not requests:
            return {}
        too_long = next((r for r in requests if r.prompt_tokens >= ENDLESS), None)
        if too_long is not None:
            raise ValueError(f"request {too_long.request_id}: a prompt of "
                             f"{too_long.prompt_tokens} tokens is beyond what a chain can hold "
                             f"(under 2^62)")
        cut = _cut_chains(requests, block_size)
        if cut is None:         # keys beyond 64 bits: cut one by one, named by segments()
            flat = [segments(r.prefix, r.request_id, r.prompt_tokens, block_size)
                    for r in requests]
            lengths = np.fromiter(map(len, flat), np.int64, len(flat))
            table = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(
                flat)), dtype=np.int64, count=2 * int(lengths.sum()))
            sid, count = table[0::2], table[1::2]
        else:
            sid, count, lengths = cut
        n = len(sid)
        last = np.cumsum(lengths) - 1               # each chain's last (endless) segment
        first = last - np.asarray(lengths) + 1
        after = np.empty(n, dtype=np.int64)         # the segment after each one in its chain
        after[:-1] = sid[1:]
        endless = np.zeros(n, dtype=bool)
        endless[last] = True
        # Per segment (a group, found by hashing: pandas' factorize): its longest length, and
        # whether the segment after it is the same wherever it has that length (none of them
        # endless).
        g, names_of_groups = pd.factorize(sid)
        groups = len(names_of_groups)
        sizes = np.bincount(g, minlength=groups)
        longest = np.zeros(groups, dtype=np.int64)
        np.maximum.at(longest, g, count)
        at_longest = count == longest[g]
        g_longest, after_longest = g[at_longest], after[at_longest]
        lowest = np.full(groups, np.iinfo(np.int64).max)
        np.minimum.at(lowest, g_longest, after_longest)
        highest = np.full(groups, np.iinfo(np.int64).min)
        np.maximum.at(highest, g_longest, after_longest)
        ends_there = np.zeros(groups, dtype=bool)
        ends_there[g[at_longest & endless]] = True
        joins = (lowest == highest) & ~ends_there
        join = joins[g] & at_longest                # joined with the segment after it
        starts_segment = np.ones(n, dtype=bool)
        starts_segment[1:] = ~join[:-1]
        starts_segment[first] = True
        # Block ends inside each chain (the endless last count added on its own: no overflow).
        finite = np.where(endless, 0, count)
        csum = np.cumsum(finite)
        base = (csum[first] - finite[first]).repeat(lengths)
        end_at = csum - base
        end_at[last] += count[last]
        seg_first = np.flatnonzero(starts_segment)
        seg_last = np.flatnonzero(np.append(starts_segment[1:], True))
        names = sid[seg_first].tolist()
        ends = end_at[seg_last].tolist()
        shared_name = (sizes[g[seg_first]] > 1).tolist()
        per_chain = np.add.reduceat(starts_segment.astype(np.int64), first).tolist()
        cuts = {}
        k = 0
        for r, m in zip(requests, per_chain):
            e = ends[k:k + m]
            cuts[r.request_id] = (names[k:k + m], [0, *e[:-1]], e,
                                  not shared_name[k + m - 1])
            k += m
        return cuts


_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SHIFTS = tuple(np.uint64(s) for s in (30, 27, 31))


def _mix(state: np.ndarray, *fields: np.ndarray) -> np.ndarray:
    """A 64-bit hash of ``state`` and ``fields`` per element: each field xored into the state,
    then SplitMix64's finaliser (a bijection of 64-bit words that scatters every bit). In place
    on one new array and one scratch array: a trace's few hundred thousand runs make arrays of
    megabytes, and each temporary would be one more pass through memory."""
    a, b, c = _SHIFTS
    z = state.astype(np.uint64)              # (a copy: ``state`` is left as it is)
    t = np.empty_like(z)
    for f in fields:
        # int64 to uint64 keeps the bits (two's complement): a view, not a cast.
        z ^= f.view(np.uint64) if f.dtype == np.int64 else f.astype(np.uint64)
        np.right_shift(z, a, out=t)
        z ^= t
        z *= _MIX_1
        np.right_shift(z, b, out=t)
        z ^= t
        z *= _MIX_2
        np.right_shift(z, c, out=t)
        z ^= t
    return z


def _cut_chains(requests: list[Request], block_size: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every request's chain cut into segments as ``segments()`` cuts it, for all of them at
    once: their names, their lengths in blocks (a chain's last, endless) and how many each
    chain has. A segment is named by the identity of all tokens up to its first block's end:
    the runs before the run that block ends in (a sum of the runs' hashes, position-mixed),
    and that run's namespace, key and how far into it the block ends. Two chains' segments
    have one name exactly when those tokens are the same, as under ``segments()``' hash
    chain (up to 64-bit collisions in both), though the names themselves differ: a pool
    names every chain by one layout. None when a key does not fit 64 bits (or a prompt is
    2^62 tokens long)."""
    prefixes = [r.prefix.runs if r.prefix is not None else () for r in requests]
    n_chains = len(requests)
    m = np.fromiter(map(len, prefixes), np.int64, n_chains)
    try:
        given = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(prefixes)),
                            np.int64, 3 * int(m.sum())).reshape(-1, 3)
        rid = np.fromiter((r.request_id for r in requests), np.int64, n_chains)
        prompt = np.fromiter((r.prompt_tokens for r in requests), np.int64, n_chains)
    except OverflowError:
        return None
    chain_of_given = np.repeat(np.arange(n_chains), m)
    given_tokens = np.zeros(n_chains, dtype=np.int64)   # (summed in int64: float weights
    np.add.at(given_tokens, chain_of_given, given[:, 2])  # round past 2^53 tokens)
    own = prompt - given_tokens
    # The chains' runs in order: the given ones, the request's own prompt, its endless answer.
    has_own = own > 0
    rows_per = m + has_own + 1
    row0 = np.cumsum(rows_per) - rows_per
    runs = np.empty((int(rows_per.sum()), 3), dtype=np.int64)
    runs[np.arange(len(given)) + (row0 - (np.cumsum(m) - m)).repeat(m)] = given
    own_rows = (row0 + m)[has_own]
    runs[own_rows] = np.stack([np.full(len(own_rows), PROMPT_OF), rid[has_own], own[has_own]], 1)
    answer_rows = row0 + rows_per - 1
    runs[answer_rows] = np.stack([np.full(n_chains, ANSWER_OF), rid, np.full(n_chains, ENDLESS)], 1)
    chain = np.repeat(np.arange(n_chains), rows_per)
    keep = runs[:, 2] > 0                     # a run of no tokens is no content
    if not keep.all():
        runs, chain = runs[keep], chain[keep]
    ns, key, n = runs[:, 0], runs[:, 1], runs[:, 2]
    rows = len(runs)
    first = np.ones(rows, dtype=bool)
    first[1:] = chain[1:] != chain[:-1]
    first_row = np.flatnonzero(first)
    endless = np.append(first[1:], True)      # each chain's last run: its answer
    finite = np.where(endless, 0, n)
    csum = np.cumsum(finite)
    start = csum - finite                     # each run's first token in its chain
    start -= start[first_row].repeat(np.diff(np.append(first_row, rows)))
    if rows and int(start.max()) >= ENDLESS:     # (an answer's end would overflow int64)
        return None
    # The identity of the runs before each one: the sum of the runs' own hashes (each mixed
    # with its place in its chain), per chain.
    place = np.arange(rows) - first_row.repeat(np.diff(np.append(first_row, rows)))
    run_hash = _mix(_GOLDEN * place.astype(np.uint64), ns, key, n)
    before = np.cumsum(run_hash, dtype=np.uint64) - run_hash
    before -= before[first_row].repeat(np.diff(np.append(first_row, rows)))
    bs = block_size
    # Whole blocks inside a run: a segment, named by the tokens up to its first block's end.
    head = -(-start // bs)
    count = (start + n) // bs - head           # (the answer's: endless, without overflow)
    whole = count > 0
    whole_name = _mix(before, ns, key, head * bs - start + bs)[whole]
    # A block across runs (it starts before a run starts): a segment of one block, named by
    # the tokens up to its end, in the run where it ends.
    across = start % bs != 0
    across &= ~np.append(False, across[:-1] & (start[1:] // bs == start[:-1] // bs)
                         & ~first[1:])       # one per block however many runs start in it
    at = np.flatnonzero(across)
    block_end = (start[at] // bs + 1) * bs
    ends_in = at.copy()          # the run holding the block's last token: later if runs are short
    while True:
        later = ends_in + 1 < rows
        later[later] = ~first[ends_in[later] + 1] & (start[ends_in[later] + 1] < block_end[later])
        if not later.any():
            break
        ends_in += later
    across_name = _mix(before[ends_in], ns[ends_in], key[ends_in], block_end - start[ends_in])
    # Both kinds, in each chain's block order: per run, the block across its start (if it is
    # that block's first run), then its whole blocks.
    names = np.empty(2 * rows, dtype=np.uint64)
    names[2 * at] = across_name
    names[2 * np.flatnonzero(whole) + 1] = whole_name
    blocks = np.ones(2 * rows, dtype=np.int64)
    blocks[1::2] = count
    kept = np.empty(2 * rows, dtype=bool)
    kept[0::2], kept[1::2] = across, whole
    per_chain = np.bincount(chain, weights=across.astype(np.int64) + whole, minlength=n_chains)
    return names[kept].view(np.int64), blocks[kept], per_chain.astype(np.int64)


def laid_out(requests: Iterable[Request], block_sizes: Iterable[int]
             ) -> tuple[Iterator[Request], ChainLayout]:
    """The requests (each let go as it is handed out, so that a long trace's requests and their
    prefixes are not all kept alive to the end of the run) and their chain layout.

    Built with the garbage collector paused, and what it built moved straight to the oldest
    generation (``gc.freeze`` then ``gc.unfreeze``): a few hundred thousand objects made at
    once (the requests' prefixes), none of them garbage, would otherwise be walked by the next
    young collection and again by the one after, cold in memory each time. Moved so they wait
    for a full collection, rare, and are freed as usual when their last reference goes. (Not
    where the process keeps objects frozen itself: unfreezing would end its freeze.) The young
    generations are collected first, so that no garbage of the process's is moved with them."""
    enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        listed = list(requests)
        layout = ChainLayout(listed or None, block_sizes)
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
    finally:
        if enabled:
            gc.enable()
    return _drained(listed), layout


def _drained(items: list) -> Iterator:
    items.reverse()
    while items:
        yield items.pop()


class RequestBlocks:
    """One request's chain, its segments generated as far as they are needed (``sids``, each
    starting at block ``starts[i]`` and ending before ``ends[i]``), or all of them as a
    ``ChainLayout`` cut them (``cut``); how many of its blocks (its first ``registered``) are
    cached blocks it holds; while it waits, its hit.

    ``private``: its last segment (its own prompt and answer, once joined) is in no other
    chain. ``deferring``: the engine caches its blocks that fill in that segment only when it
    frees them (simulator/engine.py, ``_register_full_blocks``)."""

    __slots__ = ("sids", "starts", "ends", "_more", "registered", "hit", "watch",
                 "shared_watch", "hit_at", "held_at", "shared_at", "private", "deferring")

    def __init__(self, prefix: TokenRuns | None, request_id: int, prompt_tokens: int,
                 block_size: int, cut: tuple[list, list, list, bool] | None = None):
        if cut is None:
            self.sids: list[int] = []
            self.starts: list[int] = []
            self.ends: list[int] = []
            self._more = iter(segments(prefix, request_id, prompt_tokens, block_size))
            self.private = False
        else:        # shared by the chain's RequestBlocks on every replica: read only
            self.sids, self.starts, self.ends, self.private = cut
            self._more = iter(())
        self.deferring = False
        self.registered = 0
        self.hit = 0          # while waiting: its hit, in blocks, as last looked up
        # The segments at the boundaries of its last lookup (None: look up): the answer can
        # only have changed if one of them did (see BlockPool.dirty).
        self.watch: set[int] | None = None
        self.shared_watch: set[int] | None = None  # the same for a resident's shared_blocks
        # The segments where its last hit, held and shared prefixes ended (where the next
        # look-up starts searching).
        self.hit_at = self.held_at = self.shared_at = 0

    def upto(self, blocks: int) -> None:
        """Generate segments until they cover the chain's first ``blocks`` blocks."""
        ends = self.ends
        end = ends[-1] if ends else 0
        if end >= blocks:
            return
        while end < blocks:
            sid, count = next(self._more)
            self.sids.append(sid)
            self.starts.append(end)
            end += count
            ends.append(end)

    def segment(self, block: int) -> int:
        """The index of the segment holding block ``block`` (generated)."""
        return bisect_right(self.starts, block) - 1

    def block_ids(self, blocks: int) -> list[tuple[int, int]]:
        """The first ``blocks`` blocks by name, ``(sid, index in the segment)`` (for checks)."""
        self.upto(blocks)
        return [(sid, j - s) for sid, s, e in zip(self.sids, self.starts, self.ends)
                for j in range(s, min(e, blocks))]


class Segment:
    """The pool's state of one segment (see the module's docstring): its first ``cached``
    blocks are cached and the first ``held`` held by live requests; ``shared`` is how many
    two or more live requests hold or want (the second longest claim)."""

    __slots__ = ("cached", "held", "shared", "holds", "claims", "chunks")

    def __init__(self, held: int = 0):
        """Nothing of it cached; or its first ``held`` blocks cached by one request."""
        self.cached = self.held = held
        self.shared = 0
        if held:
            self.holds: dict[int, int] = {held: 1}      # prefix length -> holders
            self.claims: dict[int, int] = {held: 1}     # the same, holding or (waiting) wanting
        else:
            self.holds, self.claims = {}, {}
        self.chunks: list[list] = []        # evictable: [sid, lo, hi], oldest first


def _add(counts: dict[int, int], k: int) -> None:
    counts[k] = counts.get(k, 0) + 1


def _drop(counts: dict[int, int], k: int) -> None:
    n = counts[k] - 1
    if n:
        counts[k] = n
    else:
        del counts[k]


def second_largest(counts: dict[int, int]) -> int:
    """The second largest element of a multiset ``{value: count}`` (0 with fewer than two)."""
    first = second = 0
    for k, n in counts.items():
        if k > first:
            second = k if n > 1 else first
            first = k
        elif k > second:
            second = k
    return second


@dataclass
class PrefixCacheStats:
    """vLLM's ``PrefixCacheStats``: prompt tokens looked up (``queries``) and found cached
    (``hits``), counted at each admission (re-admissions after a preemption included); cached
    blocks evicted to make room."""

    queries: int = 0
    hits: int = 0
    admissions: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.queries if self.queries else None

    def to_dict(self) -> dict:
        return {"prefix_cache_hit_rate": self.hit_rate, "prefix_cache_hits": self.hits,
                "prefix_cache_queries": self.queries,
                "prefix_cache_admissions": self.admissions,
                "prefix_cache_evictions": self.evictions}


class BlockPool:
    """The replica's KV blocks with prefix caching, by count (see the module's docstring).

    ``free_blocks`` counts uncached free blocks and evictable cached ones, as vLLM's
    ``get_num_free_blocks``; ``cached_blocks`` the blocks holding a cached prefix, held or
    evictable. ``dirty`` collects the segments whose cached, held or shared length changed
    since the engine last cleared it: a lookup's answer changes only if a segment at one of
    its boundaries did (``RequestBlocks.watch``)."""

    __slots__ = ("num_blocks", "block_size", "plain_free", "evictable", "cached_blocks",
                 "segments", "queue", "stats", "dirty")

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.plain_free = num_blocks
        self.evictable = 0
        self.cached_blocks = 0
        self.segments: dict[int, Segment] = {}
        self.queue: deque[list] = deque()    # chunks [sid, lo, hi]; head: evicted first
        self.stats = PrefixCacheStats()
        self.dirty: set[int] = set()

    @property
    def free_blocks(self) -> int:
        return self.plain_free + self.evictable

    # -- lookups ---------------------------------------------------------------------------------
    @staticmethod
    def _prefix(chain: RequestBlocks, limit: int, covered, hint: int) -> tuple:
        """The longest prefix of a chain's first ``limit`` blocks with a property that holds,
        along any chain, on a prefix of it (cached; held; held or wanted by two requests):
        ``covered(sid)`` says on how many of a segment's blocks. The segments that have it
        on all their blocks (up to ``limit``) are a prefix too: found by bisection, first
        trying segment ``hint`` (where the last answer ended: an eviction or a new holder
        usually moves it inside one segment). A chain of at most ``_WALKED_SEGMENTS`` of them
        (a ``ChainLayout`` cuts the Mooncake trace's into 3) is walked from its head instead.
        Returns its length in blocks, the segments at its end (see ``RequestBlocks.watch``):
        of its last block and of the first block after it (None where there is none), and the
        index of the segment it ends in."""
        sids, starts, ends = chain.sids, chain.starts, chain.ends
        n = bisect_left(starts, limit)           # segments overlapping the first limit blocks
        lo, hi = 0, n
        if n <= _WALKED_SEGMENTS:
            while lo < n:
                c = covered(sids[lo])
                e = ends[lo]
                if c < (e if e < limit else limit) - starts[lo]:
                    k = starts[lo] + c
                    if c:
                        return k, sids[lo], sids[lo], lo
                    return k, (sids[lo - 1] if lo else None), sids[lo], lo
                lo += 1
            return limit, (sids[n - 1] if n else None), None, n
        if hint < n:
            s, e = starts[hint], ends[hint]
            c = covered(sids[hint])
            if c >= (e if e < limit else limit) - s:
                lo = hint + 1
            elif c:                   # the answer ends inside it: all before it are covered
                return s + c, sids[hint], sids[hint], hint
            else:
                hi = hint
        while lo < hi:
            mid = (lo + hi) >> 1
            e = ends[mid]
            if covered(sids[mid]) >= (e if e < limit else limit) - starts[mid]:
                lo = mid + 1
            else:
                hi = mid
        if lo == n:
            return limit, (sids[n - 1] if n else None), None, n
        k = starts[lo] + covered(sids[lo])
        if k > starts[lo]:
            return k, sids[lo], sids[lo], lo
        return k, (sids[lo - 1] if lo else None), sids[lo], lo

    def hit_blocks(self, chain: RequestBlocks, limit: int) -> tuple:
        """How many of the first ``limit`` blocks of a chain are cached (and the segments at
        the end of them)."""
        ends = chain.ends
        if not ends or ends[-1] < limit:
            chain.upto(limit)
        get = self.segments.get
        k, before, after, chain.hit_at = self._prefix(
            chain, limit, lambda sid: seg.cached if (seg := get(sid)) else 0, chain.hit_at)
        return k, before, after

    def held_blocks(self, chain: RequestBlocks, limit: int) -> tuple:
        """How many of the first ``limit`` (cached) blocks of a chain live requests hold (and
        the segments at the end of them)."""
        segs = self.segments
        k, before, after, chain.held_at = self._prefix(
            chain, limit, lambda sid: segs[sid].held, chain.held_at)
        return k, before, after

    def shared_blocks(self, chain: RequestBlocks, registered: int) -> tuple:
        """How many of a resident request's cached blocks another live request holds, or a
        waiting request's hit covers (and the segments at the end of them)."""
        segs = self.segments
        k, before, after, chain.shared_at = self._prefix(
            chain, registered, lambda sid: segs[sid].shared, chain.shared_at)
        return k, before, after

    # -- a request's claims on segments ----------------------------------------------------------
    def want(self, chain: RequestBlocks, old: int, new: int) -> None:
        """A waiting request's hit went from its first ``old`` blocks to its first ``new``."""
        if old == new:
            return
        segs, dirty = self.segments, self.dirty
        sids, starts, ends = chain.sids, chain.starts, chain.ends
        lo, hi = (old, new) if old < new else (new, old)
        i = chain.segment(lo) if lo else 0
        while True:             # hot (an eviction moves the hits of waiting requests): inlined
            sid, s, e = sids[i], starts[i], ends[i]
            a = (old if old < e else e) - s if old > s else 0    # its old claim, its new one
            b = (new if new < e else e) - s if new > s else 0
            seg = segs[sid]
            claims = seg.claims
            if a:
                _drop(claims, a)
            if b:
                _add(claims, b)
            shared = second_largest(claims)
            if shared != seg.shared:
                seg.shared = shared
                dirty.add(sid)
            if not claims and not seg.cached:
                del segs[sid]
            if e >= hi:
                break
            i += 1

    def take_hit(self, chain: RequestBlocks, blocks: int) -> None:
        """A request admitted with its first ``blocks`` blocks cached holds them (``touch``);
        they are no longer only wanted (so the claims stay as they were)."""
        if not blocks:
            return
        segs = self.segments
        sids, starts, ends = chain.sids, chain.starts, chain.ends
        i = 0
        while True:                 # each segment of its first blocks (every admission's)
            sid, e = sids[i], ends[i]
            b = (blocks if blocks < e else e) - starts[i]
            seg = segs[sid]
            _add(seg.holds, b)
            if b > seg.held:
                self._unfree(seg, seg.held, b)
                seg.held = b
                self.dirty.add(sid)
            if e >= blocks:
                return
            i += 1

    def _unfree(self, seg: Segment, lo: int, hi: int) -> None:
        """Evictable blocks ``[lo, hi)`` of a segment, its lowest, are held again: out of the
        free queue (the newest chunks hold them)."""
        chunks = seg.chunks
        self.evictable -= hi - lo
        while lo < hi:
            chunk = chunks[-1]
            top = chunk[2]
            if top <= hi:
                chunks.pop()
                chunk[1] = top            # empty: dropped when it reaches the queue's head
                lo = top
            else:
                chunk[1] = hi
                lo = hi

    # -- a request's blocks ----------------------------------------------------------------------
    def allocate(self, blocks: int) -> None:
        """Take ``blocks`` new blocks: uncached free ones first, then the least recently freed
        cached ones, evicting them (a segment's last cached blocks). The caller has checked
        that they are free."""
        plain = self.plain_free
        if blocks <= plain:
            self.plain_free = plain - blocks
            return
        self.plain_free = 0
        need = blocks - plain
        self.evictable -= need
        self.cached_blocks -= need
        self.stats.evictions += need
        queue, segs, dirty = self.queue, self.segments, self.dirty
        while need:
            sid, lo, hi = chunk = queue[0]
            if lo == hi:
                queue.popleft()
                continue
            seg = segs.get(sid)
            if seg is None:       # a finished request's private blocks (release): no one's
                if need < hi - lo:
                    chunk[2] = hi - need
                    return
                need -= hi - lo
                queue.popleft()
                continue
            dirty.add(sid)
            if need < hi - lo:
                chunk[2] = seg.cached = hi - need
                return
            need -= hi - lo
            seg.cached = lo
            queue.popleft()
            del seg.chunks[0]
            if not lo and not seg.claims:
                del segs[sid]

    def register(self, chain: RequestBlocks, start: int, end: int) -> None:
        """Blocks ``start`` to ``end`` of a request (taken by ``allocate``) became full: they
        are cached from now on; a block cached already is adopted instead, and the request's
        own copy goes back to the free blocks."""
        sids, starts, ends = chain.sids, chain.starts, chain.ends
        if not ends or ends[-1] < end:
            chain.upto(end)
        segs, dirty = self.segments, self.dirty
        # A decode fills a block of the chain's last segment (its answer): no search.
        i = len(sids) - 1 if start >= starts[-1] else chain.segment(start) if start else 0
        adopted = 0
        while True:          # hot (a decode fills a block every block_size steps): inlined
            sid, s, e = sids[i], starts[i], ends[i]
            a = start - s if start > s else 0           # its blocks of the segment: a, then b
            b = (end if end < e else e) - s
            seg = segs.get(sid)
            if seg is None:                  # new content (a is 0: it held none of it)
                segs[sid] = Segment(b)
                self.cached_blocks += b
                dirty.add(sid)
            elif a and seg.cached == a and len(seg.claims) == 1 and seg.claims[a] == 1:
                # It extends what only it holds or wants (a decode's answer, a prefill's
                # next chunk), nothing cached past it: nothing to adopt, nothing shared.
                seg.holds = {b: 1}
                seg.claims = {b: 1}
                seg.cached = seg.held = b
                self.cached_blocks += b - a
                dirty.add(sid)
            else:
                adopted += self._register_in(seg, sid, a, b)
            if e >= end:
                break
            i += 1
        self.plain_free += adopted

    def _register_in(self, seg: Segment, sid: int, a: int, b: int) -> int:
        """``register`` in one segment, the general case: the request held its first ``a``
        blocks of it and holds its first ``b`` now. Returns how many of them it adopts."""
        dirty = self.dirty
        holds, claims = seg.holds, seg.claims
        if a:
            _drop(holds, a)
            _drop(claims, a)
        _add(holds, b)
        _add(claims, b)
        cached, held = seg.cached, seg.held
        adopted = 0
        if cached < b:
            self.cached_blocks += b - (a if a > cached else cached)
            seg.cached = b
            dirty.add(sid)
        if cached > a:                       # blocks [a, min(b, cached)) are adopted
            top = b if b < cached else cached
            adopted = top - a
            if held < top:
                self._unfree(seg, held, top)
        if b > held:
            seg.held = b
            dirty.add(sid)
        shared = second_largest(claims)
        if shared != seg.shared:
            seg.shared = shared
            dirty.add(sid)
        return adopted

    def release(self, chain: RequestBlocks, registered: int, plain: int,
                unregistered: int = 0, finished: bool = False) -> None:
        """A request frees its blocks: ``plain`` uncached ones (to the head of the free queue)
        and its ``registered`` cached ones, last first, to the tail of those evictable.
        ``unregistered`` more, after those, full but not registered: its private last segment's
        (nothing of which is cached: none adopt), cached as they are freed, first in line.
        ``finished``: the request will not come back, so nothing can ever hit, hold or watch its
        private segment again: its blocks go to the free queue as a chunk of no ``Segment``
        (``allocate`` evicts them in their turn; they are counted cached till then)."""
        self.plain_free += plain
        segs, dirty, queue = self.segments, self.dirty, self.queue
        if unregistered:
            sid = chain.sids[-1]
            chunk = [sid, 0, unregistered]
            queue.append(chunk)
            if not finished:
                seg = segs[sid] = Segment()
                seg.cached = unregistered
                seg.chunks.append(chunk)
                dirty.add(sid)
            self.evictable += unregistered
            self.cached_blocks += unregistered
        if not registered:
            return
        sids, starts, ends = chain.sids, chain.starts, chain.ends
        for i in range(chain.segment(registered - 1), -1, -1):
            sid = sids[i]
            b = (registered if registered < ends[i] else ends[i]) - starts[i]
            seg = segs[sid]
            holds, claims = seg.holds, seg.claims
            if len(claims) == 1 and claims[b] == 1:
                # The common case: nobody else holds or wants it. All of it that this request
                # held becomes evictable; nothing is shared.
                holds.clear()
                claims.clear()
                chunk = [sid, 0, b]
                queue.append(chunk)
                seg.chunks.append(chunk)
                self.evictable += b
                seg.held = 0
                dirty.add(sid)
                continue
            n = holds[b] - 1
            if n:
                holds[b] = n
            else:
                del holds[b]
            n = claims[b] - 1
            if n:
                claims[b] = n
            else:
                del claims[b]
            held = seg.held
            new_held = max(holds) if holds else 0
            if new_held < held:
                chunk = [sid, new_held, held]
                queue.append(chunk)
                seg.chunks.append(chunk)
                self.evictable += held - new_held
                seg.held = new_held
                dirty.add(sid)
            shared = second_largest(claims) if claims else 0
            if shared != seg.shared:
                seg.shared = shared
                dirty.add(sid)

    # -- the per-block view, for checks ------------------------------------------------------------
    def held_counts(self) -> dict[tuple[int, int], int]:
        """Each held block ``(sid, j)`` with how many live requests hold it."""
        out: dict[tuple[int, int], int] = {}
        for sid, seg in self.segments.items():
            for length, n in seg.holds.items():
                for j in range(length):
                    out[sid, j] = out.get((sid, j), 0) + n
        return out

    def evictable_blocks(self) -> list[tuple[int, int]]:
        """The free cached blocks ``(sid, j)``, in eviction order."""
        return [(sid, j) for sid, lo, hi in self.queue for j in range(hi - 1, lo - 1, -1)]

    def is_cached(self, block: tuple[int, int]) -> bool:
        sid, j = block
        seg = self.segments.get(sid)
        if seg is None:      # (a finished request's private blocks, evictable: release)
            return any(s == sid and lo <= j < hi for s, lo, hi in self.queue)
        return j < seg.cached
