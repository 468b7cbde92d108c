"""Replay a workload against a live OpenAI-compatible server and measure it like the simulator.

Each request is sent at its arrival time (seconds from the start of the replay) to
``/v1/completions`` with streaming on, an exact-length prompt (token ids, or text calibrated
with the server's ``/tokenize`` endpoint) and ``max_tokens`` = its output length with
``ignore_eos``, as ``vllm bench serve`` does. From the stream's chunk times it records TTFT,
inter-token latencies, TPOT and end-to-end latency. HTTP errors, timeouts and dropped connections
are recorded per request (status ``failed`` with the error) and never stop the run.

Every finished request is appended at once to ``records.jsonl`` in the output folder, so an
interrupted replay keeps what it measured; ``finalize`` turns the records into the same
``requests.csv`` / ``summary.json`` as ``servesim run`` and a ``bench.json`` with the keys of
``vllm bench serve``'s result file.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scheduler.state import RequestState, Status
from simulator.errors import ConfigError
from simulator.metrics import SLO, LiveRun, Summary, requests_table
from traces.request import Request

RECORDS = "records.jsonl"
PROMPT_MODES = ("token-ids", "text")
FILLER_WORD = " hello"        # one token per word in the common Llama/GPT tokenizers


@dataclass
class BenchOptions:
    url: str
    model: str
    timeout_s: float = 600.0          # per request, from send to the last byte
    max_concurrency: int | None = None
    prompt_mode: str = "token-ids"
    seed: int = 0

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--url must start with http:// or https://, got {self.url!r}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ConfigError(f"--prompt-mode must be one of {', '.join(PROMPT_MODES)}")
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got "
                              f"{self.timeout_s!r}")
        self.url = self.url.rstrip("/")


@dataclass
class Record:
    """What the client saw of one request; times in seconds from the start of the replay."""

    request_id: int
    label: str | None
    arrival_s: float
    prompt_tokens: int
    output_tokens: int               # requested
    sent_s: float | None = None
    token_times: list = field(default_factory=list)   # arrival of each streamed token
    received_tokens: int = 0
    done_s: float | None = None
    error: str | None = None
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.done_s is not None


def prompt_ids(req: Request, seed: int) -> list[int]:
    """Distinct random token ids per request, so no two prompts share a cached prefix."""
    rng = np.random.default_rng([seed, req.request_id])
    return rng.integers(1000, 20000, size=req.prompt_tokens).tolist()


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
            async with aiohttp.ClientSession(connector=connector) as session:
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
                    if count:
                        self.words_per_token = 1000 / count
        except Exception:
            pass

    def _payload(self, req: Request) -> dict:
        if self.opts.prompt_mode == "token-ids":
            prompt = prompt_ids(req, self.opts.seed)
        else:
            prompt = FILLER_WORD * max(1, round(req.prompt_tokens * self.words_per_token))
        return {"model": self.opts.model, "prompt": prompt, "max_tokens": req.output_tokens,
                "min_tokens": req.output_tokens, "ignore_eos": True, "temperature": 0.0,
                "stream": True, "stream_options": {"include_usage": True}}

    async def _one(self, session, req: Request, limit) -> None:
        rec = self.records[req.request_id]
        delay = req.arrival_s - self._now()
        if delay > 0:
            await asyncio.sleep(delay)
        if limit is not None:
            async with limit:
                await self._send(session, req, rec)
        else:
            await self._send(session, req, rec)
        self._sink.write(json.dumps(asdict(rec)) + "\n")

    async def _send(self, session, req: Request, rec: Record) -> None:
        import aiohttp
        rec.sent_s = self._now()
        try:
            async with session.post(f"{self.opts.url}/v1/completions", json=self._payload(req),
                                    timeout=_timeout(self.opts.timeout_s)) as resp:
                rec.http_status = resp.status
                if resp.status != 200:
                    body = (await resp.text())[:200].replace("\n", " ")
                    rec.error = f"HTTP {resp.status}: {body}"
                    return
                usage = None
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        rec.done_s = self._now()
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        rec.error = f"stream error: {str(chunk['error'])[:200]}"
                        return
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    choices = chunk.get("choices") or []
                    if choices and (choices[0].get("text") or choices[0].get("finish_reason")
                                    is None):
                        rec.token_times.append(self._now())
                if rec.done_s is None:
                    rec.error = "stream ended without [DONE] (connection dropped)"
                    return
                rec.received_tokens = (usage or {}).get("completion_tokens") or \
                    len(rec.token_times)
        except asyncio.TimeoutError:
            rec.error = f"timeout after {self.opts.timeout_s:g} s"
        except aiohttp.ClientError as e:
            rec.error = f"{type(e).__name__}: {str(e)[:200]}"
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            rec.error = f"malformed stream: {str(e)[:200]}"
        finally:
            if rec.error is not None:
                rec.done_s = None
                rec.received_tokens = len(rec.token_times)


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
# From records to the run schema

def to_states(requests: list[Request], records: list[Record]) -> list[RequestState]:
    """One RequestState per workload request, as the simulator's engines produce them."""
    by_id = {r.request_id: r for r in records}
    states = []
    for req in requests:
        st = RequestState(req.request_id, req.arrival_s, req.prompt_tokens, req.output_tokens,
                          req.label)
        rec = by_id.get(req.request_id)
        if rec is not None:
            st.first_scheduled_s = rec.sent_s
            st.first_token_s = rec.token_times[0] if rec.token_times else None
            st.generated = rec.received_tokens
            if rec.ok:
                st.status, st.finished_s = Status.FINISHED, rec.done_s
                st.output_tokens = rec.received_tokens or req.output_tokens
            elif rec.error is not None:
                st.status, st.reject_reason = Status.REJECTED, rec.error
        states.append(st)
    return states


def requests_frame(requests: list[Request], records: list[Record]) -> pd.DataFrame:
    frame = requests_table(to_states(requests, records))
    # A request the server failed is not a policy rejection: its own status, the error kept.
    failed = frame["status"] == "rejected"
    frame.loc[failed, "status"] = "failed"
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
        itl_ms=np.concatenate(itls) if itls else np.array([]),
        url=url, model=model, workload=workload, requests=requests, seed=seed)
    return Summary.of(frame, slo=slo, source=live).to_dict()


def vllm_bench_json(summary: dict, records: list[Record], opts: BenchOptions,
                    workload_meta: dict) -> dict:
    """The result file of ``vllm bench serve`` (its key names and units)."""
    ok = sorted((r for r in records if r.ok), key=lambda r: r.request_id)
    out = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "backend": "vllm", "endpoint_type": "openai", "label": None,
        "model_id": opts.model, "tokenizer_id": opts.model,
        "num_prompts": len(records),
        "request_rate": workload_meta.get("mean_rate") or "inf",
        "burstiness": 1.0, "max_concurrency": opts.max_concurrency,
        "duration": summary["duration_s"], "completed": summary["completed"],
        "failed": summary["failed"],
        "total_input_tokens": summary["total_input_tokens"],
        "total_output_tokens": summary["total_output_tokens"],
        "request_throughput": summary["request_throughput"],
        "request_goodput": summary.get("request_goodput"),
        "output_throughput": summary["output_throughput"],
        "total_token_throughput": summary["total_token_throughput"],
        "input_lens": [r.prompt_tokens for r in ok],
        "output_lens": [r.received_tokens for r in ok],
        "ttfts": [r.token_times[0] - r.sent_s for r in ok if r.token_times],
        "itls": [np.diff(r.token_times).tolist() for r in ok],
        "generated_texts": ["" for _ in ok],
        "errors": [r.error or "" for r in sorted(records, key=lambda r: r.request_id)],
    }
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p90", "p99"):
            out[f"{stat}_{metric}_ms"] = summary.get(f"{stat}_{metric}_ms")
    return out
