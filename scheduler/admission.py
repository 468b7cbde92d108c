"""Admission control at the front of a cluster: which arrivals are refused before routing.

Two rules, either or both: a token bucket (``rate`` requests per second on average, at most
``burst`` at once: the bucket starts full and an arrival takes one token, refused when less than
one is left) and a maximum queue (refused while ``max_queue`` requests already wait, holding no
KV, across all replicas). A refused request is rejected with one of the reason codes below (and
a detail with the figures) and never reaches a replica. Like a router, it reads the replicas and changes
nothing of theirs; it keeps only its own bucket.
"""

from __future__ import annotations

from typing import Sequence

from scheduler.routers import ReplicaLoad

TOKEN_BUCKET_EMPTY = "admission_token_bucket"    # the bucket held less than one token
QUEUE_FULL = "admission_queue_full"              # max_queue requests already waiting


class Admission:
    def __init__(self, rate: float | None = None, burst: int = 1, max_queue: int | None = None):
        self.rate = rate
        self.burst = burst
        self.max_queue = max_queue
        self.bind()

    @property
    def active(self) -> bool:
        return self.rate is not None or self.max_queue is not None

    def bind(self) -> None:
        self._tokens = float(self.burst)
        self._last = 0.0

    def refuse(self, now: float, replicas: Sequence[ReplicaLoad]) -> tuple[str, str] | None:
        """Why the arrival at ``now`` is refused (a code and its detail), or None to admit it
        (taking a token)."""
        if self.max_queue is not None:
            waiting = sum(r.num_waiting for r in replicas)
            if waiting >= self.max_queue:
                return QUEUE_FULL, f"{waiting} requests waiting, max_queue {self.max_queue}"
        if self.rate is not None:
            tokens = min(float(self.burst), self._tokens + self.rate * (now - self._last))
            self._last = now
            if tokens < 1.0:
                self._tokens = tokens
                return TOKEN_BUCKET_EMPTY, (f"{tokens:.3f} tokens left (rate {self.rate:g}/s, "
                                            f"burst {self.burst})")
            self._tokens = tokens - 1.0
        return None

    def describe(self) -> dict:
        return {"rate": self.rate, "burst": self.burst, "max_queue": self.max_queue}
