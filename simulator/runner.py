"""From a ``RunConfig`` to results: build the workload, the replica and the policy, simulate,
summarise, and write the output folder."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from scheduler.base import make_policy
from scheduler.state import ReplicaSpec
from simulator.config import RunConfig
from simulator.cost.factory import build_cost_model
from simulator.engine import TIMELINE_COLUMNS, Engine
from simulator.errors import ConfigError
from simulator.hardware import gpu_spec, kv_capacity_tokens, model_spec
from simulator.metrics import SLO, requests_table, summarize, timeline_table
from simulator.replay import length_filters, lengths_from_file, trace_workload
from traces import (Deterministic, Gamma, IndependentLengths, PiecewisePoisson, Poisson,
                    TypeMixture, Workload, parse_length, parse_type, synthesize)
from traces.lengths import RequestType
from traces.transforms import truncate


@dataclass
class RunResult:
    config: RunConfig
    requests: pd.DataFrame
    timeline: pd.DataFrame | None
    summary: dict
    extra: dict = field(default_factory=dict)


def request_types(cfg: RunConfig) -> tuple[RequestType, ...] | None:
    if not cfg.types:
        return None
    out = []
    for t in cfg.types:
        if isinstance(t, dict):
            try:
                out.append(RequestType(str(t.get("name") or f"p{t['prompt']}d{t['output']}"),
                                       int(t["prompt"]), int(t["output"]), float(t["rate"])))
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"types: each entry needs prompt, output and rate; got {t!r}")
        else:
            out.append(parse_type(str(t)))
    return tuple(out)


def build_arrival(cfg: RunConfig, rate: float):
    if cfg.arrival == "poisson":
        return Poisson(rate)
    if cfg.arrival == "gamma":
        return Gamma(rate, cfg.cv)
    if cfg.arrival == "deterministic":
        return Deterministic(rate)
    schedule = cfg.rate_schedule or []
    try:
        segments = tuple((float(d), float(r)) for d, r in schedule)
    except (TypeError, ValueError):
        raise ConfigError(f"rate_schedule must be a list of [duration_s, rate] pairs, got "
                          f"{schedule!r}")
    return PiecewisePoisson(segments)


def build_workload(cfg: RunConfig) -> Workload:
    """The workload a config describes: a replayed trace (simulator/replay.py), or synthetic
    (types, lengths sampled from a file, or independent length distributions)."""
    if cfg.trace:
        workload = trace_workload(cfg, build_arrival(cfg, cfg.target_rate or cfg.rate))
    else:
        types = request_types(cfg)
        if types:
            lengths = TypeMixture(types)
            # With types, their rates define the load: the total rate drives the arrivals.
            rate = lengths.total_rate
        else:
            lengths = lengths_from_file(cfg) if cfg.lengths_file else IndependentLengths(
                parse_length(cfg.prompt_len, "prompt_len"),
                parse_length(cfg.output_len, "output_len"))
            rate = cfg.rate
        workload = length_filters(
            synthesize(build_arrival(cfg, rate), lengths, cfg.seed,
                       num_requests=cfg.requests_or_default, duration_s=cfg.duration), cfg)
    if cfg.truncate:
        workload = truncate(workload, cfg.max_model_len or model_spec(cfg.model).max_model_len)
    return workload


def build_replica(cfg: RunConfig, workload_hint=None) -> ReplicaSpec:
    model = model_spec(cfg.model)
    gpu = gpu_spec(cfg.gpu)
    cost = build_cost_model(cfg.cost_model, model, gpu, cfg.cost_params)
    max_len = cfg.max_model_len or model.max_model_len
    if cfg.kv_capacity is not None:
        if cfg.kv_capacity < cfg.block_size:
            raise ConfigError(f"kv_capacity {cfg.kv_capacity} is smaller than one block "
                              f"({cfg.block_size} tokens)")
        num_blocks = int(cfg.kv_capacity) // cfg.block_size
    else:
        num_blocks = kv_capacity_tokens(model, gpu, cfg.gpu_memory_utilization,
                                        block_size=cfg.block_size) // cfg.block_size
    return ReplicaSpec(num_blocks=num_blocks, block_size=cfg.block_size, max_model_len=max_len,
                       cost_model=cost, workload_hint=workload_hint, seed=cfg.seed)


def policy_hint(cfg: RunConfig, workload: Workload) -> dict:
    return workload_hint(workload, request_types(cfg))


def workload_hint(workload: Workload, types=None) -> dict:
    """What a policy may know about the workload before serving it (``ReplicaSpec.workload_hint``):

    - ``types``: the declared request types (``--type``; RequestType records with rates) or None;
    - ``workload``: the workload's meta record;
    - ``arrival_rate``: mean arrival rate in requests/s (the arrival process's, or the replayed
      requests' own; None for a single request);
    - ``lengths``: (prompt_tokens, output_tokens) arrays of the workload's requests: the length
      *distribution* that fluid-guided policies (Nested WAIT, types for WAIT) assume known, as
      the paper computes its segments from the dataset. A policy must not use it to learn an
      individual request's output length (that is what RequestState.output_tokens is for, and
      only policies that assume known lengths read it).
    """
    f = workload.frame
    rate = workload.meta.get("mean_rate") or workload.summary().get("mean_rate")
    return {"types": types, "workload": workload.meta,
            "arrival_rate": float(rate) if rate and math.isfinite(rate) else None,
            "lengths": (f["prompt_tokens"].to_numpy(), f["output_tokens"].to_numpy())}


def simulate(cfg: RunConfig, workload: Workload | None = None,
             progress: Callable[[int, int], None] | None = None) -> RunResult:
    workload = workload if workload is not None else build_workload(cfg)
    spec = build_replica(cfg, policy_hint(cfg, workload))
    policy = make_policy(cfg.policy, cfg.policy_params)
    if cfg.engine == "vllm":
        from simulator.vllm.loop import VllmLoopEngine, require_vllm
        vllm_version = require_vllm()
        engine = VllmLoopEngine(workload.requests(), policy, spec.cost_model, spec,
                                model_spec(cfg.model), record_timeline=cfg.timeline,
                                progress=progress, total=len(workload))
    else:
        engine = Engine(workload.requests(), policy, spec.cost_model, spec,
                        record_timeline=cfg.timeline, progress=progress, total=len(workload),
                        preemption=cfg.preemption)
    engine.frontend_delay_s = cfg.frontend_delay
    raw = engine.run()
    frame = requests_table(raw.states)
    slo = SLO(**cfg.slo) if cfg.slo else None
    summary = summarize(frame, preemptions=raw.preemptions, slo=slo)
    summary.update({
        "policy": policy.describe(),
        "model": cfg.model,
        "gpu": cfg.gpu,
        "cost": spec.cost_model.describe(),
        "kv_capacity_tokens": spec.kv_capacity_tokens,
        "block_size": spec.block_size,
        "peak_kv_tokens": raw.peak_kv_blocks * spec.block_size,
        "iterations": raw.iterations,
        "workload": {**workload.meta, "requests": len(workload)},
        "seed": cfg.seed,
        "wall_s": raw.wall_s,
        "sim_requests_per_wall_s": len(workload) / raw.wall_s if raw.wall_s > 0 else None,
        "engine": cfg.engine,
    })
    if cfg.engine == "vllm":
        summary["vllm"] = {"version": vllm_version, **raw.extra}
    timeline = timeline_table(raw.timeline, TIMELINE_COLUMNS) if raw.timeline is not None else None
    return RunResult(cfg, frame, timeline, summary)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write to a temporary file beside ``path`` and rename, so a crash never leaves half a file
    and a failed run never destroys an earlier run's output."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON (what JSON cannot hold, as text), written atomically."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def output_folder(out_dir: str | Path) -> Path:
    """The ``out`` folder, created if missing (a path that cannot be one is a user error)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out: cannot create output folder {out}: {e.strerror}")
    return out


def write_outputs(result: RunResult, out_dir: str | Path, requests_format: str = "csv") -> list[Path]:
    """summary.json, requests.csv (or .parquet), timeline.csv, config.json in ``out_dir``."""
    out = output_folder(out_dir)
    written = []
    p = out / "summary.json"
    write_json(p, result.summary)
    written.append(p)
    if requests_format == "parquet":
        p = out / "requests.parquet"
        _atomic_write(p, lambda tmp: result.requests.to_parquet(tmp, index=False))
    else:
        p = out / "requests.csv"
        _atomic_write(p, lambda tmp: result.requests.to_csv(tmp, index=False))
    written.append(p)
    if result.timeline is not None:
        p = out / "timeline.csv"
        _atomic_write(p, lambda tmp: result.timeline.to_csv(tmp, index=False))
        written.append(p)
    p = out / "config.json"
    write_json(p, result.config.to_dict())
    written.append(p)
    return written
