"""The live-server replay client against a local streaming stub of /v1/completions.

The stub (aiohttp, 127.0.0.1, started by the test) streams one SSE chunk per token: the first
after TTFT_S, the next ones ITL_S apart. Prompt lengths select injected faults: 13 -> HTTP 500,
17 -> the connection drops after 3 tokens, 19 -> a slow first token, 23 -> a stall past the
client's timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from tests.conftest import ON_CI, ROOT

try:
    from aiohttp import web
except ImportError:   # the bench extra is missing
    if ON_CI:
        raise
    pytest.skip("aiohttp not installed (pip install -e '.[bench]')", allow_module_level=True)

from simulator.vllm.bench import RECORDS, BenchOptions, Replayer, read_records  # noqa: E402
from simulator.cli.live import finalize  # noqa: E402
from simulator.config import RunConfig  # noqa: E402
from traces.request import Request  # noqa: E402

TTFT_S, ITL_S, SLOW_TTFT_S, STALL_S = 0.06, 0.02, 0.5, 5.0
FAIL_500, DROP, SLOW, STALL = 13, 17, 19, 23
SEEN: list[dict] = []      # request bodies the stub received


async def tokenize(request):
    """A tokenizer that makes two tokens of every word."""
    body = await request.json()
    return web.json_response({"count": 2 * len(body["prompt"].split())})


async def completions(request):
    body = await request.json()
    prompt = body["prompt"]
    n_prompt = len(prompt) if isinstance(prompt, list) else 2 * len(prompt.split())
    n_out = int(body["max_tokens"])
    SEEN.append(body)
    if n_prompt == FAIL_500:
        return web.Response(status=500, text="injected failure")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep({SLOW: SLOW_TTFT_S, STALL: STALL_S}.get(n_prompt, TTFT_S))
    for i in range(n_out):
        if i:
            await asyncio.sleep(ITL_S)
        if n_prompt == DROP and i == 3:
            request.transport.close()          # the server goes away mid-stream
            return resp
        chunk = {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                 "choices": [{"index": 0, "text": f" t{i}",
                              "finish_reason": "length" if i == n_out - 1 else None}]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out,
             "total_tokens": n_prompt + n_out}
    await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def stub():
    """The stub server in a thread with its own event loop; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/tokenize", tokenize)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def replay(url, requests, tmp_path, timeout_s=2.0):
    opts = BenchOptions(url=url, model="stub", timeout_s=timeout_s)
    asyncio.run(Replayer(requests, opts, tmp_path).run())
    records = read_records(tmp_path / RECORDS)
    return opts, records, finalize(RunConfig(), opts, tmp_path, requests, records, {})


def test_measured_ttft_and_tpot_match_the_stub(stub, tmp_path):
    url = stub
    reqs = [Request(i, 0.05 * i, 32 + i, 10) for i in range(8)]
    _, records, summary = replay(url, reqs, tmp_path)
    frame = pd.read_csv(tmp_path / "requests.csv")
    assert (frame["status"] == "completed").all() and summary["completed"] == 8
    # Stub sleeps are lower bounds; the slack allows for a loaded 2-core machine.
    assert frame["ttft_ms"].between(TTFT_S * 1e3 - 1, TTFT_S * 1e3 + 40).all()
    assert frame["tpot_ms"].between(ITL_S * 1e3 - 1, ITL_S * 1e3 + 8).all()
    expected_e2e = (TTFT_S + 9 * ITL_S) * 1e3
    assert frame["e2el_ms"].between(expected_e2e - 1, expected_e2e + 60).all()
    assert summary["mean_itl_ms"] == pytest.approx(ITL_S * 1e3, abs=6)
    # The requests were exact: prompt lengths in token ids, max_tokens with ignore_eos.
    sent = sorted(SEEN[-8:], key=lambda b: len(b["prompt"]))
    assert [len(b["prompt"]) for b in sent] == [32 + i for i in range(8)]
    assert all(b["max_tokens"] == 10 and b["ignore_eos"] and b["stream"] for b in sent)
    # Sends followed the arrival schedule.
    assert (frame["queue_ms"] < 30).all()


def test_errors_are_recorded_per_request_and_the_run_goes_on(stub, tmp_path):
    url = stub
    reqs = [Request(0, 0.0, 40, 6), Request(1, 0.01, FAIL_500, 6), Request(2, 0.02, DROP, 6),
            Request(3, 0.03, SLOW, 6), Request(4, 0.04, STALL, 6), Request(5, 0.05, 41, 6)]
    _, records, summary = replay(url, reqs, tmp_path, timeout_s=1.0)
    frame = pd.read_csv(tmp_path / "requests.csv").set_index("request_id")
    assert list(frame["status"]) == ["completed", "failed", "failed", "completed", "failed",
                                     "completed"]
    assert frame.loc[1, "reject_reason"].startswith("HTTP 500")
    assert "dropped" in frame.loc[2, "reject_reason"] or "Payload" in frame.loc[2, "reject_reason"]
    assert frame.loc[4, "reject_reason"].startswith("timeout")
    assert frame.loc[3, "ttft_ms"] >= SLOW_TTFT_S * 1e3 - 1      # the slow first token
    assert frame.loc[3, "ttft_ms"] < SLOW_TTFT_S * 1e3 + 60
    assert summary["failed"] == 3 and summary["completed"] == 3
    assert sum(summary["errors"].values()) == 3 and summary["errors"]["HTTP 500"] == 1
    by_id = {r.request_id: r for r in records}
    assert len(by_id[2].token_times) == 3            # partial output of the dropped stream kept
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["completed"] == 3 and bench["failed"] == 3
    assert len(bench["ttfts"]) == 3 and bench["errors"][1].startswith("HTTP 500")
    for key in ("request_throughput", "output_throughput", "mean_ttft_ms", "p99_tpot_ms",
                "median_itl_ms", "mean_e2el_ms", "input_lens", "output_lens", "itls"):
        assert key in bench


def test_interrupted_run_keeps_what_it_measured(stub, tmp_path):
    """Ctrl-C half way: exit 130, and the outputs hold every request finished so far."""
    url = stub
    out = tmp_path / "bench"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "bench", "--url", url, "--model", "stub",
         "--out", str(out), "-n", "40", "--rate", "10", "--arrival", "deterministic",
         "--prompt-len", "20", "--output-len", "5", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 60
    while time.time() < deadline:        # wait until some requests have finished
        if (out / RECORDS).is_file() and len(read_records(out / RECORDS)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    frame = pd.read_csv(out / "requests.csv")
    done = int((frame["status"] == "completed").sum())
    assert len(frame) == 40 and 5 <= done < 40
    assert (frame["status"] == "unfinished").sum() == 40 - done
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == done


def test_bench_rejects_a_bad_url_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "simulator", "bench", "--url", "localhost:1",
                           "--model", "m", "--out", "/tmp/never", "-n", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "servesim: error: --url must start with http:// or https://, got 'localhost:1'"]


def test_bench_replays_a_trace_file_at_its_timestamps(stub, tmp_path):
    """A vllm-bench timed trace (JSONL, ms timestamps) through the CLI: exact lengths and times."""
    trace = tmp_path / "trace.jsonl"
    rows = [(0, 24, 4), (100, 31, 6), (250, 40, 3)]
    trace.write_text("".join(json.dumps({"timestamp": t, "input_length": p, "output_length": o})
                             + "\n" for t, p, o in rows))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "simulator", "bench", "--url", stub, "--model",
                           "stub", "--trace", str(trace), "--out", str(out), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(out / "requests.csv")
    assert list(frame["prompt_tokens"]) == [24, 31, 40]
    assert list(frame["output_tokens"]) == [4, 6, 3]
    assert list(frame["arrival_s"]) == [0.0, 0.1, 0.25]
    assert (frame["status"] == "completed").all()
    # Each request was sent at its timestamp: first-token times keep the trace's spacing.
    first = frame["first_token_s"].to_numpy()
    assert first[1] - first[0] == pytest.approx(0.1, abs=0.03)
    assert json.loads(proc.stdout)["completed"] == 3


def test_text_prompts_are_calibrated_with_the_servers_tokenizer(stub, tmp_path):
    """--prompt-mode text: the stub's tokenizer makes 2 tokens per word, so a 40-token prompt is
    sent as 20 words (and the stub, counting the same way, streams normally)."""
    opts = BenchOptions(url=stub, model="stub", prompt_mode="text")
    reqs = [Request(0, 0.0, 40, 3), Request(1, 0.0, 26, 3)]
    asyncio.run(Replayer(reqs, opts, tmp_path).run())
    sent = {len(b["prompt"].split()) for b in SEEN if isinstance(b["prompt"], str)}
    assert sent == {20, 13}
    assert all(r.ok for r in read_records(tmp_path / RECORDS))
