"""Capacity search: the largest arrival rate a replica sustains under a policy.

Two criteria:
- ``slo``: SLO attainment, pooled over the seeds (requests meeting every objective / requests),
  at least the target, and latency stable;
- ``stable``: latency stable (lambda*, as in the paper's experiments): the pooled latency growth
  (second-half over first-half mean E2E latency, see ``stability``) at most the growth limit and
  every request completed.

Each probe runs every seed at one rate (in parallel, on the sweep executors). The search
brackets the capacity by doubling or halving from the start rate (or takes the given bounds),
then bisects until the bracket is within ``tol`` of its upper end: the reported capacity is the
largest passing rate, and the capacity lies in [low, high) when the criterion is monotone in the
rate. The same seeds at every rate (common random numbers: a Poisson stream at a higher rate is
the same stream compressed) keep the criterion close to monotone despite the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from simulator.config import RunConfig
from simulator.errors import ConfigError, PolicyViolation
from simulator.sweep.executors import make_executor
from simulator.sweep.stability import DEFAULT_GROWTH_LIMIT, pooled_growth

# The runs' modules (the simulator, pandas) are imported inside the functions that run points:
# the command line imports this module for CRITERIA when it lists its options.

CRITERIA = ("slo", "stable")
MAX_DOUBLINGS = 16        # 65536x the start rate: past that there is no capacity to find
SCALARS = (int, float, str, bool, type(None))


@dataclass
class Probe:
    rate: float
    passed: bool
    stable: bool
    growth: float
    attainment: float | None
    runs: list[dict] = field(default_factory=list)   # one summary (scalars) per seed

    def mean(self, key: str) -> float:
        values = [r[key] for r in self.runs if isinstance(r.get(key), (int, float))]
        return sum(values) / len(values) if values else math.nan

    def to_dict(self) -> dict:
        return {"rate": self.rate, "passed": self.passed, "stable": self.stable,
                "latency_growth": self.growth, "slo_attainment": self.attainment,
                "runs": self.runs}


@dataclass
class CapacityResult:
    criterion: str
    capacity: float | None        # the largest passing rate (None: even the lowest fails)
    low: Probe | None             # the bracketing probes: passes ...
    high: Probe | None            # ... and fails (None: no failure up to the largest rate)
    probes: list[Probe]
    tol: float
    target: float | None
    growth_limit: float
    seeds: list[int]

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "capacity": self.capacity,
                "bracket": [self.low.rate if self.low else None,
                            self.high.rate if self.high else None],
                "tolerance": self.tol, "attainment_target": self.target,
                "growth_limit": self.growth_limit, "seeds": self.seeds,
                "low": self.low.to_dict() if self.low else None,
                "high": self.high.to_dict() if self.high else None,
                "probes": [p.to_dict() for p in sorted(self.probes, key=lambda p: p.rate)]}


def base_rate(cfg: RunConfig) -> float:
    from simulator.runner import request_types
    types = request_types(cfg)
    return sum(t.rate for t in types) if types else cfg.rate


def capacity_search(cfg: RunConfig, *, criterion: str = "slo", attainment: float = 0.9,
                    seeds: int = 3, tol: float = 0.02, rate_min: float | None = None,
                    rate_max: float | None = None, growth_limit: float = DEFAULT_GROWTH_LIMIT,
                    executor: str = "local", workers: int | None = None,
                    address: str | None = None,
                    on_probe: Callable[[Probe], None] | None = None) -> CapacityResult:
    from simulator.sweep.points import at_rate
    _check(cfg, criterion, attainment, seeds, tol, rate_min, rate_max, growth_limit)
    seed_list = [cfg.seed + i for i in range(seeds)]
    cfg = at_rate(cfg, base_rate(cfg))   # fails early (piecewise arrivals) before any run
    probes: list[Probe] = []

    with make_executor(executor, workers, address) as ex:
        def probe(rate: float) -> Probe:
            p = _probe(ex, cfg, float(f"{rate:.12g}"), seed_list, criterion, attainment,
                       growth_limit)
            probes.append(p)
            if on_probe:
                on_probe(p)
            return p

        def result(low: Probe | None, high: Probe | None) -> CapacityResult:
            return CapacityResult(criterion, low.rate if low else None, low, high, probes, tol,
                                  attainment if criterion == "slo" else None, growth_limit,
                                  seed_list)

        # Bracket: from rate_min (or rate_max, or the config's rate), double up to the first
        # failure or halve down to the first pass; a given bound is probed, never crossed.
        first = probe(rate_min or rate_max or base_rate(cfg))
        low, high = (first, None) if first.passed else (None, first)
        if low is not None:
            if rate_max is not None:
                high = probe(rate_max) if rate_max > low.rate else low
                if high.passed:
                    return result(high, None)     # capacity at least rate_max
            for _ in range(MAX_DOUBLINGS if high is None else 0):
                p = probe(low.rate * 2)
                if not p.passed:
                    high = p
                    break
                low = p
            if high is None:
                return result(low, None)
        else:
            for _ in range(0 if rate_min is not None else MAX_DOUBLINGS):
                p = probe(high.rate / 2)
                if p.passed:
                    low = p
                    break
                high = p
            if low is None:
                return result(None, high)         # even the lowest rate probed fails
        while high.rate - low.rate > tol * high.rate:
            p = probe((low.rate + high.rate) / 2)
            if p.passed:
                low = p
            else:
                high = p
    return result(low, high)


def _check(cfg, criterion, attainment, seeds, tol, rate_min, rate_max, growth_limit) -> None:
    if criterion not in CRITERIA:
        raise ConfigError(f"--criterion must be one of: {', '.join(CRITERIA)}; got {criterion!r}")
    if criterion == "slo" and not cfg.slo:
        raise ConfigError("--slo is required for the slo criterion (ttft=MS,tpot=MS,e2el=MS); "
                          "or use --criterion stable")
    if not 0 < attainment <= 1:
        raise ConfigError(f"--attainment must be in (0, 1], got {attainment}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be an integer >= 1, got {seeds!r}")
    if not 0 < tol < 1:
        raise ConfigError(f"--tol must be in (0, 1), got {tol}")
    if not growth_limit > 1:
        raise ConfigError(f"--growth-limit must be > 1, got {growth_limit}")
    for name, v in (("--rate-min", rate_min), ("--rate-max", rate_max)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must be a positive number, got {v}")
    if rate_min is not None and rate_max is not None and rate_min >= rate_max:
        raise ConfigError(f"--rate-min {rate_min} must be below --rate-max {rate_max}")


def _probe(ex, cfg: RunConfig, rate: float, seeds: list[int], criterion: str,
           target: float, growth_limit: float) -> Probe:
    from simulator.sweep.points import at_rate
    from simulator.sweep.store import WALL_TIME_COLUMNS
    from simulator.sweep.worker import PointTask
    tasks = []
    for i, seed in enumerate(seeds):
        c = at_rate(cfg, rate)
        c = RunConfig(**{**c.to_dict(), "seed": seed, "timeline": False, "out": None})
        tasks.append(PointTask(i, f"rate{rate:g}-seed{seed}", c.to_dict()))
    by_seed: dict[int, dict] = {}
    for outcome in ex.map_unordered(tasks):
        seed = seeds[outcome.index]
        if outcome.status != "ok":
            # Bad input (a trace that does not load, an unknown policy parameter) stays a user
            # error (exit 2); anything else is a simulation error (exit 3).
            error = ConfigError if outcome.user_error else PolicyViolation
            raise error(f"capacity: the run at rate {rate:g} req/s, seed {seed} failed: "
                        f"{outcome.error}")
        by_seed[seed] = {"seed": seed, **{k: v for k, v in outcome.summary.items()
                                          if isinstance(v, SCALARS) and k not in WALL_TIME_COLUMNS}}
    runs = [by_seed[s] for s in seeds]
    growth = pooled_growth([(r["latency_first_half_ms"], r["latency_second_half_ms"])
                            for r in runs])
    stable = (all(r["unfinished"] == 0 for r in runs) and not math.isnan(growth)
              and growth <= growth_limit)
    attainment = None
    if cfg.slo:
        counts = [r["completed"] + r["rejected"] + r["unfinished"] for r in runs]
        met = sum(r["slo_attainment"] * n for r, n in zip(runs, counts))
        attainment = met / sum(counts) if sum(counts) else math.nan
    passed = stable and (criterion == "stable" or attainment >= target)
    return Probe(rate, passed, stable, growth, attainment, runs)
