"""Time a real vLLM engine's steps over a grid of batch shapes: the data ``servesim profile``
fits cost models to, on whatever platform vLLM runs (the CPU build here, a GPU elsewhere).
The timings come from the engine-side hook of ``simulator.vllm.steps``.

``profile_engine`` drives an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the
engine core, hence the scheduler and its records, lives in this process; the model worker is
still its own process) through the grid: a prefill of N tokens at context C is a prompt whose
first C tokens were computed by an earlier request with the same prefix (vLLM's prefix cache);
a decode of B requests at KV length L is B prompts of L - 1 tokens decoding together; a mixed
step is such a decode batch plus a new N-token prompt admitted into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from simulator.cost.base import BatchShape
from simulator.errors import ConfigError
from simulator.vllm.steps import TIMED_SCHEDULER, StepRecord


# ------------------------------------------------------------------------------------------------
# The grid of shapes

@dataclass(frozen=True)
class GridPoint:
    """A target batch: ``prefill`` tokens at ``context`` (a prefill chunk) and/or ``batch``
    decodes at KV length ``kv``. Both parts: a mixed step."""
    prefill: int = 0
    context: int = 0
    batch: int = 0
    kv: int = 0

    @property
    def kind(self) -> str:
        if self.prefill and self.batch:
            return "mixed"
        return "prefill" if self.prefill else "decode"

    @property
    def label(self) -> str:
        parts = []
        if self.prefill:
            parts.append(f"prefill {self.prefill}" + (f" @ctx {self.context}" if self.context
                                                      else ""))
        if self.batch:
            parts.append(f"decode {self.batch} x kv {self.kv}")
        return " + ".join(parts)

    def matches(self, rec: StepRecord) -> bool:
        """Whether a recorded step is this point's batch (decode KV lengths within the few
        steps a decode point runs)."""
        if self.prefill:
            if rec.prefill != [(self.prefill, self.context)]:
                return False
        elif rec.prefill:
            return False
        if len(rec.decode_kv) != self.batch:
            return False
        return all(self.kv <= kv <= self.kv + max(64, self.kv // 4) for kv in rec.decode_kv)


def engine_grid(max_tokens: int, max_batch: int, max_kv: int, block_size: int = 128
                ) -> list[GridPoint]:
    """Prefills of 16 .. ``max_tokens`` tokens (x4 steps) from scratch and two at a cached
    context (whole KV blocks: vLLM's prefix cache hits whole blocks); decodes of 1 ..
    ``max_batch`` requests (x4) at KV lengths up to ``max_kv``; mixed steps of a prefill
    joining decode batches."""
    def geometric(lo, hi):
        out, v = [], lo
        while v < hi:
            out.append(v)
            v *= 4
        return out + [hi]

    kvs = sorted({max(16, max_kv // 16), max(16, max_kv // 4), max_kv})
    points = [GridPoint(prefill=n) for n in geometric(16, max_tokens)]
    chunk = max(16, max_tokens // 8)
    contexts = {-(-kv // block_size) * block_size for kv in kvs[:2]}
    points += [GridPoint(prefill=chunk, context=c) for c in sorted(contexts)]
    for b in geometric(1, max_batch):
        points += [GridPoint(batch=b, kv=kv) for kv in kvs if b * kv <= 64 * max_kv]
    for b in sorted({max(1, max_batch // 4), max_batch}):
        points.append(GridPoint(prefill=chunk, batch=b, kv=kvs[0]))
    return points


# ------------------------------------------------------------------------------------------------
# Driving an in-process engine through the grid

@dataclass
class EngineOptions:
    model: str                      # a local model folder (servesim model tiny DIR)
    max_model_len: int = 4096
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 4096
    kv_cache_gib: int = 1           # VLLM_CPU_KVCACHE_SPACE on the CPU build
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    dtype: str = "bfloat16"
    block_size: int = 128           # the CPU platform's default (its attention wants x32)
    # The model worker in its own process, as in a server: on the CPU it is then pinned to one
    # core (vLLM's OpenMP binding), the other left to the engine core and the front end.
    executor: str = "mp"


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the duration (vLLM reads these while it builds the
    engine), then restore them: a caller's later servers must not inherit them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_engine(opts: EngineOptions):
    """An in-process ``LLMEngine`` with ``TimedScheduler`` running vllm-v1 (vLLM's own
    schedule, step for step) with prefix caching on."""
    if not Path(opts.model, "config.json").is_file():
        raise ConfigError(f"model folder {opts.model} has no config.json (make one with "
                          f"`servesim model tiny DIR`)")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    from simulator.vllm.plugin import PluginConfig, build_policy
    args = EngineArgs(model=opts.model, max_model_len=opts.max_model_len,
                      max_num_seqs=opts.max_num_seqs,
                      max_num_batched_tokens=opts.max_num_batched_tokens,
                      enforce_eager=opts.enforce_eager, dtype=opts.dtype,
                      block_size=opts.block_size, enable_prefix_caching=True,
                      gpu_memory_utilization=opts.gpu_memory_utilization,
                      scheduler_cls=f"simulator.vllm.steps.{TIMED_SCHEDULER}",
                      async_scheduling=False, distributed_executor_backend=opts.executor,
                      disable_log_stats=True)
    # In-process engine core: the scheduler, hence its step records, lives in this process.
    with environment(VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_HUB_OFFLINE="1",
                     VLLM_CPU_KVCACHE_SPACE=str(opts.kv_cache_gib)):
        engine = LLMEngine.from_engine_args(args)
    sched = engine_scheduler(engine)
    sched.configure(build_policy(PluginConfig(), sched.server_options()))
    sched.keep_step_records = True
    return engine


def engine_scheduler(engine):
    return engine.engine_core.engine_core.scheduler


class GridRunner:
    """Runs grid points on an engine and collects the steps that match each point."""

    def __init__(self, engine, vocab_size: int, seed: int = 0):
        import numpy as np
        self.engine = engine
        self.scheduler = engine_scheduler(engine)
        self.budget = self.scheduler.max_num_scheduled_tokens
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab_size
        self._ids = 0

    def _prompt(self, n: int) -> list[int]:
        # Random ids above the special tokens: distinct prompts, no accidental prefix hits.
        return self.rng.integers(4, self.vocab, n).tolist()

    def _add(self, prompt: list[int], max_tokens: int) -> str:
        from vllm import SamplingParams
        self._ids += 1
        rid = f"p{self._ids}"
        params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True,
                                detokenize=False)
        self.engine.add_request(rid, {"prompt_token_ids": prompt}, params)
        return rid

    def _drain(self, until=None) -> None:
        while self.engine.has_unfinished_requests():
            self.engine.step()
            if until is not None and until():
                return

    def _steps_since(self, mark: int) -> list[StepRecord]:
        return self.scheduler.step_records[mark:]

    def run(self, point: GridPoint, samples: int) -> list[StepRecord]:
        mark = len(self.scheduler.step_records)
        if point.kind == "prefill":
            for _ in range(samples):
                head = self._prompt(point.context)
                if point.context:
                    self._add(head, 1)        # computes and caches the context
                    self._drain()
                self._add(head + self._prompt(point.prefill), 1)
                self._drain()
        else:
            # Enough tokens that the first prompts prefilled are still decoding when the last
            # one joins them (the prefills take about batch x kv / budget steps).
            steps = samples + 8 + -(-point.batch * point.kv // self.budget)
            for _ in range(point.batch):
                self._add(self._prompt(point.kv - 1), steps)

            def decoding():
                recs = self.scheduler.step_records
                return bool(recs) and not recs[-1].prefill and len(recs[-1].decode_kv) \
                    == point.batch
            self._drain(until=decoding)
            for _ in range(samples):
                if point.kind == "mixed":
                    self._add(self._prompt(point.prefill), 1)
                self.engine.step()
            self._drain()
        return [r for r in self._steps_since(mark) if point.matches(r)]


def profile_engine(opts: EngineOptions, grid: list[GridPoint], samples: int, warmup: int = 2,
                   seed: int = 0, rounds: int = 3, progress=None) -> list[dict]:
    """One row per measured step: ``samples`` matching steps per grid point, gathered over
    ``rounds`` passes through the grid (so that a burst of load from other processes spreads
    over many points instead of spoiling one), after ``warmup`` discarded steps per point in
    the first pass (a shape's first runs pay for allocations and kernel set-up)."""
    config = json.loads(Path(opts.model, "config.json").read_text())
    engine = build_engine(opts)
    runner = GridRunner(engine, config["vocab_size"], seed)
    rounds = max(1, min(rounds, samples))
    taken: dict[GridPoint, list[StepRecord]] = {p: [] for p in grid}
    for r in range(rounds):
        quota = samples * (r + 1) // rounds - samples * r // rounds
        skip = warmup if r == 0 else 0
        for point in grid:
            recs = runner.run(point, quota + skip)[skip:][:quota]
            if not recs:
                raise ConfigError(f"grid point {point.label}: the engine ran no step of this "
                                  f"shape (its limits: {runner.budget} tokens per step)")
            taken[point] += recs
            if progress is not None and r == rounds - 1:
                progress(grid.index(point) + 1, len(grid), point, taken[point])
    rows = []
    for point, recs in taken.items():
        for rec in recs:
            shape = rec.shape()
            rows.append({"point": point.label, "kind": point.kind,
                         "prefill_tokens": shape.prefill_tokens,
                         "prefill_requests": shape.prefill_requests,
                         "prefill_context": sum(c for _, c in rec.prefill),
                         "decode_requests": shape.decode_requests,
                         "decode_kv_tokens": shape.decode_kv_tokens,
                         "kv_tokens": shape.kv_tokens,
                         "batch": json.dumps({"prefill": rec.prefill,
                                              "decode_kv": rec.decode_kv}),
                         "step_s": rec.step_s, "model_s": rec.model_s,
                         "schedule_s": rec.schedule_s, "update_s": rec.update_s})
    del engine
    return rows


# ------------------------------------------------------------------------------------------------
# From measured steps to cost models, and their per-shape errors

def measurements(rows: list[dict]):
    """Engine step rows -> one ``Measurement`` per grid point (median and min over its steps'
    ``step_s``: the whole step, which is what a simulated iteration stands for)."""
    from simulator.cost.measured import summarise
    return summarise((r["point"], StepRecord(0, 0, 0, **json.loads(r["batch"])).shape(),
                      r["step_s"]) for r in rows)


def fitted_models(points, spec, mlp_csv: Path | None = None, peaks: dict | None = None,
                  statistic: str = "median") -> dict:
    """The cost models scored against the measurements: the 4-term linear fit, the paper's
    d0 + d1 x KV fit, and, given an operator table and the device's measured peaks, the profile
    model (its per-iteration overhead fitted as the median residual) and the roofline with
    those peaks and its default efficiencies."""
    from simulator.cost.measured import fit_measurements
    from simulator.cost.profile import ProfileCost
    from simulator.cost.roofline import RooflineCost
    from simulator.hardware import GPUSpec

    models = {"linear": fit_measurements(points, statistic=statistic).cost,
              "linear_d0_d1": fit_measurements(points, ("c0", "c_kv"), statistic).cost}
    if mlp_csv is not None and peaks is not None:
        device = GPUSpec("measured-device", 0, peaks["peak_flops"], peaks["memory_bandwidth"])
        bare = ProfileCost(mlp_csv, spec, device, overhead_s=0.0)
        residual = statistics.median(getattr(p, f"{statistic}_s") - bare.iteration_time(p.shape)
                                     for p in points)
        models["profile"] = ProfileCost(mlp_csv, spec, device, overhead_s=max(0.0, residual))
        models["roofline"] = RooflineCost(spec, device)
    return models


def operator_profile(spec, out: Path, dtype: str, max_tokens: int, samples: int,
                     threads: int = 1) -> dict:
    """The per-operator table (``mlp.csv``) of the engine's model shape, with plain PyTorch
    layers on this machine's CPU (what ``--cost-model profile`` reads), and the CPU's peaks.

    Run before the engine starts, on ``threads`` threads (the CPU engine runs its model on one
    thread per core it binds; here one): OpenMP threads of a finished engine in the same
    process, or a second thread on a busy core, slow small bf16 matrix multiplies a hundredfold."""
    import torch
    torch.set_num_threads(threads)

    from simulator.vllm.layers import LlamaLayers, Timer, device_peaks, profile_operators, \
        token_grid, write_rows
    device = torch.device("cpu")
    layers = LlamaLayers(spec, device, getattr(torch, dtype), layers=1)
    rows = profile_operators(layers, Timer(device, warmup=2, repeats=samples),
                             token_grid(max_tokens))
    write_rows(out / "mlp.csv", rows)
    return device_peaks(device, getattr(torch, dtype))


def calibrate(opts: EngineOptions, out: Path, grid: list[GridPoint], samples: int,
              warmup: int, seed: int = 0, rounds: int = 3, statistic: str = "min",
              progress=None, refit: bool = False) -> dict:
    """Profile the engine over ``grid``, write steps.csv (every measured step),
    iterations.csv (per point), mlp.csv (operators), errors.csv (each model per point) and
    profile.json (fits, peaks, error summary, machine), and return profile.json's content.
    With ``refit``, reuse the steps, operator table and peaks already in ``out`` (fit and
    score again, e.g. to another statistic, without measuring)."""
    import platform

    from simulator.vllm.layers import write_rows
    from simulator.vllm.models import spec_of_folder
    spec = spec_of_folder(opts.model)
    out.mkdir(parents=True, exist_ok=True)
    if refit:
        rows, old = read_profile_folder(out)
        peaks = old["device_peaks"]
    else:
        peaks = operator_profile(spec, out, opts.dtype, max(g.prefill for g in grid) or 512,
                                 samples)
        rows = profile_engine(opts, grid, samples, warmup, seed, rounds, progress)
        write_rows(out / "steps.csv", rows)
    meta = {"model": asdict(spec), "model_folder": str(opts.model), "engine": asdict(opts),
            "vllm": _vllm_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "samples": samples, "warmup": warmup, "rounds": rounds, "device_peaks": peaks}
    if refit:
        meta.update({k: old[k] for k in ("engine", "vllm", "date", "samples", "warmup",
                                          "rounds")})
    meta.update(score(rows, spec, out, peaks, statistic))
    (out / "profile.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def score(rows: list[dict], spec, out: Path, peaks: dict, statistic: str) -> dict:
    """Fit the models to the measured steps, write iterations.csv and errors.csv, and return
    the fits and the error summary."""
    from simulator.cost.measured import error_summary, relative_errors
    from simulator.vllm.layers import write_rows
    points = measurements(rows)
    write_rows(out / "iterations.csv", [
        {"point": p.label, **{s: getattr(p.shape, s) for s in BatchShape.__slots__},
         "kv_tokens": p.shape.kv_tokens, "samples": p.samples, "min_s": p.min_s,
         "median_s": p.median_s} for p in points])
    models = fitted_models(points, spec, out / "mlp.csv", peaks, statistic)
    errors = relative_errors(points, models, statistic)
    write_rows(out / "errors.csv", errors)
    return {"fitted_to": statistic, "models": {name: m.describe() for name, m in models.items()},
            "errors": error_summary(errors, models)}


def read_profile_folder(out: Path) -> tuple[list[dict], dict]:
    """(steps.csv rows, profile.json) of an earlier ``servesim profile`` run in ``out``."""
    import csv
    for name in ("steps.csv", "mlp.csv", "profile.json"):
        if not (out / name).is_file():
            raise ConfigError(f"--refit: {out / name} is missing (run servesim profile first)")
    with open(out / "steps.csv") as f:
        rows = [{**r, "step_s": float(r["step_s"])} for r in csv.DictReader(f)]
    return rows, json.loads((out / "profile.json").read_text())


def _vllm_version() -> str | None:
    try:
        import vllm
        return vllm.__version__
    except Exception:
        return None
