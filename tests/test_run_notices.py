"""``servesim run`` tells the user, once, on stderr, at the end: when more than
REJECT_NOTICE_FRACTION of the requests were rejected (per reason code, the summary counting each
code), and when the replica is overloaded (simulator/sweep/stability.py's criterion)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simulator.cli import main
from simulator.metrics import REJECT_NOTICE_FRACTION
from simulator.sweep.stability import (
    DEFAULT_GROWTH_LIMIT,
    OVERLOAD_MIN_REQUESTS,
    Load,
    overload_notice,
    run_load,
)

MAX_MODEL_LEN = 4096     # llama-2-7b's, the default model
KV = 2048                # --kv-capacity: a 3,000-token prompt fits max_model_len, not the cache


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def warnings_about(err: str, word: str) -> list[str]:
    return [line for line in err.splitlines()
            if line.startswith("servesim: warning: ") and word in line]


def test_a_run_rejecting_every_request_says_so_once_by_code(capsys):
    code, out, err = run(capsys, "run", "--prompt-len", "5000", "-n", "10", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["rejected"] == 10
    assert summary["rejected_by_reason"] == {"over_max_model_len": 10}
    [line] = warnings_about(err, "rejected")
    assert "10 of 10 requests (100.0%) were rejected: over_max_model_len 10" in line
    assert f"exceeds max_model_len {MAX_MODEL_LEN}" in line


def trace(tmp_path, normal: int, too_long: int, too_big: int, seed: int) -> str:
    """A Vidur-format trace of ``normal`` small requests, ``too_long`` over max_model_len and
    ``too_big`` over the KV cache, in a random order."""
    rows = [(64, 8)] * normal + [(5000, 10)] * too_long + [(3000, 10)] * too_big
    order = np.random.default_rng(seed).permutation(len(rows))
    frame = pd.DataFrame({"arrived_at": np.arange(len(rows)) * 0.05,
                          "num_prefill_tokens": [rows[i][0] for i in order],
                          "num_decode_tokens": [rows[i][1] for i in order]})
    path = tmp_path / f"trace-{normal}-{too_long}-{too_big}-{seed}.csv"
    frame.to_csv(path, index=False)
    return str(path)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(normal=st.integers(0, 60), too_long=st.integers(0, 6), too_big=st.integers(0, 6),
       seed=st.integers(0, 3))
# Around the 5% threshold: exactly 5% (silent), 4.9% (silent), 5.1% and 10% (said).
@example(normal=19, too_long=1, too_big=0, seed=0)
@example(normal=39, too_long=0, too_big=2, seed=1)
@example(normal=37, too_long=1, too_big=1, seed=2)
@example(normal=18, too_long=1, too_big=1, seed=3)
def test_the_rejection_notice_appears_iff_the_fraction_exceeds_the_threshold(
        capsys, tmp_path_factory, normal, too_long, too_big, seed):
    n = normal + too_long + too_big
    if n == 0:
        return
    path = trace(tmp_path_factory.mktemp("t"), normal, too_long, too_big, seed)
    out_dir = tmp_path_factory.mktemp("out") / "run"
    code, out, err = run(capsys, "run", "--trace", path, "--kv-capacity", str(KV), "--json",
                         "--out", str(out_dir))
    assert code == 0, err
    expected = {k: v for k, v in (("over_kv_capacity", too_big),
                                  ("over_max_model_len", too_long)) if v}
    summary = json.loads(out)
    assert summary["rejected"] == too_long + too_big
    assert summary["rejected_by_reason"] == expected
    requests = pd.read_csv(out_dir / "requests.csv")
    rejected = requests[requests["status"] == "rejected"]
    assert dict(rejected["reject_reason"].value_counts()) == expected
    assert rejected["reject_detail"].map(lambda d: isinstance(d, str) and d != "").all()
    assert requests.loc[requests["status"] != "rejected", "reject_reason"].isna().all()
    lines = warnings_about(err, "were rejected")
    rejected_n = too_long + too_big
    assert len(lines) == (1 if rejected_n > REJECT_NOTICE_FRACTION * n else 0)
    if lines:
        assert f"{rejected_n} of {n} requests" in lines[0]
        for code_name, count in expected.items():
            assert f"{code_name} {count}" in lines[0]


def test_an_overloaded_run_says_so_once_with_its_figures(capsys):
    code, _, err = run(capsys, "run", "--rate", "10")
    assert code == 0
    [line] = warnings_about(err, "overloaded")
    for words in ("offered 10.3 req/s", "served 3.73 req/s", "second half", "peak queue",
                  f"stable is at most {DEFAULT_GROWTH_LIMIT}x"):
        assert words in line
    # The notices come after the summary: the summary went to stdout, the notice once.
    assert err.count("overloaded") == 1


@pytest.mark.parametrize("args", [[], ["--rate", "1"], ["--policy", "sarathi", "-p",
                                                         "chunk_size=512", "--rate", "20",
                                                         "-n", "3000", "--prompt-len", "512",
                                                         "--output-len", "20"]])
def test_a_run_within_capacity_says_nothing(capsys, args):
    code, _, err = run(capsys, "run", *args)
    assert code == 0
    assert not warnings_about(err, "overloaded") and not warnings_about(err, "rejected")


def single_server(rho: float, n: int, seed: int) -> pd.DataFrame:
    """A FIFO queue with Poisson arrivals and one deterministic server (service 1 s) at load
    ``rho``, as a requests table: completion_i = max(arrival_i, completion_i-1) + 1 (Lindley)."""
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / rho, n))
    done = np.empty(n)
    free = 0.0
    for i, a in enumerate(arrivals):
        free = max(a, free) + 1.0
        done[i] = free
    e2el = (done - arrivals) * 1e3
    return pd.DataFrame({"status": "completed", "arrival_s": arrivals, "completion_s": done,
                         "e2el_ms": e2el, "ttft_ms": e2el})


@settings(max_examples=60, deadline=None)
@given(rho=st.one_of(st.floats(0.05, 0.5), st.floats(1.3, 5.0)),
       n=st.integers(OVERLOAD_MIN_REQUESTS, 2000), seed=st.integers(0, 2**16))
def test_the_overload_criterion_on_a_single_server_queue(rho, n, seed):
    """At load 1.3 and above the backlog grows linearly (growth -> 3, served rate 1/s): always
    overloaded; at 0.5 and below the queue is stable: never."""
    frame = single_server(rho, n, seed)
    load = run_load(frame)
    assert load is not None
    assert load.overloaded == (rho > 1), (load, load.growth)
    assert (overload_notice(frame) is not None) == (rho > 1)
    if rho > 1:
        assert 0.9 < load.served_rate <= 1.0 + 1e-9     # one server of rate 1, idle at most early


@given(n=st.integers(0, OVERLOAD_MIN_REQUESTS - 1), rho=st.floats(1.3, 5.0))
def test_fewer_completed_requests_than_the_minimum_are_never_judged(n, rho):
    frame = single_server(rho, max(n, 1), 0).iloc[:n]
    assert run_load(frame) is None and overload_notice(frame) is None


def test_rejected_requests_do_not_count_as_offered_load():
    """A stable queue with as many requests again rejected at arrival: not overloaded."""
    frame = single_server(0.4, 600, 1)
    rejected = frame.assign(status="rejected", completion_s=np.nan, e2el_ms=np.nan,
                            arrival_s=frame["arrival_s"] + 0.01)
    load = run_load(pd.concat([frame, rejected]).sort_values("arrival_s"))
    assert isinstance(load, Load) and not load.overloaded
    assert load.offered_rate == pytest.approx(load.served_rate, rel=0.05)
