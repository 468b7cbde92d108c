"""Projected KV of running requests over future iterations (for admission checks).

A request with ``base`` KV tokens after the coming iteration and ``rounds`` iterations to go holds
base + t tokens at iteration t < rounds, so the total grows between completions and peaks just
before each one; checking each request's last iteration is enough.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from scheduler.state import RequestState


def projected(req: RequestState, expected_output: float, block_size: int) -> tuple[int, int]:
    """A request's (base, rounds): its tokens once the coming iteration has run, plus
    block_size - 1, the most that rounding its KV up to whole blocks can add (so a projection
    within capacity in tokens also fits in blocks); and the iterations it has left by
    ``expected_output``, at least one (a request that outlived it is expected to end next)."""
    return req.num_tokens + block_size - 1, max(1, int(expected_output) - req.generated)


class MemoryProfile:
    """Projected KV of a set of requests at their peak rounds, for O(log n) admission checks."""

    def __init__(self, base: np.ndarray, rounds: np.ndarray, capacity: float):
        self.capacity = capacity
        self._set(base, rounds)

    @classmethod
    def of(cls, reqs: Iterable[RequestState], expected_output: Callable[[RequestState], float],
           block_size: int, capacity: float) -> "MemoryProfile":
        """The profile of ``reqs``, each ``projected`` over the output ``expected_output`` gives."""
        points = [projected(r, expected_output(r), block_size) for r in reqs]
        return cls(np.array([b for b, _ in points], dtype=float),
                   np.array([n for _, n in points], dtype=np.int64), capacity)

    def _set(self, base, rounds):
        order = np.argsort(rounds, kind="stable")
        self.base, self.rounds = base[order], rounds[order]
        # mem(t) = sum over requests with rounds > t of (base + t)
        suffix_base = np.concatenate([np.cumsum(self.base[::-1])[::-1], [0.0]])
        n = len(self.rounds)
        peaks = self.rounds - 1
        first_alive = np.searchsorted(self.rounds, peaks, side="right")
        self._suffix_base = suffix_base
        mem = suffix_base[first_alive] + peaks * (n - first_alive)
        slack = self.capacity - mem - peaks       # room for one more request's base at each peak
        self._peaks = peaks
        self._min_slack = np.minimum.accumulate(slack) if n else slack

    def memory_at(self, t: float) -> float:
        first_alive = np.searchsorted(self.rounds, t, side="right")
        return self._suffix_base[first_alive] + t * (len(self.rounds) - first_alive)

    def fits(self, base: float, rounds: int) -> bool:
        """Would adding a request keep every future peak within capacity?"""
        last = rounds - 1
        if self.memory_at(last) + base + last > self.capacity:
            return False
        k = np.searchsorted(self._peaks, last, side="right")   # peaks while it is still running
        return k == 0 or self._min_slack[k - 1] >= base

    def add(self, base: float, rounds: int) -> None:
        self._set(np.append(self.base, base), np.append(self.rounds, rounds))
