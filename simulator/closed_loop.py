"""Closed-loop session turns: a turn that follows another arrives a think time after that one
ends (docs/prefix-caching.md, "Closed loop").

The arrival process of one replica (``ReplicaLoop``) and of a cluster (``Cluster``, whose router
then places every turn) read the workload's requests in order. A request whose ``follows`` names
an earlier turn is not released at its table time: it is held here until the turn it follows
ends (completed or rejected, on whichever replica), then released ``think_s`` later (plus the
front end's delay, one replica's only). The arrivals close once the list has been read and
every held turn has arrived.

A held turn must be read no later than the instant the turn it follows ends: the sessions'
tables give every turn its session's start as ``arrival_s`` (traces/sessions.py), so a turn is
read at the instant its session's first turn arrives, before any of them can complete. A turn
rejected at the very instant it arrives (it can never fit, or admission control refuses it)
ends before the turns after it in the same instant are read: the check for its follower waits
until that instant's rows are read.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable

import simpy

from traces.request import Request


class ClosedLoopTurns:
    """Session turns held until the turn each follows ends. ``release(r, arrival_s)`` hands a
    turn over when it arrives; ``close()`` is called once, when no request will arrive any more.
    """

    __slots__ = ("env", "release", "close", "delay_s", "waiting", "_listed", "_to_come",
                 "closed", "_release_times", "_rechecks")

    def __init__(self, env: simpy.Environment, release: Callable[[Request, float], object],
                 close: Callable[[], None]):
        self.env = env
        self.release = release
        self.close = close
        self.delay_s = 0.0                    # the front end's delay (one replica's)
        self.waiting: dict[int, Request] = {}  # held turns, by the request they follow
        self._listed = False                  # the workload's list has been read
        self._to_come = 0                     # held turns that have not arrived yet
        self.closed = False
        self._release_times: list[float] = []  # heap: when the turns on their way arrive
        self._rechecks = 0                    # ends whose follower is looked for again

    def hold(self, r: Request) -> bool:
        """Hold ``r`` if it follows another turn (True), else leave it to the caller."""
        if r.follows is None:
            return False
        self.waiting[r.follows] = r
        self._to_come += 1
        return True

    def ended(self, request_id: int) -> None:
        """Request ``request_id`` completed or was rejected: the turn that follows it, if any,
        arrives its think time later."""
        r = self.waiting.pop(request_id, None)
        if r is not None:
            self._send(r)
        elif not self._listed:
            # Its follower may be a later row of this same instant: look again once they are read.
            self._rechecks += 1
            self.env.timeout(0).callbacks.append(lambda _: self._recheck(request_id))

    def _recheck(self, request_id: int) -> None:
        self._rechecks -= 1
        r = self.waiting.pop(request_id, None)
        if r is not None:
            self._send(r)

    def _send(self, r: Request) -> None:
        heapq.heappush(self._release_times, self.env.now + max(r.think_s + self.delay_s, 0.0))
        self.env.process(self._follow(r))

    def next_release_s(self) -> float:
        """The earliest time a held turn can arrive (now while an end's follower is still
        looked for; infinity with none on its way): a stretch of the fast engine ends there."""
        if self._rechecks:
            return self.env.now
        return self._release_times[0] if self._release_times else math.inf

    def listed(self) -> None:
        """The workload's list has been read (held turns may still arrive)."""
        self._listed = True
        self._maybe_close()

    def _follow(self, r: Request):
        # The client sends the turn a think time after the answer; the replica sees it after
        # the front end's delay, as every arrival.
        arrival_s = self.env.now + r.think_s
        if r.think_s + self.delay_s > 0:
            yield self.env.timeout(r.think_s + self.delay_s)
        heapq.heappop(self._release_times)
        self._to_come -= 1
        self.release(r, arrival_s)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._listed and self._to_come == 0 and not self.closed:
            self.closed = True
            self.close()
