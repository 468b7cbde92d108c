"""Engine-side step timings of a real vLLM engine, through servesim's scheduler plug-in.

vLLM's engine core runs each step as ``scheduler.schedule()``, then the model
(``execute_model`` / ``sample_tokens`` on the worker), then ``scheduler.update_from_output()``
(``vllm/v1/engine/core.py``, ``EngineCore.step``, 0.32). ``StepTimingMixin`` wraps those two
scheduler calls, so the time between them is the model execution of exactly the batch the
scheduler just built, measured inside the engine: no HTTP front end, no client, no
detokenisation. Each step becomes one ``StepRecord`` with the batch's shape (prefill chunks with
their context, decode KV lengths) read from the scheduled requests, and the durations of
``schedule()``, the model and ``update_from_output()``; their sum (``step_s``) is what a
simulated iteration stands for, and what the cost models are fitted to.

``TimedScheduler`` is servesim's synchronous plug-in (``ServesimScheduler``, any policy) with the
hook: pass it as ``--scheduler-cls simulator.vllm.steps.TimedScheduler`` to a live server and
set ``SERVESIM_STEP_LOG=FILE`` to get one JSON line per step and per request event (engine
arrival, first token, finish), which is how the front-end delay is measured.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from simulator.cost.base import BatchShape
from simulator.errors import ConfigError

ENV_STEP_LOG = "SERVESIM_STEP_LOG"
TIMED_SCHEDULER = "TimedScheduler"


# ------------------------------------------------------------------------------------------------
# One step, as the engine ran it

@dataclass
class StepRecord:
    """One engine step: when the model started (``time.time()``, the clock of vLLM's request
    arrival times); how long ``schedule()``, the model, and ``update_from_output()`` took
    (seconds); and the batch: prefill chunks as (tokens, context before) and decode KV lengths
    (including the token computed this step, as ``BatchShape`` counts them)."""
    start: float
    model_s: float
    schedule_s: float
    prefill: list = field(default_factory=list)
    decode_kv: list = field(default_factory=list)
    update_s: float = 0.0

    @property
    def step_s(self) -> float:
        """The step as the simulator's iteration: scheduling, model and output processing."""
        return self.schedule_s + self.model_s + self.update_s

    def shape(self) -> BatchShape:
        return BatchShape.of(prefill=[tuple(p) for p in self.prefill], decode_kv=self.decode_kv)


def batch_of(scheduled: dict, requests: dict) -> tuple[list, list]:
    """(prefill chunks, decode KV lengths) of a step, from the scheduler output's
    ``num_scheduled_tokens`` and the scheduler's requests *after* ``schedule()`` (which has
    already advanced each request's ``num_computed_tokens`` by its scheduled tokens)."""
    prefill, decode_kv = [], []
    for rid, n in scheduled.items():
        req = requests[rid]
        before = req.num_computed_tokens - n
        if n == 1 and before >= req.num_prompt_tokens:
            decode_kv.append(before + 1)
        else:
            prefill.append((n, before))
    return prefill, decode_kv


class StepTimingMixin:
    """Times each step between ``schedule()`` and ``update_from_output()``, and notes
    per-request engine events; appends them as JSON lines to ``$SERVESIM_STEP_LOG`` if set, and
    keeps the steps in ``step_records`` if ``keep_step_records``.

    Only for synchronous scheduling (one batch in flight), which vLLM's CPU platform forces;
    with async scheduling the next ``schedule()`` overlaps the model and the interval is not
    one batch's model time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # In memory only when asked (servesim profile): a long-running server logs to a file.
        self.keep_step_records = False
        self.step_records: list[StepRecord] = []
        self._pending: StepRecord | None = None
        self._model_t0 = 0.0
        path = os.environ.get(ENV_STEP_LOG)
        try:
            self._log = open(path, "a", buffering=1) if path else None   # a line per record
        except OSError as e:
            raise ConfigError(f"{ENV_STEP_LOG}={path}: cannot open ({e.strerror})") from None
        self._first_token_seen: set[str] = set()

    def _emit(self, kind: str, record: dict) -> None:
        if self._log is not None:
            self._log.write(json.dumps({"kind": kind, **record}) + "\n")

    def add_request(self, request) -> None:
        super().add_request(request)
        self._emit("arrival", {"request_id": request.request_id,
                               "arrival_time": request.arrival_time, "engine_time": time.time(),
                               "prompt_tokens": request.num_prompt_tokens})

    def schedule(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().schedule(*args, **kwargs)
        if out.total_num_scheduled_tokens:
            prefill, decode_kv = batch_of(out.num_scheduled_tokens, self.requests)
            self._model_t0 = time.perf_counter()
            self._pending = StepRecord(start=time.time(), model_s=0.0,
                                       schedule_s=self._model_t0 - t0,
                                       prefill=prefill, decode_kv=decode_kv)
        return out

    def update_from_output(self, scheduler_output, model_runner_output):
        rec, self._pending = self._pending, None
        t0 = time.perf_counter()
        if rec is not None:
            rec.model_s = t0 - self._model_t0
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if rec is not None:
            rec.update_s = time.perf_counter() - t0
            if self.keep_step_records:
                self.step_records.append(rec)
            self._emit("step", asdict(rec))
        now = time.time()
        for eco in outputs.values():
            for o in eco.outputs:
                if o.new_token_ids and o.request_id not in self._first_token_seen:
                    self._first_token_seen.add(o.request_id)
                    self._emit("first_token", {"request_id": o.request_id, "engine_time": now})
                if o.finish_reason is not None:
                    self._first_token_seen.discard(o.request_id)
                    self._emit("finish", {"request_id": o.request_id, "engine_time": now})
        return outputs


_CLASSES: dict[str, type] = {}


def __getattr__(name: str):
    if name == TIMED_SCHEDULER:
        if not _CLASSES:
            from simulator.vllm.plugin import scheduler_class

            class TimedScheduler(StepTimingMixin, scheduler_class(async_scheduling=False)):
                """servesim's synchronous plug-in with per-step engine timings
                (run the server with --no-async-scheduling)."""

            TimedScheduler.__module__ = __name__
            _CLASSES[TIMED_SCHEDULER] = TimedScheduler
        return _CLASSES[TIMED_SCHEDULER]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_step_log(path: str | Path) -> dict[str, list[dict]]:
    """The records of a ``$SERVESIM_STEP_LOG`` file grouped by kind (step, arrival,
    first_token, finish)."""
    out: dict[str, list[dict]] = {"step": [], "arrival": [], "first_token": [], "finish": []}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"step log {p} does not exist")
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.setdefault(rec.pop("kind"), []).append(rec)
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise ConfigError(f"step log {p}, line {i}: not a step-log record")
    return out
