"""Waiting queues a policy keeps: FCFS (with prepend for preempted requests) and priority."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Iterator

from scheduler.state import RequestState


class FCFSQueue:
    """Arrival order; preempted requests go back to the front (vLLM's recompute behaviour).

    ``on_peek``, if set, is called with the request ``peek`` returns, before the caller reads
    it: an engine that looks up prefix-cache hits only as policies read them sets it
    (``Policy.look_up_on_peek``)."""

    on_peek: Callable[[RequestState], None] | None = None

    def __init__(self):
        self._q: deque[RequestState] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def __iter__(self) -> Iterator[RequestState]:
        return iter(self._q)

    def __contains__(self, req: RequestState) -> bool:
        return req in self._q

    def append(self, req: RequestState) -> None:
        self._q.append(req)

    def prepend(self, req: RequestState) -> None:
        self._q.appendleft(req)

    def peek(self) -> RequestState:
        req = self._q[0]
        if self.on_peek is not None:
            self.on_peek(req)
        return req

    def pop(self) -> RequestState:
        return self._q.popleft()

    def remove(self, req: RequestState) -> None:
        self._q.remove(req)


class PriorityQueue:
    """Smallest key first, ties by insertion order. ``key`` maps a request to a sortable value.

    Removal is lazy, so removing from the middle costs O(1) amortised: each request's live heap
    entry is recorded by its insertion number, and any other entry of it is stale. (A tombstone
    per request would revive the stale entry when a removed request is added again, as when an
    admitted request is handed back, and the request would then be queued twice.)
    """

    on_peek: Callable[[RequestState], None] | None = None     # as FCFSQueue's

    def __init__(self, key: Callable[[RequestState], object]):
        self._key = key
        self._heap: list = []
        self._counter = itertools.count()
        self._live: dict[int, int] = {}     # id(request) -> insertion number of its live entry

    def __len__(self) -> int:
        return len(self._live)

    def __bool__(self) -> bool:
        return bool(self._live)

    def __contains__(self, req: RequestState) -> bool:
        return id(req) in self._live

    def __iter__(self) -> Iterator[RequestState]:
        """Requests in priority order (sorts a copy; meant for inspection, not hot paths)."""
        return (r for _, n, r in sorted(self._heap) if self._live.get(id(r)) == n)

    def append(self, req: RequestState) -> None:
        n = next(self._counter)
        self._live[id(req)] = n
        heapq.heappush(self._heap, (self._key(req), n, req))

    prepend = append  # priority decides; a preempted request competes on its key like any other

    def _drop_stale(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(id(heap[0][2])) != heap[0][1]:
            heapq.heappop(heap)

    def peek(self) -> RequestState:
        self._drop_stale()
        req = self._heap[0][2]
        if self.on_peek is not None:
            self.on_peek(req)
        return req

    def pop(self) -> RequestState:
        self._drop_stale()
        req = heapq.heappop(self._heap)[2]
        del self._live[id(req)]
        return req

    def remove(self, req: RequestState) -> None:
        del self._live[id(req)]
