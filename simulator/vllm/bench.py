"""Replay a workload against a live OpenAI-compatible server and measure it like the simulator.

Each request is sent at its arrival time (seconds from the start of the replay) to
``/v1/completions`` with streaming on, an exact-length prompt (token ids, or text calibrated
with the server's ``/tokenize`` endpoint) and ``max_tokens`` = its output length with
``ignore_eos``, as ``vllm bench serve`` does. Every streamed chunk that carries a choice is one
token: the client counts them and keeps the server's ``usage`` figure beside the count.

A request fails, and the run goes on, when the server answers with an HTTP error, the stream
breaks (a dropped connection, a timeout, a line beyond the HTTP client's limit, a data line that
is not a JSON object or whose ``choices`` is not a list of objects, an error event), ends
without ``[DONE]``, or carries no token at all.

Every finished request is appended at once to ``records.jsonl`` in the output folder, so an
interrupted replay keeps what it measured; ``write_outputs`` turns the records into the same
``requests.csv`` / ``summary.json`` as ``servesim run`` and a ``bench.json`` equal to
``vllm bench serve``'s result file (see ``vllm_result``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from scheduler.state import RequestState, Status
from simulator.errors import ConfigError
from simulator.metrics import SLO, LiveRun, Summary, requests_table
from traces.errors import ServesimError
from traces.request import Request

RECORDS = "records.jsonl"
PROMPT_MODES = ("token-ids", "text")
FILLER_WORD = " hello"        # one token per word in the common Llama/GPT tokenizers
ERROR_CHARS = 200             # an error message is cut to this many characters
# aiohttp refuses a line longer than twice its read buffer. The first chunk of a vLLM stream
# with token ids echoes the prompt's ids (about 7 bytes a token): 4 MiB buffers take prompts of
# a million tokens, and a longer line fails its request.
READ_BUFFER_BYTES = 4 << 20

# bench.json is the file of
#   vllm bench serve --save-result --save-detailed --metric-percentiles 90,99 \
#     --percentile-metrics ttft,tpot,itl,e2el,client_queue_time,e2el_including_client_queue
# (the last two are only written with --max-concurrency, as vLLM does).
VLLM_PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
VLLM_PERCENTILES = (90, 99)


@dataclass
class BenchOptions:
    url: str
    model: str
    timeout_s: float = 600.0          # per request, from send to the last byte
    max_concurrency: int | None = None
    prompt_mode: str = "token-ids"
    seed: int = 0
    # Ask for each chunk's token ids (vLLM's return_token_ids), so that a chunk carrying several
    # tokens counts as many; set when the server says it is vLLM. Without them, one per chunk.
    stream_token_ids: bool = False

    def __post_init__(self):
        check_url(self.url)
        if self.prompt_mode not in PROMPT_MODES:
            raise ConfigError(f"--prompt-mode must be one of {', '.join(PROMPT_MODES)}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s)
                and self.timeout_s > 0):
            raise ConfigError(f"--timeout must be a positive number of seconds, got "
                              f"{self.timeout_s!r}")
        if self.max_concurrency is not None and not (
                isinstance(self.max_concurrency, int) and self.max_concurrency >= 1):
            raise ConfigError(f"--max-concurrency must be a whole number >= 1, got "
                              f"{self.max_concurrency!r}")
        self.url = self.url.rstrip("/")


def check_url(url: str) -> None:
    """An http(s) URL with a host and a valid port, or one line saying what is wrong."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must start with http:// or https://, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port                      # raises on a port that is not a number in range
    except ValueError as e:
        raise ConfigError(f"--url {url!r}: {e}") from None
    if not parts.hostname:
        raise ConfigError(f"--url {url!r} names no host")
    if parts.query or parts.fragment:
        raise ConfigError(f"--url {url!r}: give the server's base URL, without ? or #")


@dataclass
class Record:
    """What the client saw of one request; times in seconds from the start of the replay."""

    request_id: int
    label: str | None
    arrival_s: float
    prompt_tokens: int               # requested
    output_tokens: int               # requested
    dispatched_s: float | None = None   # when the replay let it go (its arrival, as kept)
    sent_s: float | None = None      # when it went out (after any --max-concurrency wait)
    token_times: list = field(default_factory=list)   # arrival of each chunk with a choice
    streamed_tokens: int = 0         # tokens in those chunks (their token ids, else one each)
    text: str = ""
    usage_prompt_tokens: int | None = None   # the server's usage figures, when it sent them
    usage_output_tokens: int | None = None
    ended_s: float | None = None     # when the stream ended ([DONE]) or the failure was seen
    error: str | None = None
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ended_s is not None

    @property
    def usage_disagrees(self) -> bool:
        """The server's completion_tokens differ from the tokens counted in the stream."""
        return self.ok and self.usage_output_tokens is not None and \
            self.usage_output_tokens != self.streamed_tokens


class MalformedStream(ServesimError, ValueError):
    """A stream the client cannot read as OpenAI completion events."""


def prompt_ids(req: Request, seed: int) -> list[int]:
    """Distinct random token ids per request, so no two prompts share a cached prefix."""
    rng = np.random.default_rng([seed, req.request_id])
    return rng.integers(1000, 20000, size=req.prompt_tokens).tolist()


async def check_server(opts: BenchOptions) -> bool:
    """Before the run: the server answers, and serves ``opts.model`` when it lists its models
    (``/v1/models``); one line otherwise. A server without that endpoint is not refused.
    True when the listing says the model is served by vLLM (``owned_by``)."""
    import aiohttp
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{opts.url}/v1/models", timeout=_timeout(10)) as resp:
                listing = await resp.json(content_type=None) if resp.status == 200 else None
    except asyncio.TimeoutError:
        raise ConfigError(f"--url {opts.url}: no answer from the server within 10 s") from None
    except aiohttp.ClientError as e:
        raise ConfigError(f"--url {opts.url}: cannot reach the server "
                          f"({_one_line(str(e) or type(e).__name__)})") from None
    except ValueError:                      # a body that is not JSON: no listing to check
        listing = None
    served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] \
        if isinstance(listing, dict) and isinstance(listing.get("data"), list) else []
    if served and opts.model not in served:
        raise ConfigError(f"--model {opts.model!r}: the server at {opts.url} serves "
                          f"{', '.join(map(str, served))}")
    return any(isinstance(m, dict) and m.get("id") == opts.model and m.get("owned_by") == "vllm"
               for m in listing["data"]) if served else False


class Replayer:
    def __init__(self, requests: list[Request], opts: BenchOptions, out_dir: Path):
        self.requests = requests
        self.opts = opts
        self.out_dir = out_dir
        self.records: dict[int, Record] = {
            r.request_id: Record(r.request_id, r.label, r.arrival_s, r.prompt_tokens,
                                 r.output_tokens) for r in requests}
        self.words_per_token = 1.0
        self._sink = None
        self._t0 = 0.0

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    async def run(self) -> list[Record]:
        import aiohttp
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._sink = open(self.out_dir / RECORDS, "w", buffering=1)   # line-buffered
        limit = asyncio.Semaphore(self.opts.max_concurrency) if self.opts.max_concurrency \
            else None
        connector = aiohttp.TCPConnector(limit=0)   # the load, not the client, sets concurrency
        try:
            async with aiohttp.ClientSession(connector=connector,
                                             read_bufsize=READ_BUFFER_BYTES) as session:
                if self.opts.prompt_mode == "text":
                    await self._calibrate(session)
                self._t0 = time.perf_counter()
                await asyncio.gather(*(self._one(session, r, limit) for r in self.requests))
        finally:
            self._sink.close()
        return list(self.records.values())

    async def _calibrate(self, session) -> None:
        """Words per token of the server's tokenizer (1 if it has no /tokenize endpoint)."""
        probe = FILLER_WORD * 1000
        try:
            async with session.post(f"{self.opts.url}/tokenize",
                                    json={"model": self.opts.model, "prompt": probe},
                                    timeout=_timeout(30)) as resp:
                if resp.status == 200:
                    count = (await resp.json()).get("count")
                    if isinstance(count, int) and count > 0:
                        self.words_per_token = 1000 / count
        except Exception:   # no usable /tokenize: keep one word per token
            pass

    def _payload(self, req: Request) -> dict:
        if self.opts.prompt_mode == "token-ids":
            prompt = prompt_ids(req, self.opts.seed)
        else:
            prompt = FILLER_WORD * max(1, round(req.prompt_tokens * self.words_per_token))
        payload = {"model": self.opts.model, "prompt": prompt, "max_tokens": req.output_tokens,
                   "min_tokens": req.output_tokens, "ignore_eos": True, "temperature": 0.0,
                   "stream": True, "stream_options": {"include_usage": True}}
        if self.opts.stream_token_ids:
            payload["return_token_ids"] = True
        return payload

    async def _one(self, session, req: Request, limit) -> None:
        rec = self.records[req.request_id]
        delay = req.arrival_s - self._now()
        if delay > 0:
            await asyncio.sleep(delay)
        rec.dispatched_s = self._now()
        if limit is not None:
            async with limit:
                await self._send(session, req, rec)
        else:
            await self._send(session, req, rec)
        self._sink.write(json.dumps(asdict(rec)) + "\n")

    async def _send(self, session, req: Request, rec: Record) -> None:
        import aiohttp
        from aiohttp.http_exceptions import LineTooLong
        rec.sent_s = self._now()
        try:
            async with session.post(f"{self.opts.url}/v1/completions", json=self._payload(req),
                                    timeout=_timeout(self.opts.timeout_s)) as resp:
                rec.http_status = resp.status
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}: {_one_line(await resp.text())}"
                    return
                done = False
                async for line in resp.content:
                    event = read_event(line)
                    if event is DONE:
                        done = True
                        break
                    if event is not None:
                        absorb(event, rec, self._now())
                if not done:
                    rec.error = "stream ended without [DONE] (connection dropped)"
                elif not rec.streamed_tokens:
                    rec.error = "stream ended without a token"
        except asyncio.TimeoutError:
            rec.error = f"timeout after {self.opts.timeout_s:g} s"
        except LineTooLong as e:
            rec.error = f"malformed stream: a line longer than the HTTP client's limit of " \
                        f"{e.args[1]} bytes"
        except MalformedStream as e:
            rec.error = f"malformed stream: {e}"
        except aiohttp.ClientError as e:
            rec.error = f"{type(e).__name__}: {_one_line(str(e))}"
        except Exception as e:   # whatever else breaks one request must not lose the others
            rec.error = f"client error: {type(e).__name__}: {_one_line(str(e))}"
        finally:
            rec.ended_s = self._now()


DONE = object()     # the ``data: [DONE]`` event


def read_event(line: bytes):
    """One line of a server-sent event stream: a completion chunk (a dict), ``DONE``, or None
    for lines that carry no data (blank lines, comments, other fields)."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return DONE
    try:
        chunk = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedStream(f"a data line is not JSON ({e})") from None
    if not isinstance(chunk, dict):
        raise MalformedStream(f"a data line is JSON {type(chunk).__name__}, not an object")
    return chunk


def absorb(chunk: dict, rec: Record, now: float) -> None:
    """One completion chunk into the record: a token (a chunk with a choice, as vLLM bench
    counts them, whatever its text), the server's usage, or an error event."""
    if chunk.get("error"):
        raise MalformedStream(f"error event: {_one_line(str(chunk['error']))}")
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise MalformedStream(f"choices is {type(choices).__name__}, not a list")
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise MalformedStream(f"a choice is {type(choice).__name__}, not an object")
        text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise MalformedStream(f"a choice's text is {type(text).__name__}, not a string")
        ids = choice.get("token_ids")
        if ids is not None and not isinstance(ids, list):
            raise MalformedStream(f"a choice's token_ids is {type(ids).__name__}, not a list")
        rec.token_times.append(now)
        rec.streamed_tokens += 1 if ids is None else len(ids)
        rec.text += text or ""
    usage = chunk.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise MalformedStream(f"usage is {type(usage).__name__}, not an object")
        rec.usage_output_tokens = _count(usage, "completion_tokens")
        rec.usage_prompt_tokens = _count(usage, "prompt_tokens")


def _count(usage: dict, key: str) -> int | None:
    value = usage.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedStream(f"usage {key} is {value!r}, not a token count")
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())[:ERROR_CHARS]


def _timeout(seconds: float):
    import aiohttp
    return aiohttp.ClientTimeout(total=seconds)


def read_records(path: Path) -> list[Record]:
    """Records written so far (a line cut short by an interruption is skipped)."""
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(Record(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue
    return out


# ------------------------------------------------------------------------------------------------
# From records to the run schema (requests.csv, summary.json)

def to_states(requests: list[Request], records: list[Record]) -> list[RequestState]:
    """One RequestState per workload request, as the simulator's engines produce them: sent at
    ``first_scheduled_s``, completed at its last token, with the tokens counted in the stream."""
    by_id = {r.request_id: r for r in records}
    states = []
    for req in requests:
        st = RequestState(req.request_id, req.arrival_s, req.prompt_tokens, req.output_tokens,
                          req.label)
        rec = by_id.get(req.request_id)
        if rec is not None:
            st.first_scheduled_s = rec.sent_s
            st.first_token_s = rec.token_times[0] if rec.token_times else None
            st.generated = rec.streamed_tokens
            if rec.ok:
                st.status, st.finished_s = Status.FINISHED, rec.token_times[-1]
                st.output_tokens = rec.streamed_tokens
            elif rec.error is not None:
                st.status = Status.REJECTED
                st.reject_reason, st.reject_detail = error_kind(rec.error), rec.error
        states.append(st)
    return states


def requests_frame(requests: list[Request], records: list[Record]) -> pd.DataFrame:
    """The run's requests table, plus the server's own count of each request's output tokens
    (``usage_output_tokens``, empty where it sent none)."""
    frame = requests_table(to_states(requests, records))
    # A request the server failed is not a policy rejection: its own status, the error kept.
    failed = frame["status"] == "rejected"
    frame.loc[failed, "status"] = "failed"
    by_id = {r.request_id: r.usage_output_tokens for r in records}
    frame["usage_output_tokens"] = pd.array([by_id.get(i) for i in frame["request_id"]],
                                            dtype="Int64")
    return frame


def error_kind(error: str) -> str:
    return error.split(":")[0] if error.startswith("HTTP") else error.split(" ")[0].rstrip(":")


def bench_summary(frame: pd.DataFrame, records: list[Record], slo: SLO | None, *, url: str,
                  model: str, workload: dict, requests: int, seed: int) -> dict:
    """The summary of a live-server run: the simulator's record, with the server's failures
    and inter-token latencies."""
    errors = [r.error for r in records if r.error]
    itls = [np.diff(r.token_times) * 1e3 for r in records if r.ok and len(r.token_times) > 1]
    live = LiveRun(
        failed=int((frame["status"] == "failed").sum()),
        errors=dict(pd.Series([error_kind(e) for e in errors]).value_counts().astype(int))
        if errors else {},
        usage_disagreements=sum(r.usage_disagrees for r in records),
        itl_ms=np.concatenate(itls) if itls else np.array([]),
        url=url, model=model, workload=workload, requests=requests, seed=seed)
    return Summary.of(frame, slo=slo, source=live).to_dict()


# ------------------------------------------------------------------------------------------------
# bench.json: vllm bench serve's result file

@dataclass(frozen=True)
class Outcome:
    """One request as ``vllm bench serve``'s client records it (the fields, names and
    conventions of vLLM 0.32's ``RequestFuncOutput``, vllm/benchmarks/lib/
    endpoint_request_func.py): times from the request's send; a failed request keeps the TTFT
    and inter-token gaps it got before failing and a latency of 0; the prompt length is the
    server's usage figure when it sent one."""

    success: bool
    prompt_len: int
    output_tokens: int
    start_time: float | None      # None: never sent (an interrupted replay)
    ttft: float
    itl: list
    latency: float
    generated_text: str
    error: str
    client_queue_time: float | None


NOT_SENT = "not sent (the replay was interrupted)"


def outcome(rec: Record) -> Outcome:
    times = rec.token_times
    sent = rec.sent_s
    first = times[0] - sent if times else 0.0
    if rec.ok:
        error = ""
    else:
        error = rec.error or NOT_SENT
    return Outcome(
        success=rec.ok,
        prompt_len=rec.usage_prompt_tokens if rec.usage_prompt_tokens is not None
        else rec.prompt_tokens,
        # vLLM takes the server's usage figure (the stream's count where there is none).
        output_tokens=(rec.usage_output_tokens if rec.usage_output_tokens is not None
                       else rec.streamed_tokens) if rec.ok else 0,
        start_time=sent,
        ttft=first,
        itl=np.diff(times).tolist() if len(times) > 1 else [],
        latency=times[-1] - sent if rec.ok else 0.0,
        generated_text=rec.text if rec.ok else "",
        error=error,
        client_queue_time=sent - rec.dispatched_s if sent is not None else None,
    )


def replay_duration(records: list[Record]) -> float:
    """From the start of the replay to the end of its last request (vLLM bench's duration)."""
    ends = [r.ended_s for r in records if r.ended_s is not None]
    return max(ends) if ends else 0.0


def burstiness(cfg) -> float | str | None:
    """vLLM bench's burstiness (the gamma shape of the inter-arrival gaps) of the arrival
    process that timed the replay: 1 for Poisson (also piecewise), 1/cv^2 for gamma, "inf" for
    evenly spaced arrivals (as vLLM writes an infinite rate), None for a trace's own times."""
    if cfg.trace and not cfg.generate_arrivals:
        return None
    return {"gamma": 1.0 / cfg.cv ** 2, "deterministic": "inf"}.get(cfg.arrival, 1.0)


def vllm_result(records: list[Record], *, model: str, max_concurrency: int | None,
                request_rate: float | None, burstiness: float | str | None,
                slo: SLO | None = None, duration: float | None = None,
                date: str | None = None) -> dict:
    """The dict ``vllm bench serve --save-result --save-detailed`` (0.32) writes, with the
    percentile selection above, from the same per-request outcomes: key for key, one entry per
    request in each per-request list, in request order. Definitions follow
    vllm/benchmarks/serve.py (calculate_metrics, benchmark, main_async)."""
    outs = [outcome(r) for r in sorted(records, key=lambda r: r.request_id)]
    ok = [o for o in outs if o.success]
    dur = replay_duration(records) if duration is None else duration
    rate = request_rate if request_rate is not None and math.isfinite(request_rate) else "inf"
    output_lens = [o.output_tokens for o in outs]           # 0 for a failed request
    total_input = sum(o.prompt_len for o in ok)
    total_output = sum(output_lens)
    ttfts = [o.ttft for o in ok]
    e2els = [o.latency for o in ok]
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    itls = [gap for o in ok for gap in o.itl]

    def per_s(x):
        return x / dur if dur > 0 else None

    peak_tokens, peak_requests = peak_output_rate(ok)
    result = {
        "date": date or time.strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai", "backend": "openai", "label": None,
        "model_id": model, "tokenizer_id": model,
        "num_prompts": len(outs),
        "request_rate": rate, "burstiness": burstiness, "max_concurrency": max_concurrency,
        "duration": dur,
        "completed": len(ok), "failed": len(outs) - len(ok),
        "total_input_tokens": total_input, "total_output_tokens": total_output,
        "request_throughput": per_s(len(ok)),
        "request_goodput": per_s(goodput_count(ok, slo)) if slo is not None and slo.given
        else None,
        "output_throughput": per_s(total_output),
        "total_token_throughput": per_s(total_input + total_output),
        "input_lens": [o.prompt_len for o in outs],
        "output_lens": output_lens,
        "ttfts": [o.ttft for o in outs],
        "itls": [o.itl for o in outs],
        "latencies": [o.latency for o in outs],
        "start_times": [o.start_time for o in outs],
        "queue_times": [o.client_queue_time for o in outs],
        "generated_texts": [o.generated_text for o in outs],
        "errors": [o.error for o in outs],
        "max_output_tokens_per_s": peak_tokens,
        "max_concurrent_requests": peak_requests,
        "rtfx": 0.0,                    # audio input seconds per second: none here
    }
    for name, values in zip(VLLM_PERCENTILE_METRICS, (ttfts, tpots, itls, e2els)):
        result.update(vllm_stats(name, values))
    if max_concurrency is not None:     # the client-side wait, apart (vLLM: only with a cap)
        waits = [o.client_queue_time for o in ok]
        result.update(vllm_stats("client_queue_time", waits))
        if rate != "inf":
            result.update(vllm_stats("e2el_including_client_queue",
                                     [o.latency + w for o, w in zip(ok, waits)]))
    return result


def vllm_stats(name: str, seconds: list[float]) -> dict:
    """mean/median/std/pNN of a metric in ms, 0 when there are no values (as vLLM writes)."""
    values = seconds or 0
    out = {f"mean_{name}_ms": float(np.mean(values) * 1000),
           f"median_{name}_ms": float(np.median(values) * 1000),
           f"std_{name}_ms": float(np.std(values) * 1000)}
    for p in VLLM_PERCENTILES:
        out[f"p{p:g}_{name}_ms"] = float(np.percentile(values, p) * 1000)
    return out


def goodput_count(ok: list[Outcome], slo: SLO) -> int:
    """Completed requests within every given objective, as vLLM bench's --goodput counts them
    (limits inclusive; a 1-token output's TPOT counts as 0)."""
    def within(o: Outcome) -> bool:
        tpot = (o.latency - o.ttft) / (o.output_tokens - 1) if o.output_tokens > 1 else 0.0
        measured = {"ttft_ms": o.ttft, "tpot_ms": tpot, "e2el_ms": o.latency}
        return all(getattr(slo, k) is None or getattr(slo, k) / 1000 >= v
                   for k, v in measured.items())
    return sum(within(o) for o in ok)


def peak_output_rate(ok: list[Outcome]) -> tuple[float, int]:
    """vLLM bench's max_output_tokens_per_s and max_concurrent_requests: completed requests'
    tokens and requests in flight, per one-second bucket from the first send, at the peak."""
    if not ok:
        return 0.0, 0
    origin = min(o.start_time for o in ok)
    buckets = int(np.ceil(max(o.start_time + o.latency for o in ok) - origin)) + 1
    tokens = np.zeros(buckets)
    in_flight = np.zeros(buckets)
    for o in ok:
        t = o.start_time + o.ttft           # token times rebuilt as vLLM does, gap by gap
        for gap in [0.0, *o.itl]:
            t += gap
            if 0 <= int(t - origin) < buckets:
                tokens[int(t - origin)] += 1
        in_flight[int(o.start_time - origin):int(o.start_time + o.latency - origin) + 1] += 1
    return float(tokens.max()), int(in_flight.max())


# ------------------------------------------------------------------------------------------------
# The run's folder

OUTPUT_FILES = (RECORDS, "requests.csv", "summary.json", "bench.json", "config.json")


def write_outputs(cfg, opts: BenchOptions, out: Path, requests: list[Request],
                  records: list[Record], workload_meta: dict, interrupted: bool = False) -> dict:
    """requests.csv, summary.json, bench.json and config.json from the records, then the
    manifest (last: a folder without one holds a replay that did not finish writing)."""
    from simulator.run_folder import write_manifest
    from simulator.io import write_csv, write_json
    slo = SLO(**cfg.slo) if cfg.slo else None
    frame = requests_frame(requests, records)
    summary = bench_summary(frame, records, slo, url=opts.url, model=opts.model,
                            workload=workload_meta, requests=len(requests), seed=cfg.seed)
    # Requests never sent have no record: one (unsent) per request, so every list has n.
    by_id = {r.request_id: r for r in records}
    every = [by_id.get(q.request_id) or Record(q.request_id, q.label, q.arrival_s,
                                               q.prompt_tokens, q.output_tokens)
             for q in requests]
    bench = vllm_result(every, model=opts.model, max_concurrency=opts.max_concurrency,
                        request_rate=workload_meta.get("mean_rate"),
                        burstiness=burstiness(cfg), slo=slo)
    write_csv(out / "requests.csv", frame)
    write_json(out / "summary.json", summary)
    write_json(out / "bench.json", bench)
    write_json(out / "config.json", {**cfg.to_dict(), "bench": vars(opts)})
    write_manifest(out, "bench", list(OUTPUT_FILES),
                   status="interrupted" if interrupted else "complete",
                   requests=len(requests), completed=summary["completed"],
                   failed=summary["failed"])
    return summary
