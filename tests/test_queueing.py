"""Queueing sanity check: with batch size 1 and a constant iteration time the replica is an
M/D/1 queue, whose mean wait is known in closed form (Pollaczek-Khinchine):

    W_q = rho D / (2 (1 - rho)),   rho = lambda D,

and, by PASTA, a fraction 1 - rho of arrivals finds the server idle and waits not at all.
Each request (prompt 1, output 1) is exactly one iteration of D seconds under
LinearCost(c0=D). The estimate's standard error comes from batch means pooled over several
seeds (after a warm-up), so the tolerance is statistical, not a guess.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.config import RunConfig
from simulator.runner import simulate

D = 0.1                  # seconds per iteration
REQUESTS = 40_000        # per seed
SEEDS = (0, 1, 2)
WARMUP = 1_000           # requests dropped from the start of each run (empty-system bias)
BATCHES = 20             # batch means per seed
Z = 4.0                  # tolerance in standard errors (two-sided p ~ 6e-5)


def batch_means(values: np.ndarray) -> np.ndarray:
    return np.array([b.mean() for b in np.array_split(values[WARMUP:], BATCHES)])


def md1_runs(rho: float):
    for seed in SEEDS:
        cfg = RunConfig(policy="vllm-v1", policy_params={"max_num_seqs": 1},
                        cost_model="linear", cost_params={"c0": D}, rate=rho / D,
                        num_requests=REQUESTS, prompt_len="1", output_len="1", seed=seed)
        yield simulate(cfg.validate())


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_and_idle_probability(rho):
    waits, idle = [], []
    for result in md1_runs(rho):
        req, tl = result.requests, result.timeline
        # The model really is M/D/1: one request per iteration, every iteration D long,
        # and service (first schedule to completion) exactly D.
        assert (tl.prefill_requests + tl.decode_requests == 1).all()
        assert np.allclose(tl.duration_s, D, rtol=0, atol=1e-15)
        assert np.allclose(req.e2el_ms - req.queue_ms, D * 1e3, rtol=1e-9)
        q = req.sort_values("arrival_s").queue_ms.to_numpy() / 1e3
        waits.append(batch_means(q))
        idle.append(batch_means((q == 0).astype(float)))
    waits, idle = np.concatenate(waits), np.concatenate(idle)

    expected = rho * D / (2 * (1 - rho))
    mean, se = waits.mean(), waits.std(ddof=1) / math.sqrt(len(waits))
    assert se < 0.05 * expected                      # precise enough to mean something...
    assert abs(mean - expected) < Z * se, (mean, expected, se)
    mm1 = rho * D / (1 - rho)                        # ...and to tell M/D/1 from M/M/1
    assert abs(mean - mm1) > 3 * Z * se

    p0, se0 = idle.mean(), idle.std(ddof=1) / math.sqrt(len(idle))
    assert abs(p0 - (1 - rho)) < Z * se0, (p0, 1 - rho, se0)
