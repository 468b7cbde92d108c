"""Projected KV of running requests over future iterations (for admission checks).

A request with ``base`` KV tokens after the coming iteration and ``rounds`` iterations to go holds
base + t tokens at iteration t < rounds, so the total grows between completions and peaks just
before each one; checking each request's last iteration is enough.
"""

from __future__ import annotations

import numpy as np


class MemoryProfile:
    """Projected KV of a set of requests at their peak rounds, for O(log n) admission checks."""

    def __init__(self, base: np.ndarray, rounds: np.ndarray, capacity: float):
        self.capacity = capacity
        self._set(base, rounds)

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
