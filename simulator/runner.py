"""From a ``RunConfig`` to results: build the workload, the replica and the policy, simulate,
summarise, and write the output folder."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from scheduler.admission import Admission
from scheduler.base import make_policy
from scheduler.routers import make_router
from scheduler.state import ReplicaSpec, WorkloadHint
from simulator.cluster import native_cluster
from simulator.config import RunConfig, request_types
from simulator.cost.base import CostModel
from simulator.cost.factory import build_cost_model
from simulator.cost.linear import fit_cost
from simulator.disagg import KVLink, native_disaggregated
from simulator.engine import EngineResult, prefix_caching_on
from simulator.engines import engine_factory
from simulator.errors import ConfigError
from simulator.hardware import gpu_spec, kv_capacity_tokens, model_spec
from simulator.io import atomic_write, write_csv, write_json
from simulator.metrics import (SLO, ClusterSummary, DisaggSummary, SimulatedRun, Summary,
                               cluster_timeline_table, requests_table, timeline_table)
from simulator.prefix_cache import PrefixCacheStats
from simulator.replay import length_filters, lengths_from_file, trace_workload
from simulator.run_folder import clear, prepare, write_manifest
from traces import (Deterministic, Gamma, IndependentLengths, PiecewisePoisson, Poisson,
                    TypeMixture, Workload, parse_length, synthesize)
from traces.lengths import RequestType
from traces.prefix_reuse import repeated_prefix_fraction
from traces.sessions import synthesize_sessions, system_prompt
from traces.transforms import truncate


@dataclass
class RunResult:
    config: RunConfig
    requests: pd.DataFrame
    timeline: pd.DataFrame | None
    record: Summary

    @property
    def summary(self) -> dict:
        """The summary as ``summary.json`` holds it."""
        return self.record.to_dict()


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
        if cfg.session_turns > 1:
            workload = synthesize_sessions(build_arrival(cfg, rate), lengths, cfg.seed,
                                           cfg.requests_or_default, cfg.session_turns,
                                           cfg.think_time)
        else:
            workload = synthesize(build_arrival(cfg, rate), lengths, cfg.seed,
                                  num_requests=cfg.requests_or_default, duration_s=cfg.duration)
        workload = length_filters(workload, cfg)
        if cfg.system_prompt_len:
            workload = system_prompt(workload, cfg.system_prompt_len, cfg.system_prompt_share,
                                     cfg.seed)
    unused = cfg.unused_workload_settings() + _router_warnings(cfg, workload)
    if unused:
        workload.meta["warnings"] = [*workload.meta.get("warnings", []), *unused]
    if cfg.truncate:
        workload = truncate(workload, cfg.max_model_len or model_spec(cfg.model).max_model_len)
    return workload


def _router_warnings(cfg: RunConfig, workload: Workload) -> list[str]:
    """prefix-affinity routes by what the replicas' prefix caches hold: with the cache off on
    every replica it routes by load alone. Said, not refused: a sweep may vary the cache."""
    if cfg.router != "prefix-affinity" or not cfg.clustered or any(
            prefix_caching_on(group.prefix_caching, workload) for _, group in cfg.group_configs()):
        return []
    return ["router prefix-affinity routes by load only: prefix caching is off on every replica "
            "(--prefix-caching turns it on)"]


def build_replica(cfg: RunConfig, workload: Workload | None = None) -> ReplicaSpec:
    """The replica ``cfg`` describes, with its cost model; with ``workload``, also the hint a
    policy plans with (``workload_hint``), the cost fit bound to this cost model."""
    model = model_spec(cfg.model)
    gpu = gpu_spec(cfg.gpu)
    parallel = cfg.parallelism()
    cost = build_cost_model(cfg.cost_model, model, gpu, cfg.cost_params, parallel)
    max_len = cfg.max_model_len or model.max_model_len
    if cfg.kv_capacity is not None:
        if cfg.kv_capacity < cfg.block_size:
            raise ConfigError(f"kv_capacity {cfg.kv_capacity} is smaller than one block "
                              f"({cfg.block_size} tokens)")
        num_blocks = int(cfg.kv_capacity) // cfg.block_size
    else:
        num_blocks = kv_capacity_tokens(model, gpu, cfg.gpu_memory_utilization,
                                        block_size=cfg.block_size,
                                        parallel=parallel) // cfg.block_size
    hint = None
    if workload is not None:   # the fluid policies' hit rate at this block size, when caching
        caching = prefix_caching_on(cfg.prefix_caching, workload)
        hint = workload_hint(workload, request_types(cfg), cost,
                             cfg.block_size if caching else None)
    return ReplicaSpec(num_blocks=num_blocks, block_size=cfg.block_size, max_model_len=max_len,
                       cost_model=cost, workload_hint=hint, seed=cfg.seed)


def _repeated_prefix_fraction(workload: Workload, block_size: int) -> float:
    return repeated_prefix_fraction(workload.requests(), block_size)


def workload_hint(workload: Workload, types: tuple[RequestType, ...] | None = None,
                  cost_model: CostModel | None = None,
                  prefix_block_size: int | None = None) -> WorkloadHint:
    """What a policy may know about ``workload`` before serving it (``WorkloadHint``): the
    declared ``types``, the meta record, the mean arrival rate (the arrival process's, or the
    replayed requests' own), the length distribution, the fluid cost fit to ``cost_model``,
    and, with prefix caching on (``prefix_block_size``: the replica's block size), the expected
    hit rate: the workload's repeated-prefix fraction (``traces.prefix_reuse``)."""
    f = workload.frame
    rate = workload.meta.get("mean_rate") or workload.summary().get("mean_rate")
    # Computed at its first read (only fluid policies read it); a partial, so that the hint
    # pickles (a sweep's worker processes).
    hit_rate: float | Callable[[], float] = 0.0
    if prefix_block_size and workload.prefix_columns:
        hit_rate = functools.partial(_repeated_prefix_fraction, workload, prefix_block_size)
    return WorkloadHint(
        types=types, workload=workload.meta,
        arrival_rate=float(rate) if rate and math.isfinite(rate) else None,
        lengths=(f["prompt_tokens"].to_numpy(), f["output_tokens"].to_numpy()),
        cost_fit=functools.partial(fit_cost, cost_model) if cost_model is not None else None,
        expected_hit_rate=hit_rate)


def simulate(cfg: RunConfig, workload: Workload | None = None,
             progress: Callable[[int, int], None] | None = None) -> RunResult:
    workload = workload if workload is not None else build_workload(cfg)
    if cfg.prefix_caching is None:
        # The run's config.json says whether the cache was on, not "as the workload decides":
        # the same run again, whatever the default becomes.
        cfg = dataclasses.replace(cfg, prefix_caching=prefix_caching_on(None, workload))
    if cfg.disaggregated:
        return simulate_disaggregated(cfg, workload, progress)
    if cfg.clustered:
        return simulate_cluster(cfg, workload, progress)
    spec = build_replica(cfg, workload)
    policy = make_policy(cfg.policy, cfg.policy_params)
    engine = engine_factory(cfg.engine)(cfg, workload, policy, spec, progress)
    engine.frontend_delay_s = cfg.frontend_delay
    raw = engine.run()
    cache = raw.prefix_cache
    frame = requests_table(raw.states,
                           cached_prompt_tokens=cache.cached_prompt_tokens if cache else None)
    run = SimulatedRun(
        policy=policy.describe(), model=cfg.model, gpu=cfg.gpu, cost=spec.cost_model.describe(),
        kv_capacity_tokens=spec.kv_capacity_tokens, block_size=spec.block_size,
        peak_kv_tokens=raw.peak_kv_blocks * spec.block_size, iterations=raw.iterations,
        workload=workload.meta, requests=len(workload), seed=cfg.seed, wall_s=raw.wall_s,
        engine=cfg.engine, engine_stats=raw.extra, prefix_cache=cache.stats if cache else None)
    record = Summary.of(frame, preemptions=raw.preemptions,
                        slo=SLO(**cfg.slo) if cfg.slo else None, source=run)
    timeline = timeline_table(raw.timeline, cached_blocks=cache.cached_blocks if cache else None) \
        if raw.timeline is not None else None
    return RunResult(cfg, frame, timeline, record)


def _refuse_shared_prefixes(cfg: RunConfig, workload: Workload, what: str) -> None:
    if prefix_caching_on(cfg.prefix_caching, workload) or cfg.session_turns > 1:
        # Not modelled yet across pools (a prompt's cached blocks would have to follow it over
        # the link): refuse rather than run shared prefixes as if nothing were cached.
        raise ConfigError(f"{what} does not model the prefix cache or closed-loop sessions "
                          f"yet: give --no-prefix-caching and session_turns 1, or serve "
                          f"aggregated (--replicas N)")


def _pool_spec(spec: ReplicaSpec, replicas: int, output_tokens=None,
               decode_only: bool = False) -> ReplicaSpec:
    """A pool replica's spec: its policy plans for an even share of the arrival rate (and, on
    the prefill side, for the one output token each request has there; on the decode side,
    ``decode_only``, for prompts that arrive computed: the fluid policies' hit rate 1)."""
    hint = spec.workload_hint
    if hint is None:
        return spec
    changes: dict = {"expected_hit_rate": 1.0} if decode_only else {}
    if hint.arrival_rate is not None:
        changes["arrival_rate"] = hint.arrival_rate / replicas
    if output_tokens is not None and hint.lengths is not None:
        changes["lengths"] = (hint.lengths[0], np.full_like(hint.lengths[1], output_tokens))
    return dataclasses.replace(spec, workload_hint=dataclasses.replace(hint, **changes))


def simulate_cluster(cfg: RunConfig, workload: Workload,
                     progress: Callable[[int, int], None] | None = None) -> RunResult:
    """``cfg.replicas`` replicas (identical, or in ``cfg.groups``) behind ``cfg.router`` and
    admission control (simulator/cluster.py)."""
    n = cfg.replicas
    specs, policies, names, preemptions, caching = [], [], [], [], []
    for count, group in cfg.group_configs():
        spec = _pool_spec(build_replica(group, workload), n)
        specs += [spec] * count
        policies += [make_policy(group.policy, group.policy_params) for _ in range(count)]
        names += [(group.gpu, group.policy)] * count
        preemptions += [group.preemption] * count
        caching += [prefix_caching_on(group.prefix_caching, workload)] * count
    router = make_router(cfg.router, cfg.router_params)
    admission = Admission(cfg.admission_rate, cfg.admission_burst, cfg.max_queue)
    raw = native_cluster(workload.requests(), router, policies, specs,
                         record_timeline=cfg.timeline, preemptions=preemptions, seed=cfg.seed,
                         admission=admission, progress=progress, total=len(workload),
                         prefix_caching=caching, stepwise=cfg.stepwise).run()
    caches = [r.prefix_cache for r in raw.replicas]
    cached = any(c is not None for c in caches)
    frame = requests_table(raw.states, replica_of=raw.replica_of, cached_prompt_tokens={
        rid: tokens for c in caches if c is not None
        for rid, tokens in c.cached_prompt_tokens.items()} if cached else None)
    counters = [replica_counters(gpu, policy, r) for (gpu, policy), r in zip(names, raw.replicas)]
    # The top-level replica description is replica 0's (each replica's is in cluster.per_replica).
    record = _replicas_record(
        cfg, workload, frame, policies[0].describe(), names[0][0], specs[0], counters,
        raw.wall_s, ClusterSummary.of(frame, router.describe(), counters,
                                      admission.describe() if admission.active else None),
        prefix_cache=cluster_prefix_cache([c.stats for c in caches if c is not None])
        if cached else None)
    timeline = cluster_timeline_table(
        [r.timeline for r in raw.replicas],
        cached_blocks=[c.cached_blocks if c else [0] * len(r.timeline)
                       for c, r in zip(caches, raw.replicas)] if cached else None) \
        if cfg.timeline else None
    return RunResult(cfg, frame, timeline, record)


def cluster_prefix_cache(per_replica: list[dict]) -> dict:
    """The whole cluster's prefix-cache figures from its replicas' (``PrefixCacheStats``
    records): counts summed, the hit rate of the sums (hits / queries over every replica)."""
    keys = ("queries", "hits", "admissions", "evictions")
    return PrefixCacheStats(**{k: sum(s[f"prefix_cache_{k}"] for s in per_replica)
                               for k in keys}).to_dict()


def replica_counters(gpu: str, policy: str, r: EngineResult) -> dict:
    """What a cluster's summary records of one replica's own run (``ReplicaSummary``)."""
    return dict(gpu=gpu, policy=policy, preemptions=r.preemptions, iterations=r.iterations,
                kv_capacity_tokens=r.spec.kv_capacity_tokens,
                peak_kv_tokens=r.peak_kv_blocks * r.spec.block_size,
                prefix_cache=r.prefix_cache.stats if r.prefix_cache else None)


def _replicas_record(cfg: RunConfig, workload: Workload, frame: pd.DataFrame, policy: dict,
                     gpu: str, spec: ReplicaSpec, counters: list[dict], wall_s: float,
                     cluster: ClusterSummary | DisaggSummary,
                     prefix_cache: dict | None = None) -> Summary:
    """The summary of a run on many replicas: the replica described at the top level is
    ``spec`` under ``policy``, its peak KV the largest replica's, iterations and preemptions
    summed over ``counters``; ``prefix_cache``: the whole cluster's cache figures."""
    run = SimulatedRun(
        policy=policy, model=cfg.model, gpu=gpu, cost=spec.cost_model.describe(),
        kv_capacity_tokens=spec.kv_capacity_tokens, block_size=spec.block_size,
        peak_kv_tokens=max(c["peak_kv_tokens"] for c in counters),
        iterations=sum(c["iterations"] for c in counters), workload=workload.meta,
        requests=len(workload), seed=cfg.seed, wall_s=wall_s, engine=cfg.engine,
        prefix_cache=prefix_cache)
    return Summary.of(frame, preemptions=sum(c["preemptions"] for c in counters),
                      slo=SLO(**cfg.slo) if cfg.slo else None, source=run, cluster=cluster)


def simulate_disaggregated(cfg: RunConfig, workload: Workload,
                           progress: Callable[[int, int], None] | None = None) -> RunResult:
    """A prefill pool of ``cfg.prefill_replicas`` and a decode pool of ``cfg.decode_replicas``
    identical replicas, the KV of each prompt sent over a link (simulator/disagg.py)."""
    _refuse_shared_prefixes(cfg, workload, "disaggregated serving")
    P, D = cfg.prefill_replicas, cfg.decode_replicas
    spec = build_replica(cfg, workload)
    p_spec, d_spec = _pool_spec(spec, P, output_tokens=1), _pool_spec(spec, D, decode_only=True)
    routers = tuple(make_router(name, params) for name, params in cfg.pool_routers)
    pools = [[make_policy(cfg.policy, cfg.policy_params) for _ in range(n)] for n in (P, D)]
    link = KVLink(cfg.kv_link_gbps, cfg.kv_link_latency_ms / 1e3)
    raw = native_disaggregated(
        workload.requests(), *routers, (pools[0], p_spec), (pools[1], d_spec), link,
        model_spec(cfg.model).kv_bytes_per_token, record_timeline=cfg.timeline,
        preemption=cfg.preemption, seed=cfg.seed, progress=progress,
        total=len(workload), stepwise=cfg.stepwise).run()
    frame = requests_table(raw.states, handoffs=raw.handoffs)
    counters = tuple([replica_counters(cfg.gpu, cfg.policy, r) for r in results]
                     for results in (raw.prefill, raw.decode))
    record = _replicas_record(
        cfg, workload, frame, pools[1][0].describe(), cfg.gpu, spec, counters[0] + counters[1],
        raw.wall_s, DisaggSummary.of(frame, tuple(r.describe() for r in routers), counters,
                                     link.describe()))
    timeline = cluster_timeline_table([r.timeline for r in raw.prefill + raw.decode]) \
        if cfg.timeline else None
    return RunResult(cfg, frame, timeline, record)


def write_outputs(result: RunResult, out_dir: str | Path, requests_format: str = "csv", *,
                  replace: bool = False,
                  figures: Callable[[Path], list[Path]] | None = None) -> list[Path]:
    """summary.json, requests.csv (or .parquet), timeline.csv, config.json, the figures
    ``figures(out)`` draws, then manifest.json (last) in ``out_dir``, which holds this run only
    (simulator/run_folder.py: a folder holding another run is refused unless ``replace``, which
    removes that run's files first). Returns the run's files, the manifest last."""
    out, previous = prepare(out_dir, replace)
    clear(previous)
    written = []
    p = out / "summary.json"
    write_json(p, result.summary)
    written.append(p)
    if requests_format == "parquet":
        p = out / "requests.parquet"
        atomic_write(p, lambda tmp: result.requests.to_parquet(tmp, index=False))
    else:
        p = out / "requests.csv"
        write_csv(p, result.requests)
    written.append(p)
    if result.timeline is not None:
        p = out / "timeline.csv"
        write_csv(p, result.timeline)
        written.append(p)
    p = out / "config.json"
    write_json(p, result.config.to_dict())
    written.append(p)
    if figures is not None:
        written += figures(out)
    s = result.record
    written.append(write_manifest(out, "run", written, seed=result.config.seed,
                                  requests=s.completed + s.rejected + s.unfinished,
                                  completed=s.completed, rejected=s.rejected))
    return written
