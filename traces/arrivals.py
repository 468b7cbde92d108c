"""Arrival processes: when requests arrive. Each samples sorted arrival times (seconds from 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from traces.errors import WorkloadError


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise WorkloadError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class ArrivalProcess:
    """Base class. ``sample`` returns ``n`` arrivals, or all arrivals before ``until`` seconds."""

    name = ""

    @property
    def mean_rate(self) -> float:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int | None = None,
               until: float | None = None) -> np.ndarray:
        if (n is None) == (until is None):
            raise WorkloadError("give exactly one of num_requests and duration")
        if n is not None:
            if n < 0:
                raise WorkloadError(f"num_requests must be >= 0, got {n}")
            return self._first_n(rng, n)
        _positive("duration", until)
        return self._until(rng, until)

    # Renewal processes share the implementation below; others override both methods.
    def _gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def _first_n(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.cumsum(self._gaps(rng, n))

    def _until(self, rng: np.random.Generator, until: float) -> np.ndarray:
        # Draw in blocks sized from the mean so one or two draws usually suffice; the draws are
        # consumed in order, so the result is the same as one long draw cut at `until`.
        times: list[np.ndarray] = []
        t0 = 0.0
        block = max(16, int(until * self.mean_rate * 1.1) + 16)
        while True:
            chunk = t0 + np.cumsum(self._gaps(rng, block))
            times.append(chunk)
            if chunk[-1] >= until:
                break
            t0 = chunk[-1]
        out = np.concatenate(times)
        return out[out < until]


@dataclass(frozen=True)
class Poisson(ArrivalProcess):
    """Poisson arrivals: exponential inter-arrival gaps with the given rate (requests/s)."""

    rate: float
    name = "poisson"

    def __post_init__(self):
        _positive("rate", self.rate)

    @property
    def mean_rate(self) -> float:
        return self.rate

    def _gaps(self, rng, n):
        return rng.exponential(1.0 / self.rate, size=n)


@dataclass(frozen=True)
class Gamma(ArrivalProcess):
    """Gamma-renewal arrivals: mean rate ``rate`` and coefficient of variation ``cv`` of the gaps.

    cv = 1 is Poisson; cv > 1 is bursty. ``vllm bench serve --burstiness b`` is shape b, i.e.
    cv = 1 / sqrt(b).
    """

    rate: float
    cv: float = 1.0
    name = "gamma"

    def __post_init__(self):
        _positive("rate", self.rate)
        _positive("cv", self.cv)

    @property
    def mean_rate(self) -> float:
        return self.rate

    def _gaps(self, rng, n):
        shape = 1.0 / self.cv ** 2
        return rng.gamma(shape, 1.0 / (self.rate * shape), size=n)


@dataclass(frozen=True)
class Deterministic(ArrivalProcess):
    """Evenly spaced arrivals, one every 1/rate seconds (the first at 1/rate)."""

    rate: float
    name = "deterministic"

    def __post_init__(self):
        _positive("rate", self.rate)

    @property
    def mean_rate(self) -> float:
        return self.rate

    def _gaps(self, rng, n):
        return np.full(n, 1.0 / self.rate)


@dataclass(frozen=True)
class PiecewisePoisson(ArrivalProcess):
    """Non-homogeneous Poisson arrivals with a piecewise-constant rate that repeats.

    ``segments`` is a sequence of (duration_s, rate) pairs; after the last one the pattern starts
    over (a daily or bursty cycle). A segment may have rate 0 (a pause). Sampled exactly by
    inverting the cumulative intensity of unit-rate Poisson points.
    """

    segments: tuple[tuple[float, float], ...]
    name = "piecewise"

    def __post_init__(self):
        if not self.segments:
            raise WorkloadError("piecewise arrivals need at least one (duration, rate) segment")
        for i, seg in enumerate(self.segments):
            if len(seg) != 2:
                raise WorkloadError(f"rate segment {i} must be (duration_s, rate), got {seg!r}")
            _positive(f"rate segment {i} duration", seg[0])
            if not (math.isfinite(seg[1]) and seg[1] >= 0):
                raise WorkloadError(f"rate segment {i} rate must be >= 0, got {seg[1]!r}")
        if self._cycle_intensity == 0:
            raise WorkloadError("piecewise arrivals need at least one segment with a positive rate")

    @property
    def _period(self) -> float:
        return sum(d for d, _ in self.segments)

    @property
    def _cycle_intensity(self) -> float:
        return sum(d * r for d, r in self.segments)

    @property
    def mean_rate(self) -> float:
        return self._cycle_intensity / self._period

    def _invert(self, unit_points: np.ndarray) -> np.ndarray:
        if len(unit_points) == 0:
            return unit_points
        cycles = int(unit_points[-1] // self._cycle_intensity) + 1
        durations = np.tile([d for d, _ in self.segments], cycles)
        rates = np.tile([r for _, r in self.segments], cycles)
        starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
        cum = np.concatenate([[0.0], np.cumsum(durations * rates)[:-1]])
        # side='right' skips zero-rate segments, whose cumulative intensity does not advance.
        seg = np.searchsorted(cum, unit_points, side="right") - 1
        return starts[seg] + (unit_points - cum[seg]) / rates[seg]

    def _first_n(self, rng, n):
        return self._invert(np.cumsum(rng.exponential(1.0, size=n)))

    def _until(self, rng, until):
        expected = until * self.mean_rate
        points = np.cumsum(rng.exponential(1.0, size=max(16, int(expected * 1.2) + 64)))
        times = self._invert(points)
        while times[-1] < until:
            more = points[-1] + np.cumsum(rng.exponential(1.0, size=len(points)))
            points = np.concatenate([points, more])
            times = self._invert(points)
        return times[times < until]


ARRIVAL_KINDS = ("poisson", "gamma", "deterministic", "piecewise")
