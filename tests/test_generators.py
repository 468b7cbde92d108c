"""Synthetic workload generators: arrival processes and length distributions match their laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from traces import (Deterministic, EmpiricalLengths, Fixed, Gamma, IndependentLengths,
                    PiecewisePoisson, Poisson, RequestType, TypeMixture, Uniform, WorkloadError,
                    parse_length, parse_type, synthesize)

N = 20_000


def rng(seed=0):
    return np.random.default_rng(seed)


def test_poisson_gaps_are_exponential():
    t = Poisson(5.0).sample(rng(), n=N)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 5.0)).pvalue > 1e-3
    assert (np.diff(t) >= 0).all()


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_gaps_have_the_requested_rate_and_cv(cv):
    t = Gamma(4.0, cv).sample(rng(1), n=N * 5)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert gaps.mean() == pytest.approx(1 / 4.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_deterministic_arrivals_are_evenly_spaced():
    t = Deterministic(4.0).sample(rng(), n=8)
    assert np.allclose(t, np.arange(1, 9) / 4.0)


def test_duration_cuts_the_same_stream():
    a = Poisson(3.0).sample(rng(2), until=100.0)
    b = Poisson(3.0).sample(rng(2), n=len(a))
    assert np.array_equal(a, b) and a[-1] < 100.0
    assert len(a) == pytest.approx(300, abs=4 * math.sqrt(300))


def test_piecewise_rate_per_segment_and_pauses():
    proc = PiecewisePoisson(((10.0, 8.0), (5.0, 0.0), (5.0, 2.0)))
    assert proc.mean_rate == pytest.approx((80 + 10) / 20)
    t = proc.sample(rng(3), until=2000.0)
    phase = np.mod(t, 20.0)
    assert not ((phase >= 10) & (phase < 15)).any()          # the pause has no arrivals
    cycles = 100
    busy = ((phase < 10).sum() / (10 * cycles), (phase >= 15).sum() / (5 * cycles))
    assert busy[0] == pytest.approx(8.0, rel=0.05)
    assert busy[1] == pytest.approx(2.0, rel=0.1)


def test_length_distributions():
    r = rng(4)
    assert (Fixed(7).sample(r, 5) == 7).all()
    u = Uniform(3, 6).sample(r, N)
    assert set(np.unique(u)) == {3, 4, 5, 6}
    pairs = [(10, 1), (20, 2), (30, 3)]
    p, o, _ = EmpiricalLengths.from_pairs(pairs).sample(r, N)
    assert set(zip(p.tolist(), o.tolist())) == set(pairs)      # pairs stay together
    assert np.bincount(p // 10)[1:] / N == pytest.approx([1 / 3] * 3, abs=0.02)


def test_type_mixture_is_the_superposition_of_poisson_streams():
    types = (RequestType("short", 512, 20, 8.4), RequestType("long", 512, 50, 3.6))
    w = synthesize(Poisson(12.0), TypeMixture(types), seed=5, num_requests=N)
    f = w.frame
    assert (f.label == "short").mean() == pytest.approx(0.7, abs=0.015)
    assert (f[f.label == "long"].output_tokens == 50).all()
    # Thinning a Poisson stream gives a Poisson stream of the type's rate.
    long_t = f[f.label == "long"].arrival_s.to_numpy()
    gaps = np.diff(long_t)
    assert stats.kstest(gaps, "expon", args=(0, 1 / 3.6)).pvalue > 1e-3


def test_parsers_and_bad_values():
    assert parse_length("512") == Fixed(512)
    assert parse_length("128:1024") == Uniform(128, 1024)
    assert parse_type("chat=p512d20:8.4") == RequestType("chat", 512, 20, 8.4)
    for bad in ("0", "abc", "-3", "5:3", "0:4"):
        with pytest.raises(WorkloadError, match="output_len"):
            parse_length(bad, "output_len")
    for make in (lambda: Poisson(0), lambda: Poisson(-1.0), lambda: Gamma(1.0, 0.0),
                 lambda: Deterministic(float("inf")), lambda: PiecewisePoisson(((5, 0.0),)),
                 lambda: parse_type("p512d0:3"), lambda: parse_type("p512d20:0")):
        with pytest.raises(WorkloadError):
            make()
    with pytest.raises(WorkloadError, match="seed"):
        synthesize(Poisson(1.0), IndependentLengths(Fixed(1), Fixed(1)), seed=-1, num_requests=1)
