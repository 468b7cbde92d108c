"""The live-server replay client against a local streaming stub of /v1/completions.

The stub (aiohttp, 127.0.0.1, started by the test) streams one SSE chunk per token: the first
after TTFT_S, the next ones ITL_S apart, then a usage chunk and [DONE]. Prompt lengths select
injected faults: 13 -> HTTP 500, 17 -> the connection drops after 3 tokens, 19 -> a slow first
token, 23 -> a stall past the client's timeout; malformed streams: 101 -> a data line that is
JSON but not an object, 103 -> ``choices`` a string, 107 -> a data line of 8 MiB (beyond the
HTTP client's line limit), 109 -> usage and [DONE] without a token, 113 -> a usage figure one
token above what was streamed, 127 -> a choice that is not an object, 131 -> two tokens in one
chunk (as vLLM's front end sends them when it falls behind). Asked for ``return_token_ids``, the
stub puts each chunk's token ids in it, as vLLM does.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ON_CI, ROOT, take_sigint

try:
    from aiohttp import web
except ImportError:   # the bench extra is missing
    if ON_CI:
        raise
    pytest.skip("aiohttp not installed (pip install -e '.[bench]')", allow_module_level=True)

from simulator.vllm.bench import (READ_BUFFER_BYTES, RECORDS, BenchOptions,  # noqa: E402
                                  MalformedStream, Record, Replayer, absorb, check_server,
                                  outcome, read_event, read_records, write_outputs)
from simulator.config import RunConfig  # noqa: E402
from traces.request import Request  # noqa: E402

TTFT_S, ITL_S, SLOW_TTFT_S, STALL_S = 0.06, 0.02, 0.5, 5.0
FAIL_500, DROP, SLOW, STALL = 13, 17, 19, 23
NOT_OBJECT, CHOICES_STR, LONG_LINE, NO_TOKEN, USAGE_OFF, CHOICE_INT = 101, 103, 107, 109, 113, 127
TWO_IN_ONE = 131
SEEN: list[dict] = []      # request bodies the stub received


async def tokenize(request):
    """A tokenizer that makes two tokens of every word."""
    body = await request.json()
    return web.json_response({"count": 2 * len(body["prompt"].split())})


async def models(request):
    return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model",
                                                           "owned_by": "vllm"}]})


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


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
    malformed = {NOT_OBJECT: lambda: b"data: [1, 2]\n\n",
                 CHOICES_STR: lambda: event({"choices": "oops"}),
                 LONG_LINE: lambda: b"data: " + b"x" * (2 * READ_BUFFER_BYTES + 1) + b"\n\n",
                 CHOICE_INT: lambda: event({"choices": [5]})}
    for i in range(0 if n_prompt == NO_TOKEN else n_out):
        if n_prompt == TWO_IN_ONE and i == 2:
            continue                           # sent with token 1
        if i:
            await asyncio.sleep(ITL_S)
        if n_prompt == DROP and i == 3:
            request.transport.close()          # the server goes away mid-stream
            return resp
        if n_prompt in malformed and i == 2:
            await resp.write(malformed[n_prompt]())
            continue
        ids = [i, i + 1] if n_prompt == TWO_IN_ONE and i == 1 else [i]
        choice = {"index": 0, "text": "".join(f" t{t}" for t in ids),
                  "finish_reason": "length" if ids[-1] == n_out - 1 else None}
        if body.get("return_token_ids"):
            choice["token_ids"] = ids
        await resp.write(event({"id": "cmpl-1", "object": "text_completion",
                                "model": body["model"], "choices": [choice]}))
    completion = n_out + (n_prompt == USAGE_OFF)
    await resp.write(event({"choices": [], "usage": {
        "prompt_tokens": n_prompt, "completion_tokens": completion,
        "total_tokens": n_prompt + completion}}))
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
    app.router.add_get("/v1/models", models)
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
    return opts, records, write_outputs(RunConfig(), opts, tmp_path, requests, records, {})


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
    # Tokens counted in the stream agree with the server's usage figure.
    assert (frame["output_tokens"] == 10).all() and (frame["usage_output_tokens"] == 10).all()
    assert summary["usage_disagreements"] == 0


def test_errors_are_recorded_per_request_and_the_run_goes_on(stub, tmp_path):
    url = stub
    reqs = [Request(0, 0.0, 40, 6), Request(1, 0.01, FAIL_500, 6), Request(2, 0.02, DROP, 6),
            Request(3, 0.03, SLOW, 6), Request(4, 0.04, STALL, 6), Request(5, 0.05, 41, 6)]
    _, records, summary = replay(url, reqs, tmp_path, timeout_s=1.0)
    frame = pd.read_csv(tmp_path / "requests.csv").set_index("request_id")
    assert list(frame["status"]) == ["completed", "failed", "failed", "completed", "failed",
                                     "completed"]
    # The error's kind is the code (as the summary's errors count it), the error the detail.
    assert frame.loc[1, "reject_reason"] == "HTTP 500"
    assert frame.loc[1, "reject_detail"].startswith("HTTP 500")
    assert "dropped" in frame.loc[2, "reject_detail"] or "Payload" in frame.loc[2, "reject_detail"]
    assert frame.loc[4, "reject_reason"] == "timeout"
    assert frame.loc[4, "reject_detail"].startswith("timeout")
    assert dict(frame["reject_reason"].value_counts()) == summary["errors"]
    assert frame.loc[3, "ttft_ms"] >= SLOW_TTFT_S * 1e3 - 1      # the slow first token
    assert frame.loc[3, "ttft_ms"] < SLOW_TTFT_S * 1e3 + 60
    assert summary["failed"] == 3 and summary["completed"] == 3
    assert sum(summary["errors"].values()) == 3 and summary["errors"]["HTTP 500"] == 1
    by_id = {r.request_id: r for r in records}
    assert len(by_id[2].token_times) == 3            # partial output of the dropped stream kept
    # bench.json records every request, the failed ones as vLLM bench does: no output tokens,
    # a latency of 0, the TTFT and gaps they got before failing, and their error.
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["completed"] == 3 and bench["failed"] == 3 and bench["num_prompts"] == 6
    for key in ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
                "queue_times", "generated_texts", "errors"):
        assert len(bench[key]) == 6, key
    assert bench["output_lens"] == [6, 0, 0, 6, 0, 6]
    assert [lat == 0 for lat in bench["latencies"]] == [False, True, True, False, True, False]
    assert bench["ttfts"][1] == 0 and bench["ttfts"][2] > 0 and len(bench["itls"][2]) == 2
    assert bench["errors"][1].startswith("HTTP 500") and bench["errors"][0] == ""
    assert bench["generated_texts"][0] == " t0 t1 t2 t3 t4 t5" and bench["generated_texts"][2] == ""
    assert bench["start_times"] == sorted(bench["start_times"])   # sent in arrival order


def test_interrupted_run_keeps_what_it_measured(stub, tmp_path):
    """Ctrl-C half way: exit 130, and the outputs hold every request finished so far."""
    url = stub
    out = tmp_path / "bench"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "bench", "--url", url, "--model", "stub",
         "--out", str(out), "-n", "40", "--rate", "10", "--arrival", "deterministic",
         "--prompt-len", "20", "--output-len", "5", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=take_sigint)
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
    # Written, and said to be partial: every request in bench.json, the unsent ones failed.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["completed"] == done
    assert set(manifest["files"]) == {RECORDS, "requests.csv", "summary.json", "bench.json",
                                      "config.json"}
    bench = json.loads((out / "bench.json").read_text())
    assert len(bench["errors"]) == 40 and bench["completed"] == done
    assert sum(e.startswith("not sent") for e in bench["errors"]) <= 40 - done


def test_a_killed_replay_never_looks_complete(stub, tmp_path):
    """kill -9 half way: the records measured so far stay, no manifest is written, and the
    folder counts as holding a run (which a next bench refuses without --replace)."""
    out = tmp_path / "bench"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "bench", "--url", stub, "--model", "stub",
         "--out", str(out), "-n", "40", "--rate", "10", "--arrival", "deterministic",
         "--prompt-len", "20", "--output-len", "5"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (
            (out / RECORDS).is_file() and len(read_records(out / RECORDS)) >= 3):
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    assert 3 <= len(read_records(out / RECORDS)) < 40
    assert not (out / "manifest.json").exists()
    from simulator.run_folder import previous_run
    assert out / RECORDS in previous_run(out)


def bench_cli(capsys, *args):
    """``servesim bench ARGS`` in this process: (exit status, stdout, stderr)."""
    from simulator.cli import main
    capsys.readouterr()
    rc = main(["bench", *map(str, args)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("flags, message", [
    (["--url", "localhost:1"], "--url must start with http:// or https://, got 'localhost:1'"),
    (["--url", "http://"], "--url 'http://' names no host"),
    (["--url", "http://127.0.0.1:99999"], "--url 'http://127.0.0.1:99999': Port out of range"),
    (["--url", "http://[::1"], "--url 'http://[::1': Invalid IPv6 URL"),
    (["--url", "http://h:8000/?x=1"], "without ? or #"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0.0"),
    (["--timeout", "nan"], "--timeout must be a positive number of seconds, got nan"),
    (["--timeout", "inf"], "--timeout must be a positive number of seconds, got inf"),
    (["--max-concurrency", "0"], "--max-concurrency must be a whole number >= 1, got 0"),
    (["--max-concurrency", "-2"], "--max-concurrency must be a whole number >= 1, got -2"),
    (["--out", ""], "out may not be empty"),
    (["--session-turns", "2"], "session_turns: servesim bench sends every request at its "
                               "arrival time and does not replay closed-loop sessions"),
])
def test_bench_rejects_bad_options_in_one_line_before_anything(capsys, tmp_path, flags,
                                                                 message):
    out = tmp_path / "never"
    args = {"--url": "http://127.0.0.1:9", "--model": "m", "--out": out, "-n": 2}
    args.update(dict(zip(flags[::2], flags[1::2])))
    proc = bench_cli(capsys, *[x for kv in args.items() for x in kv])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("servesim: error: ") and message in lines[0]
    assert not out.exists()


def test_an_unreachable_server_or_wrong_model_fails_before_the_run(stub, tmp_path, capsys):
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{free_port()}"
    proc = bench_cli(capsys, "--url", url, "--model", "stub", "--out", out, "-n", 3)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"servesim: error: --url {url}: cannot reach the server (Cannot connect to host "
        f"127.0.0.1:{url.rsplit(':', 1)[1]} ssl:default [Connect call failed "
        f"('127.0.0.1', {url.rsplit(':', 1)[1]})])"]
    assert not (out / RECORDS).exists()
    proc = bench_cli(capsys, "--url", stub, "--model", "other", "--out", out, "-n", 3)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"servesim: error: --model 'other': the server at {stub} serves stub"]
    assert not (out / RECORDS).exists()


def test_malformed_streams_fail_their_request_and_the_run_goes_on(stub, tmp_path):
    """Each malformed stream fails its own request with a line saying why; the others, before
    and after it, complete. A stream without a token is a failure; a usage figure that differs
    from the streamed count is kept beside it and flagged."""
    faults = [NOT_OBJECT, CHOICES_STR, LONG_LINE, CHOICE_INT, NO_TOKEN]
    reqs = [Request(0, 0.0, 40, 5)] + [Request(i + 1, 0.01 * (i + 1), n, 5)
                                        for i, n in enumerate(faults)] + \
        [Request(6, 0.06, USAGE_OFF, 5), Request(7, 0.07, 41, 5)]
    _, records, summary = replay(stub, reqs, tmp_path)
    frame = pd.read_csv(tmp_path / "requests.csv").set_index("request_id")
    assert list(frame["status"]) == ["completed"] + ["failed"] * 5 + ["completed"] * 2
    assert set(frame["reject_reason"].dropna()) == {"malformed", "stream"}
    reasons = frame["reject_detail"]
    assert reasons[1] == "malformed stream: a data line is JSON list, not an object"
    assert reasons[2] == "malformed stream: choices is str, not a list"
    assert reasons[3].startswith("malformed stream: a line longer than the HTTP client's limit")
    assert reasons[4] == "malformed stream: a choice is int, not an object"
    assert reasons[5] == "stream ended without a token"
    # The tokens streamed before the bad line are kept with the failed request.
    assert [len(r.token_times) for r in sorted(records, key=lambda r: r.request_id)][1:5] == \
        [2, 2, 2, 2]
    assert frame.loc[6, "output_tokens"] == 5 and frame.loc[6, "usage_output_tokens"] == 6
    assert summary["usage_disagreements"] == 1 and summary["completed"] == 3
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["output_lens"][6] == 6         # vLLM bench takes the server's figure


def test_tokens_are_counted_by_their_ids_where_the_server_sends_them(stub, tmp_path):
    """A chunk that carries two tokens counts two with vLLM's token ids (asked for when
    /v1/models says vLLM serves the model); without them it counts one, and the disagreement
    with the server's usage figure is flagged."""
    reqs = [Request(0, 0.0, TWO_IN_ONE, 6), Request(1, 0.0, 40, 6)]
    for with_ids in (True, False):
        out = tmp_path / str(with_ids)
        opts = BenchOptions(url=stub, model="stub", stream_token_ids=with_ids)
        asyncio.run(Replayer(reqs, opts, out).run())
        records = read_records(out / RECORDS)
        summary = write_outputs(RunConfig(), opts, out, reqs, records, {})
        frame = pd.read_csv(out / "requests.csv")
        assert list(frame["output_tokens"]) == ([6, 6] if with_ids else [5, 6])
        assert list(frame["usage_output_tokens"]) == [6, 6]
        assert summary["usage_disagreements"] == (0 if with_ids else 1)
        by_id = {r.request_id: r for r in records}
        assert len(by_id[0].token_times) == 5 and by_id[0].text == " t0 t1 t2 t3 t4 t5"
    assert SEEN[-1].get("return_token_ids") is None and SEEN[-3]["return_token_ids"] is True
    assert asyncio.run(check_server(BenchOptions(url=stub, model="stub"))) is True


def test_a_second_bench_never_mixes_with_the_first(stub, tmp_path, capsys):
    """The same folder again: refused, the first run untouched; with --replace its files go
    first and the folder holds the second run only, complete per its manifest."""
    out = tmp_path / "out"
    common = ("--url", stub, "--model", "stub", "--out", out, "--arrival", "deterministic",
              "--rate", 50, "--prompt-len", 20, "--output-len", 3, "--json")
    first = bench_cli(capsys, *common, "-n", 4)
    assert first.returncode == 0, first.stderr
    (out / "notes.txt").write_text("mine")          # not a run file: left alone
    (out / "timeline.csv").write_text("stale")      # a run file of the earlier run: removed

    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    before = digest()
    again = bench_cli(capsys, *common, "-n", 2)
    assert again.returncode == 2
    err = again.stderr.strip().splitlines()
    assert len(err) == 1 and f"--out {out} holds another run" in err[0] and "--replace" in err[0]
    assert digest() == before
    replaced = bench_cli(capsys, *common, "-n", 2, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["requests"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(manifest["files"] +
                                                           ["manifest.json", "notes.txt"])
    assert len(pd.read_csv(out / "requests.csv")) == 2
    assert len(read_records(out / RECORDS)) == 2


def test_a_killed_run_is_refused_too_and_an_unwritable_folder_is_one_line(stub, tmp_path,
                                                                          capsys):
    out = tmp_path / "killed"
    out.mkdir()
    (out / RECORDS).write_text("")                   # what a kill -9 during the replay leaves
    (out / ".summary.json.x1.tmp").write_text("{")   # and during the write phase
    proc = bench_cli(capsys, "--url", stub, "--model", "stub", "--out", out, "-n", 1)
    assert proc.returncode == 2 and "holds another run (records.jsonl, .summary.json.x1.tmp)" \
        in proc.stderr
    proc = bench_cli(capsys, "--url", stub, "--model", "stub", "--out", out, "-n", 1, "--replace",
                     "--prompt-len", 20, "--output-len", 3)
    assert proc.returncode == 0, proc.stderr
    assert not (out / ".summary.json.x1.tmp").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = bench_cli(capsys, "--url", stub, "--model", "stub", "--out", blocker / "sub", "-n", 1)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"servesim: error: --out {blocker / 'sub'}: cannot write there (Not a directory)"]


def strict_json(path):
    """JSON as a strict reader takes it: NaN and Infinity are refused."""
    def refuse(name):
        raise AssertionError(f"{path.name} holds {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_no_nan_in_any_json_when_everything_fails(stub, tmp_path):
    reqs = [Request(i, 0.0, FAIL_500, 4) for i in range(3)]
    _, _, summary = replay(stub, reqs, tmp_path)
    assert summary["completed"] == 0
    for name in ("summary.json", "bench.json", "config.json", "manifest.json"):
        strict_json(tmp_path / name)
    assert strict_json(tmp_path / "summary.json")["request_throughput"] is None
    bench = strict_json(tmp_path / "bench.json")
    assert bench["mean_ttft_ms"] == 0 and bench["failed"] == 3    # vLLM writes 0 for no values


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
    # Each request was sent at its timestamp (the slack: event-loop wake-ups on a loaded
    # machine), and its first token came after the stub's TTFT.
    sent = frame["first_scheduled_s"].to_numpy()
    assert sent == pytest.approx([0.0, 0.1, 0.25], abs=0.05)
    assert (frame["first_token_s"] - frame["first_scheduled_s"] >= TTFT_S - 1e-3).all()
    assert json.loads(proc.stdout)["completed"] == 3
    # vLLM bench's traffic keys: the trace's own mean rate; no arrival process, no burstiness.
    bench = json.loads((out / "bench.json").read_text())
    assert bench["request_rate"] == pytest.approx(2 / 0.25) and bench["burstiness"] is None
    assert bench["max_concurrency"] is None and "mean_client_queue_time_ms" not in bench


@pytest.mark.parametrize("fields, expected", [
    ({}, 1.0), ({"arrival": "gamma", "cv": 2.0}, 0.25), ({"arrival": "gamma", "cv": 0.5}, 4.0),
    ({"arrival": "deterministic"}, "inf"),
])
def test_burstiness_is_the_gamma_shape_of_the_arrival_process(fields, expected):
    """vLLM's --burstiness is the shape k of gamma gaps, whose coefficient of variation is
    1/sqrt(k): k = 1/cv^2 (1 for Poisson; evenly spaced gaps are the limit k -> inf)."""
    from simulator.vllm.bench import burstiness
    assert burstiness(RunConfig(**fields)) == expected


def test_text_prompts_are_calibrated_with_the_servers_tokenizer(stub, tmp_path):
    """--prompt-mode text: the stub's tokenizer makes 2 tokens per word, so a 40-token prompt is
    sent as 20 words (and the stub, counting the same way, streams normally)."""
    opts = BenchOptions(url=stub, model="stub", prompt_mode="text")
    reqs = [Request(0, 0.0, 40, 3), Request(1, 0.0, 26, 3)]
    asyncio.run(Replayer(reqs, opts, tmp_path).run())
    sent = {len(b["prompt"].split()) for b in SEEN if isinstance(b["prompt"], str)}
    assert sent == {20, 13}
    assert all(r.ok for r in read_records(tmp_path / RECORDS))


def same(a, b) -> bool:
    """Equal JSON values, floats to 1e-12 (their sums may round in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            a == pytest.approx(b, rel=1e-12, abs=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def vllm_writer_result(monkeypatch, tmp_path, records, *, rate, max_concurrency, slo_ttft_ms,
                       duration):
    """What vLLM 0.32's own ``vllm bench serve --save-result --save-detailed`` writes for the
    same per-request outcomes: its main_async (argument parsing, benchmark, calculate_metrics,
    the file writer) runs with its HTTP request function replaced by one that hands back our
    outcomes, and its clock set to our dispatch times and duration."""
    serve = pytest.importorskip("vllm.benchmarks.serve")
    from types import SimpleNamespace
    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    ordered = sorted(records, key=lambda r: r.request_id)
    outputs = {str(i): RequestFuncOutput(**vars(outcome(r))) for i, r in enumerate(ordered)}

    async def request_func(request_func_input, session, pbar=None):
        return outputs[request_func_input.request_id]

    async def arrivals(input_requests, *args, **kwargs):   # dispatch without sleeping
        for request in input_requests:
            yield request, rate

    async def no_metrics(*args, **kwargs):
        return None

    clock = iter([0.0, *(r.dispatched_s for r in ordered), duration])
    monkeypatch.setattr(serve, "time", SimpleNamespace(perf_counter=lambda: next(clock),
                                                       time=time.time))
    monkeypatch.setitem(serve.ASYNC_REQUEST_FUNCS, "openai", request_func)
    monkeypatch.setattr(serve, "get_request", arrivals)
    monkeypatch.setattr(serve, "get_tokenizer", lambda *a, **k: object())
    monkeypatch.setattr(serve, "get_samples", lambda args, tokenizer: [
        SampleRequest(prompt=[1] * r.prompt_tokens, prompt_len=r.prompt_tokens,
                      expected_output_len=r.output_tokens, request_id=str(i))
        for i, r in enumerate(ordered)])
    monkeypatch.setattr(serve, "fetch_spec_decode_metrics", no_metrics)
    monkeypatch.setattr(serve, "fetch_diffusion_metrics", no_metrics)
    monkeypatch.setattr(serve, "freeze_gc_heap", lambda: None)
    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    args = parser.parse_args([
        "--base-url", "http://127.0.0.1:9", "--model", "stub", "--dataset-name", "random",
        "--num-prompts", str(len(ordered)), "--request-rate", str(rate),
        "--max-concurrency", str(max_concurrency), "--goodput", f"ttft:{slo_ttft_ms}",
        "--percentile-metrics", "ttft,tpot,itl,e2el,client_queue_time,"
                                "e2el_including_client_queue",
        "--metric-percentiles", "90,99", "--temperature", "0", "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
        "--result-filename", "vllm.json"])
    serve.main(args)
    return json.loads((tmp_path / "vllm.json").read_text())


def test_bench_json_equals_what_vllm_bench_writes(stub, tmp_path, monkeypatch):
    """Same outcomes, vLLM's writer and ours: the same keys, every list one entry per prompt,
    the same values (the date aside). The outcomes hold completed requests (one with 1 token,
    one whose usage figure differs from the stream), an HTTP error, a dropped stream that
    streamed 3 tokens first, a stream without a token, a slow first token past the TTFT goal,
    and waits for a --max-concurrency of 2."""
    reqs = [Request(0, 0.0, 40, 6), Request(1, 0.0, FAIL_500, 6), Request(2, 0.01, DROP, 6),
            Request(3, 0.01, SLOW, 4), Request(4, 0.02, NO_TOKEN, 5),
            Request(5, 0.02, USAGE_OFF, 5), Request(6, 0.03, 42, 1), Request(7, 0.2, 43, 8)]
    opts = BenchOptions(url=stub, model="stub", timeout_s=3.0, max_concurrency=2)
    asyncio.run(Replayer(reqs, opts, tmp_path).run())
    records = read_records(tmp_path / RECORDS)
    cfg = RunConfig(slo={"ttft_ms": 150.0})
    write_outputs(cfg, opts, tmp_path, reqs, records, {"mean_rate": 20.0})
    ours = json.loads((tmp_path / "bench.json").read_text())
    assert sum(r.dispatched_s < r.sent_s - 0.01 for r in records) >= 1   # some waited
    theirs = vllm_writer_result(monkeypatch, tmp_path, records, rate=20.0, max_concurrency=2,
                                slo_ttft_ms=150.0, duration=ours["duration"])
    assert sorted(ours) == sorted(theirs)
    for key in ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
                "queue_times", "generated_texts", "errors"):
        assert len(ours[key]) == len(reqs), key
    ours.pop("date"), theirs.pop("date")
    for key, value in theirs.items():
        assert same(ours[key], value), (key, ours[key], value)
    # The figures are not trivial: each kind of outcome is in them.
    assert ours["completed"] == 5 and ours["failed"] == 3
    assert ours["output_lens"] == [6, 0, 0, 4, 0, 6, 1, 8]
    assert 0 < ours["request_goodput"] < ours["request_throughput"]
    assert ours["mean_client_queue_time_ms"] > 0
    # vLLM counts a request in flight in every whole second it touches and the streamed tokens
    # per second (24 in all; the usage figures sum to 25).
    assert 3 <= ours["max_concurrent_requests"] <= 5
    assert 12 <= ours["max_output_tokens_per_s"] <= 24 and ours["total_output_tokens"] == 25


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4), max_leaves=12)
# Chunks shaped like completion events, with any value where a field should be.
chunks = st.fixed_dictionaries({}, optional={
    "choices": json_values | st.lists(st.fixed_dictionaries({}, optional={
        "text": json_values, "token_ids": json_values}) | json_values, max_size=3),
    "usage": json_values | st.fixed_dictionaries({}, optional={
        "completion_tokens": json_values, "prompt_tokens": json_values}),
    "error": json_values})


@settings(max_examples=400, deadline=None)
@given(line=st.binary(max_size=64) | st.builds(lambda v: b"data: " + json.dumps(v).encode(),
                                               json_values | chunks))
def test_any_stream_line_is_read_or_refused_as_malformed(line):
    """Whatever a line holds, reading it gives an event or a MalformedStream, nothing else;
    an accepted chunk leaves the record consistent (tokens only with a chunk time)."""
    rec = Record(0, None, 0.0, 4, 4)
    try:
        event = read_event(line)
        if isinstance(event, dict):
            absorb(event, rec, 1.0)
    except MalformedStream as e:
        assert str(e) and "\n" not in str(e)
        return
    assert len(rec.token_times) <= 1 and (rec.streamed_tokens == 0 or rec.token_times == [1.0])
    assert all(isinstance(v, int) and v >= 0 for v in (rec.usage_output_tokens,
                                                      rec.usage_prompt_tokens) if v is not None)
    assert isinstance(rec.text, str)
