"""Waiting queues a policy keeps: FCFS (with prepend for preempted requests) and priority."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Iterator

from scheduler.state import RequestState


class FCFSQueue:
    """Arrival order; preempted requests go back to the front (vLLM's recompute behaviour)."""

    def __init__(self):
        self._q: deque[RequestState] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def __iter__(self) -> Iterator[RequestState]:
        return iter(self._q)

    def append(self, req: RequestState) -> None:
        self._q.append(req)

    def prepend(self, req: RequestState) -> None:
        self._q.appendleft(req)

    def peek(self) -> RequestState:
        return self._q[0]

    def pop(self) -> RequestState:
        return self._q.popleft()

    def remove(self, req: RequestState) -> None:
        self._q.remove(req)


class PriorityQueue:
    """Smallest key first, ties by insertion order. ``key`` maps a request to a sortable value.

    Removal is lazy (a tombstone set), so removing from the middle costs O(1) amortised.
    """

    def __init__(self, key: Callable[[RequestState], object]):
        self._key = key
        self._heap: list = []
        self._counter = itertools.count()
        self._removed: set[int] = set()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[RequestState]:
        """Requests in priority order (sorts a copy; meant for inspection, not hot paths)."""
        return (r for _, _, r in sorted(self._heap) if id(r) not in self._removed)

    def append(self, req: RequestState) -> None:
        self._removed.discard(id(req))
        heapq.heappush(self._heap, (self._key(req), next(self._counter), req))
        self._size += 1

    prepend = append  # priority decides; a preempted request competes on its key like any other

    def _drop_removed(self) -> None:
        while self._heap and id(self._heap[0][2]) in self._removed:
            self._removed.discard(id(heapq.heappop(self._heap)[2]))

    def peek(self) -> RequestState:
        self._drop_removed()
        return self._heap[0][2]

    def pop(self) -> RequestState:
        self._drop_removed()
        self._size -= 1
        return heapq.heappop(self._heap)[2]

    def remove(self, req: RequestState) -> None:
        self._removed.add(id(req))
        self._size -= 1
