"""MC-SF: against the hindsight-optimal schedule (integer program) on small instances, the
future-peak memory check, stop vs skip at the first misfit, and predicted lengths."""

import numpy as np

from experiments.paper.hindsight import (Job, brute_force_total_latency, mcsf_total_latency,
                                         optimal_total_latency, random_instance)
from scheduler.kvprojection import MemoryProfile
from simulator.cost.linear import LinearCost
from tests.fluid_helpers import run
from traces import Fixed, IndependentLengths, Poisson, Uniform, synthesize
from traces.request import Request


def test_integer_program_matches_brute_force():
    rng = np.random.default_rng(11)
    for _ in range(4):
        jobs = [Job(0, int(rng.integers(1, 4)), int(rng.integers(1, 4))) for _ in range(3)]
        opt, starts = optimal_total_latency(jobs, 6)
        assert opt == brute_force_total_latency(jobs, 6)
        assert opt == sum(p + j.output for p, j in zip(starts, jobs))


def test_mcsf_against_the_hindsight_optimum():
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(12):
        jobs = random_instance(rng, 6, 14)
        opt, _ = optimal_total_latency(jobs, 14)
        ratios.append(mcsf_total_latency(jobs, 14) / opt)
    ratios = np.array(ratios)
    print(f"MC-SF / optimal total latency: mean {ratios.mean():.3f}, max {ratios.max():.3f}")
    assert (ratios >= 1 - 1e-9).all()             # the optimum is a lower bound ...
    assert ratios.mean() < 1.15 and ratios.max() < 1.5   # ... and MC-SF stays close to it
    assert (ratios < 1 + 1e-9).sum() >= 3         # often exactly optimal


def test_known_instance_by_hand():
    # M = 5; a = (prompt 1, output 2), b = c = (prompt 3, output 1). Shortest first: b then c;
    # c does not fit next to b (3 + 3 > 5), so the "stop" scan admits only b at round 0; at
    # round 1 c and a (4, then 2 at round 2). Completions 1 + 2 + 3 = 6. The optimum runs a
    # beside b at round 0 (3 + 1 = 4, then 2 + 3 = 5 with c at round 1): 2 + 1 + 2 = 5, which
    # the "skip" scan finds too.
    jobs = [Job(0, 1, 2), Job(0, 3, 1), Job(0, 3, 1)]
    assert optimal_total_latency(jobs, 5) == (5.0, [0, 0, 1])
    assert mcsf_total_latency(jobs, 5) == 6
    assert mcsf_total_latency(jobs, 5, on_misfit="skip") == 5


def test_memory_profile_checks_every_future_peak():
    # Running: base 10 for 3 rounds -> KV 10, 11, 12. Capacity 20.
    prof = MemoryProfile(np.array([10.0]), np.array([3]), 20)
    assert prof.memory_at(0) == 10 and prof.memory_at(2) == 12 and prof.memory_at(3) == 0
    # A new request of base 7 for 2 rounds: peaks 10+7=17, 11+8=19 -> fits.
    assert prof.fits(7, 2)
    # base 7 for 3 rounds: at round 2, 12 + 9 = 21 > 20.
    assert not prof.fits(7, 3)
    # A long one of base 5 for 10 rounds: at the running one's peak (round 2) 12 + 7 = 19 and
    # its own at round 9: 14 -> fits; base 8: 12 + 10 = 22 -> no.
    assert prof.fits(5, 10) and not prof.fits(8, 10)


def test_stop_versus_skip_at_the_first_misfit():
    # Capacity 10 tokens, block 1. t=0: r0 (prompt 6, output 4) starts alone. Waiting, shortest
    # first: r1 (prompt 6, output 1) cannot fit next to r0; r2 (prompt 1, output 2) can.
    reqs = [Request(0, 0.0, 6, 4), Request(1, 0.5, 6, 1), Request(2, 0.5, 1, 2)]
    stop = run(reqs, "mcsf", {"on_misfit": "stop"}, cost=LinearCost(c0=1.0), kv_tokens=10)
    skip = run(reqs, "mcsf", {"on_misfit": "skip"}, cost=LinearCost(c0=1.0), kv_tokens=10)

    def first(r):
        return dict(zip(r.requests["request_id"], r.requests["first_scheduled_s"]))
    assert first(stop)[2] == first(stop)[1] == 4.0  # stop: r2 waits behind r1 until r0 ends
    assert first(skip)[2] == 1.0 < first(skip)[1]  # skip: r2 starts at round 1
    for r in (stop, skip):
        assert r.raw.preemptions == 0 and (r.requests["status"] == "completed").all()


def test_oracle_never_preempts_and_noisy_predictions_still_complete():
    w = synthesize(Poisson(30.0), IndependentLengths(Uniform(16, 200), Uniform(1, 120)), 2,
                   num_requests=800)
    reqs = list(w.requests())
    oracle = run(reqs, "mcsf", cost=LinearCost.paper(0.01, 2e-6), kv_tokens=4_000, block_size=16)
    assert oracle.raw.preemptions == 0
    assert (oracle.requests["status"] == "completed").all()
    assert oracle.peak_kv_tokens <= 4_000
    noisy = run(reqs, "mcsf", {"predictor": "noisy", "noise_sigma": 1.0},
                cost=LinearCost.paper(0.01, 2e-6), kv_tokens=4_000, block_size=16)
    assert (noisy.requests["status"] == "completed").all()
    # Shortest first: short requests finish sooner than under FCFS (vllm-v1) on the same load.
    fcfs = run(reqs, "vllm-v1", cost=LinearCost.paper(0.01, 2e-6), kv_tokens=4_000,
               block_size=16)
    assert oracle.summary["mean_e2el_ms"] < fcfs.summary["mean_e2el_ms"]


def test_a_request_too_big_for_the_projection_still_runs_alone():
    # Noisy over-prediction can make a request look bigger than the whole cache; alone it runs.
    w = synthesize(Poisson(1.0), IndependentLengths(Fixed(90), Fixed(10)), 0, num_requests=5)
    r = run(list(w.requests()), "mcsf", {"predictor": "noisy", "noise_sigma": 3.0},
            cost=LinearCost.paper(0.01, 1e-6), kv_tokens=100, block_size=1)
    assert (r.requests["status"] == "completed").all()
