"""The summary is one typed record (simulator.metrics.Summary) whichever source produced it, and
timeline rows are named (TimelineRow), the same for every engine."""

from __future__ import annotations

import pytest

from simulator.config import RunConfig
from simulator.metrics import (LATENCIES, SLO, TIMELINE_COLUMNS, SimulatedRun, Summary,
                               TimelineRow, summarize, timeline_table)
from simulator.runner import simulate
from simulator.vllm.bench import Record, bench_summary, requests_frame
from tests.simcase import requests, simulate as simulate_engine
from traces.request import Request

METRICS = ("completed", "rejected", "unfinished", "preemptions", "duration_s",
           "total_input_tokens", "total_output_tokens", "request_throughput",
           "output_throughput", "total_token_throughput")


def test_timeline_rows_are_named_and_are_the_table_s_columns():
    out = simulate_engine(requests((0.0, 100, 3), (0.0, 50, 2)))
    rows = out.raw.timeline
    assert rows and all(isinstance(r, TimelineRow) for r in rows)
    assert TimelineRow._fields == TIMELINE_COLUMNS
    first = rows[0]
    assert (first.start_s, first.prefill_tokens, first.prefill_requests,
            first.decode_requests) == (0.0, 150, 2, 0)
    table = timeline_table(rows)
    assert tuple(table.columns) == TIMELINE_COLUMNS
    assert table["prefill_tokens"].tolist() == [r.prefill_tokens for r in rows]
    assert list(timeline_table(None).columns) == list(TIMELINE_COLUMNS)


def test_a_run_s_summary_is_its_record_serialised_once():
    result = simulate(RunConfig(num_requests=30, seed=2, slo={"ttft_ms": 500}).validate())
    record = result.record
    assert isinstance(record, Summary) and isinstance(record.source, SimulatedRun)
    s = result.summary
    assert s == record.to_dict()
    assert {k: s[k] for k in METRICS} == {k: getattr(record, k) for k in METRICS}
    assert s["completed"] + s["rejected"] + s["unfinished"] == 30 == s["workload"]["requests"]
    # The base metrics are what summarize() computes from the same table.
    base = summarize(result.requests, preemptions=record.preemptions, slo=SLO(ttft_ms=500))
    assert base == {k: s[k] for k in base}
    for name in LATENCIES:
        assert s[f"mean_{name}"] == pytest.approx(
            result.requests.loc[result.requests.status == "completed", name].mean())
    assert s["slo"] == {"ttft_ms": 500} and 0 <= s["slo_attainment"] <= 1
    assert s["engine"] == "native" and "native" not in s   # no engine counters: no section


def test_a_live_run_has_the_simulator_s_keys_and_its_own():
    reqs = [Request(0, 0.0, 10, 3), Request(1, 0.5, 10, 2), Request(2, 1.0, 10, 2)]
    records = [Record(0, None, 0.0, 10, 3, sent_s=0.0, token_times=[0.1, 0.2, 0.4],
                      streamed_tokens=3, ended_s=0.4),
               Record(1, None, 0.5, 10, 2, sent_s=0.5, token_times=[0.7, 0.8],
                      streamed_tokens=2, ended_s=0.8),
               Record(2, None, 1.0, 10, 2, sent_s=1.0, error="HTTP 500: boom", ended_s=1.1)]
    frame = requests_frame(reqs, records)
    live = bench_summary(frame, records, None, url="http://127.0.0.1:1", model="m",
                         workload={"source": "test"}, requests=3, seed=0)
    simulated = simulate(RunConfig(num_requests=3).validate()).summary
    shared = [k for k in simulated if k in live]
    assert set(METRICS) <= set(shared)
    assert live["completed"] == 2 and live["failed"] == 1 and live["errors"] == {"HTTP 500": 1}
    # inter-token gaps in ms: 100, 200 (request 0) and 100 (request 1)
    assert live["mean_itl_ms"] == pytest.approx(400 / 3)
    assert live["source"] == "live-server" and live["workload"]["requests"] == 3
