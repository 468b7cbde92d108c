"""Capacity search against M/D/1, where the answers are closed forms.

Batch size 1 (max_num_seqs=1), prompt 1 and output 1 tokens, and a constant iteration time D
(linear cost c0 = D) make each request one iteration of D seconds served FCFS: an M/D/1 queue.
TTFT = waiting time Wq + D. Its distribution is Erlang's (1909):

    P(Wq <= t) = (1 - rho) sum_{k=0}^{floor(t/D)} (lambda (k D - t))^k / k! e^{lambda (t - k D)}

so the rate at which a fraction ``a`` of requests meets TTFT <= T solves
P(Wq <= T - D; lambda) = a; and latency stays bounded exactly when lambda < 1/D.
"""

from __future__ import annotations

import math

import pytest
from scipy.optimize import brentq

from simulator.cli import main
from simulator.config import build_config
from simulator.sweep.capacity import capacity_search

D = 0.1          # seconds per iteration
SEEDS = 3
N = 20_000       # requests per seed: long enough for the stability criterion near 1/D


def md1_wait_cdf(t: float, lam: float, d: float) -> float:
    rho = lam * d
    return (1 - rho) * sum((lam * (k * d - t)) ** k / math.factorial(k) * math.exp(lam * (t - k * d))
                           for k in range(int(math.floor(t / d)) + 1))


def md1_config(**extra):
    return build_config({}, dict(num_requests=N, prompt_len="1", output_len="1",
                                 cost_model="linear", cost_params={"c0": D},
                                 policy_params={"max_num_seqs": 1}, timeline=False, **extra))


def test_erlang_formula_matches_its_known_values():
    lam = 5.0   # (the alternating sum loses precision for t >> D at high load: stay moderate)
    assert md1_wait_cdf(0.0, lam, D) == pytest.approx(1 - lam * D)       # P(no wait) = 1 - rho
    assert md1_wait_cdf(1.5, lam, D) == pytest.approx(1.0, abs=1e-6)
    # Its mean (integral of the survival function) is Pollaczek-Khinchine's rho D / (2 (1 - rho)).
    step = D / 200
    mean = sum(1 - md1_wait_cdf((i + 0.5) * step, lam, D) for i in range(int(1.5 / step))) * step
    assert mean == pytest.approx(lam * D * D / (2 * (1 - lam * D)), rel=1e-3)


def test_slo_capacity_matches_md1_within_the_bisection_tolerance():
    ttft_ms, target, tol = 200.0, 0.5, 0.02
    exact = brentq(lambda lam: md1_wait_cdf(ttft_ms / 1e3 - D, lam, D) - target, 0.1, 1 / D - 1e-6)
    cfg = md1_config(rate=4.0, slo={"ttft_ms": ttft_ms})
    r = capacity_search(cfg, criterion="slo", attainment=target, seeds=SEEDS, tol=tol, workers=2)
    assert r.low.passed and not r.high.passed
    assert r.high.rate - r.low.rate <= tol * r.high.rate
    # The capacity lies in the bracket, up to the sampling noise of the attainment estimate
    # (0.5% of the rate with 3 x 20k requests, measured over seeds): allow 1%.
    assert r.low.rate <= exact * 1.01 and r.high.rate >= exact * 0.99
    assert r.capacity == r.low.rate
    assert abs(r.capacity - exact) <= tol * r.high.rate + 0.01 * exact
    # Every probe above the bracket failed and every probe below passed.
    assert all(p.passed == (p.rate <= r.low.rate) for p in r.probes)


def test_stable_criterion_finds_lambda_star_near_one_over_d():
    tol = 0.02
    cfg = md1_config(rate=4.0)
    r = capacity_search(cfg, criterion="stable", seeds=SEEDS, tol=tol, rate_min=5.0,
                        rate_max=20.0, workers=2)
    assert r.high.rate - r.low.rate <= tol * r.high.rate
    # lambda* = 1/D. A finite horizon sees a load just under 1/D still climbing to its
    # stationary backlog, so the estimate errs low, by at most 3% here (see stability.py).
    assert 0.97 / D <= r.capacity <= 1 / D
    assert r.high.rate >= 1 / D * 0.99
    # The bracketing runs are reported with their seeds.
    assert [run["seed"] for run in r.low.runs] == [0, 1, 2]
    assert r.low.growth <= 1.5 < r.high.growth


def test_capacity_cli_reports_the_bracket(capsys):
    rc = main(["capacity", "--prompt-len", "1", "--output-len", "1", "--cost-model", "linear",
               "--cost-param", "c0=0.1", "-p", "max_num_seqs=1", "-n", "2000", "--seeds", "2",
               "--criterion", "stable", "--rate-min", "2", "--rate-max", "40", "--tol", "0.1",
               "-j", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("lambda* (largest stable rate): ")
    assert "passes at" in out and "fails at" in out and "bracketing runs" in out


@pytest.mark.parametrize("args, words", [
    (["--rate", "5"], "give --slo"),
    (["--slo", "ttft=100", "--attainment", "1.5"], "--attainment must be a positive number up to 1"),
    (["--criterion", "stable", "--rate-min", "5", "--rate-max", "2"], "must be below"),
    (["--criterion", "stable", "--seeds", "0"], "--seeds must be"),
    (["--criterion", "stable", "--arrival", "piecewise", "--rate-schedule", "10:1"],
     "rate_schedule"),
    # Bad input found only when a probe runs (in a worker) is a user error too, not exit 3.
    (["--criterion", "stable", "-j", "1", "--trace", "/nonexistent/trace.csv"],
     "trace file /nonexistent/trace.csv does not exist"),
    (["--criterion", "stable", "-j", "1", "-n", "20", "-p", "bogus=1"],
     "unknown parameter 'bogus'"),
])
def test_capacity_bad_input_is_one_line_status_2(capsys, args, words):
    assert main(["capacity", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("servesim: error:") and "\n" not in err and words in err
