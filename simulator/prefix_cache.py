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

Since the free queue holds every uncached free block ahead of every cached one, the pool needs
no block ids: a count of uncached free blocks and an ordered map of the cached free blocks
(``evictable``, head first). A block's hash stands for the block; ``refs`` counts the live
requests holding each cached block, and a shared block counts once against capacity.
``wanted`` counts the waiting requests whose hit covers each block: preempting a request frees
only blocks that nobody else holds or wants (``shared_blocks``), so that a policy that preempts
one request and admits another whose hit is on the victim's blocks plans with the blocks the
engine will really have.

One simplification: vLLM keeps two blocks with equal hashes when two requests compute the same
block (``BlockHashToBlockMap`` holds both); here the second request adopts the cached block and
frees its own copy at once (``register``). The compute is the same; the pool holds one block
fewer until the requests finish. With it, every cached block's parent is cached and held at
least as long, so along a request's chain the cached blocks, and the held ones, are prefixes:
found by bisection.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import repeat, starmap
from operator import itemgetter
from dataclasses import dataclass
from typing import Iterator

from traces.request import ANSWER_OF, PROMPT_OF, TokenRuns

ROOT_HASH = 0     # the parent hash of a request's first block (vLLM's NONE_HASH)


BATCH = 256       # hashes generated at most at once inside one run (the output run is endless)


def block_hashes(prefix: TokenRuns | None, request_id: int, prompt_tokens: int,
                 block_size: int) -> Iterator[list[int]]:
    """The chained hashes of a request's full blocks 0, 1, 2, ..., a list at a time (endless:
    output tokens follow the prompt). A block across runs hashes its parent's hash and, per run
    it overlaps, namespace, key, offset in the run and tokens taken; blocks inside one run hash
    the hash before them, the run and the offset. ``hash`` of a tuple of ints is the same in
    every process."""
    runs = list(prefix.runs) if prefix is not None else []
    own = prompt_tokens - sum(n for _, _, n in runs)
    if own > 0:
        runs.append((PROMPT_OF, request_id, own))
    runs.append((ANSWER_OF, request_id, 1 << 62))
    h = ROOT_HASH
    i, off = 0, 0
    ns, key, n = runs[0]
    while True:
        # Whole blocks inside the current run, the common case: each hashes the hash before
        # them (which stands for everything earlier) and its offset, which together fix its
        # whole prefix as a per-block chain would.
        if n - off >= block_size:
            end = off + min((n - off) // block_size, BATCH) * block_size
            base = h
            batch = [hash((base, ns, key, o)) for o in range(off, end, block_size)]
            off = end
            h = batch[-1]
            yield batch
            continue
        piece: list[int] = [h]
        need = block_size
        while need:
            take = min(need, n - off)
            if take:
                piece += (ns, key, off, take)
                off += take
                need -= take
            if off == n:
                i += 1
                ns, key, n = runs[i]
                off = 0
        h = hash(tuple(piece))
        yield [h]


class RequestBlocks:
    """One request's block hashes, generated as far as they are needed; how many of its
    blocks (its first ``registered``) are cached blocks it holds; while it waits, its hit."""

    __slots__ = ("hashes", "_more", "registered", "hit", "watch", "shared_watch")

    def __init__(self, prefix: TokenRuns | None, request_id: int, prompt_tokens: int,
                 block_size: int):
        self.hashes: list[int] = []
        self._more = block_hashes(prefix, request_id, prompt_tokens, block_size)
        self.registered = 0
        self.hit = 0          # while waiting: its hit, in blocks, as last looked up
        # The blocks at the boundaries of its last lookup (None: look up): the answer can only
        # have changed if one of them did (see BlockPool.dirty).
        self.watch: tuple | None = None
        self.shared_watch: tuple | None = None     # the same for a resident's shared_blocks

    def upto(self, blocks: int) -> list[int]:
        """The hashes list, holding at least its first ``blocks`` hashes."""
        hashes = self.hashes
        while len(hashes) < blocks:
            hashes.extend(next(self._more))
        return hashes


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
    ``get_num_free_blocks``. ``dirty`` collects the blocks whose state changed (cached or not,
    holders, wanted) since the engine last cleared it: a lookup's answer changes only if a
    block at one of its boundaries did (``RequestBlocks.watch``)."""

    __slots__ = ("num_blocks", "block_size", "plain_free", "evictable", "refs", "wanted",
                 "stats", "dirty")

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.plain_free = num_blocks
        self.evictable: OrderedDict[int, None] = OrderedDict()   # head: evicted first
        self.refs: dict[int, int] = {}                           # held cached blocks
        self.wanted: dict[int, int] = {}                         # hits of waiting requests
        self.stats = PrefixCacheStats()
        self.dirty: set[int] = set()

    @property
    def free_blocks(self) -> int:
        return self.plain_free + len(self.evictable)

    @property
    def cached_blocks(self) -> int:
        """Blocks holding a cached prefix, held or evictable."""
        return len(self.refs) + len(self.evictable)

    def is_cached(self, h: int) -> bool:
        return h in self.refs or h in self.evictable

    # -- lookups -------------------------------------------------------------------------------
    def hit_blocks(self, hashes: list[int], limit: int) -> int:
        """How many of the first ``limit`` blocks of a chain are cached (a prefix: bisection)."""
        refs, evictable = self.refs, self.evictable
        lo, hi = 0, limit          # the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            h = hashes[mid - 1]
            if h in refs or h in evictable:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def held_blocks(self, hashes: list[int], limit: int, more_than: int = 0) -> int:
        """How many of the first ``limit`` blocks of a chain more than ``more_than`` live
        requests hold (holders only shrink along a chain: bisection)."""
        refs = self.refs
        lo, hi = 0, limit
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if refs.get(hashes[mid - 1], 0) > more_than:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def shared_blocks(self, hashes: list[int], registered: int) -> int:
        """How many of a resident request's cached blocks another live request holds, or a
        waiting request's hit covers (both only shrink along a chain: bisection)."""
        refs, wanted = self.refs, self.wanted
        lo, hi = 0, registered
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            h = hashes[mid - 1]
            if refs[h] + wanted.get(h, 0) > 1:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # What a lookup reads of a block: cached or not; held or not (a waiting request's
    # cached_shared_blocks); held or wanted by more than one request (a resident's
    # shared_blocks). A block is marked dirty only when one of these changes.

    def want(self, hashes: list[int], old: int, new: int) -> None:
        """A waiting request's hit went from its first ``old`` blocks to its first ``new``."""
        wanted, refs, dirty = self.wanted, self.refs, self.dirty
        if new > old:
            for h in hashes[old:new]:
                w = wanted.get(h, 0)
                wanted[h] = w + 1
                if refs.get(h, 0) + w == 1:
                    dirty.add(h)
        else:
            for h in hashes[new:old]:
                w = wanted[h] - 1
                if w:
                    wanted[h] = w
                else:
                    del wanted[h]
                if refs.get(h, 0) + w == 1:
                    dirty.add(h)

    # -- a request's blocks ----------------------------------------------------------------------
    def take_hit(self, hashes: list[int], blocks: int) -> None:
        """A request admitted with its first ``blocks`` blocks cached holds them (``touch``);
        they are no longer only wanted (so held-or-wanted counts stay as they were)."""
        refs, evictable, wanted, dirty = self.refs, self.evictable, self.wanted, self.dirty
        for h in hashes[:blocks]:
            w = wanted[h] - 1
            if w:
                wanted[h] = w
            else:
                del wanted[h]
            held = refs.get(h, 0)
            if held == 0:
                del evictable[h]
                dirty.add(h)
            refs[h] = held + 1

    def allocate(self, blocks: int) -> None:
        """Take ``blocks`` new blocks: uncached free ones first, then the least recently freed
        cached ones, evicting them. The caller has checked that they are free."""
        plain = self.plain_free
        if blocks <= plain:
            self.plain_free = plain - blocks
            return
        self.plain_free = 0
        # popitem(last=False), blocks - plain times, in C: the head of the LRU queue first.
        evicted = starmap(self.evictable.popitem, repeat((False,), blocks - plain))
        self.dirty.update(map(itemgetter(0), evicted))
        self.stats.evictions += blocks - plain

    def register(self, hashes: list[int], start: int, end: int) -> None:
        """Blocks ``start`` to ``end`` of a request (taken by ``allocate``) became full: they
        are cached from now on; a block whose hash is cached already is adopted instead, and
        the request's own copy goes back to the free blocks."""
        new = hashes[start:end]
        refs, evictable = self.refs, self.evictable
        if refs.keys().isdisjoint(new) and evictable.keys().isdisjoint(new):
            refs.update(dict.fromkeys(new, 1))      # the common case: none cached yet
            self.dirty.update(new)
            return
        wanted, dirty = self.wanted, self.dirty
        adopted = 0
        for h in new:
            held = refs.get(h)
            if held is not None:
                refs[h] = held + 1
                adopted += 1
                if held == 1 and h not in wanted:
                    dirty.add(h)
                continue
            dirty.add(h)
            if h in evictable:
                del evictable[h]
                adopted += 1
            refs[h] = 1
        self.plain_free += adopted

    def release(self, hashes: list[int], registered: int, plain: int) -> None:
        """A request frees its blocks: ``plain`` uncached ones (to the head of the free queue)
        and its ``registered`` cached ones, last first, to the tail of those evictable."""
        self.plain_free += plain
        refs, evictable, wanted, dirty = self.refs, self.evictable, self.wanted, self.dirty
        # Past its first ``shared`` blocks, nobody else holds or wants them (a prefix: see
        # shared_blocks): those go to the free queue at once, in C loops.
        shared = self.shared_blocks(hashes, registered)
        mine = hashes[shared:registered]
        if mine:
            deque(map(refs.__delitem__, mine), maxlen=0)     # del refs[h] for each
            mine.reverse()
            evictable.update(dict.fromkeys(mine))
            dirty.update(mine)
        for i in range(shared - 1, -1, -1):
            h = hashes[i]
            held = refs[h] - 1
            if held:
                refs[h] = held
                if held == 1 and h not in wanted:
                    dirty.add(h)
            else:
                del refs[h]
                evictable[h] = None
                dirty.add(h)
