"""Per-request table, iteration timeline and summary, in one schema for every source.

The summary uses ``vllm bench serve``'s key names (request_throughput, mean_ttft_ms, ...), so
simulated, vLLM-in-the-loop and live-server runs compare key by key.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields
from typing import NamedTuple, Protocol, Sequence

import numpy as np
import pandas as pd

from scheduler.admission import QUEUE_FULL, TOKEN_BUCKET_EMPTY  # admission at the front
from scheduler.state import RequestState, Status

REQUEST_COLUMNS = (
    "request_id", "label", "arrival_s", "prompt_tokens", "output_tokens", "status",
    "reject_reason", "reject_detail", "first_scheduled_s", "first_token_s", "completion_s",
    "queue_ms", "ttft_ms", "tpot_ms", "e2el_ms", "preemptions",
)
# A disaggregated run's columns, after request_id (docs/output-schema.md).
DISAGG_COLUMNS = ("prefill_replica", "decode_replica", "link_wait_s", "transfer_s")
# Why a request was rejected: ``reject_reason`` holds one of these codes, ``reject_detail`` the
# figures behind it (a live server's failures have the error's kind as code, the error as detail).
OVER_MAX_MODEL_LEN = "over_max_model_len"     # prompt + output longer than max_model_len
OVER_KV_CAPACITY = "over_kv_capacity"         # its peak KV exceeds the whole cache
BY_POLICY = "rejected_by_policy"              # the policy's Decision.reject (detail: its reason)
REJECT_CODES = (OVER_MAX_MODEL_LEN, OVER_KV_CAPACITY, BY_POLICY, TOKEN_BUCKET_EMPTY, QUEUE_FULL)
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")
LATENCIES = ("ttft_ms", "tpot_ms", "e2el_ms", "queue_ms")
PERCENTILES = (("median", 50), ("p90", 90), ("p99", 99))


class Handoff(Protocol):
    """How a disaggregated run's request crossed from the prefill to the decode pool
    (simulator/disagg.py): replicas -1 and times NaN where it did not."""

    prefill_replica: int
    decode_replica: int
    link_wait_s: float
    transfer_s: float


def requests_table(states: list[RequestState], *, replica_of: list[int] | None = None,
                   cached_prompt_tokens: dict[int, int] | None = None,
                   handoffs: Sequence[Handoff] | None = None) -> pd.DataFrame:
    """One row per request. Times are seconds from the workload start; latencies milliseconds.

    TPOT follows vLLM bench: (e2e latency - TTFT) / (output tokens - 1), undefined for 1-token
    outputs. ``status`` is completed, rejected or unfinished. A cluster's table has a
    ``replica`` column after ``request_id`` (``replica_of``: the replica of each state). With
    prefix caching on, ``cached_prompt_tokens`` (by request id) adds the column of prompt tokens
    found cached at the request's first admission (vLLM's ``num_cached_tokens``; 0 if never
    admitted). A disaggregated run's ``handoffs`` (one per state) add ``prefill_replica``,
    ``decode_replica``, ``link_wait_s`` and ``transfer_s`` after ``request_id``; its TPOT is
    measured on the decode side, from the moment the KV landed there: (completion - first token
    - link wait - transfer) / (output tokens - 1).
    """
    n = len(states)
    nan = float("nan")

    def col(attr):
        # A float array turns None (a time not reached) into NaN.
        get = operator.attrgetter(attr)
        return np.array([get(s) for s in states], dtype=float)

    arrival = col("arrival_s")
    first_sched = col("first_scheduled_s")
    first_tok = col("first_token_s")
    done = col("finished_s")
    out = np.array([s.output_tokens for s in states], dtype=np.int64)
    status = np.array(["completed" if s.status is Status.FINISHED else
                       "rejected" if s.status is Status.REJECTED else "unfinished"
                       for s in states], dtype=object)
    e2el = (done - arrival) * 1e3
    ttft = (first_tok - arrival) * 1e3
    decoded = e2el - ttft
    if handoffs is not None:
        crossing = np.array([(h.link_wait_s, h.transfer_s) for h in handoffs],
                            dtype=float).reshape(-1, 2)
        decoded = decoded - np.nan_to_num(crossing.sum(axis=1)) * 1e3
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, decoded / np.maximum(out - 1, 1), nan)
    frame = pd.DataFrame({
        "request_id": np.array([s.request_id for s in states], dtype=np.int64),
        "label": pd.Series([s.label for s in states], dtype=object),
        "arrival_s": arrival,
        "prompt_tokens": np.array([s.prompt_tokens for s in states], dtype=np.int64),
        "output_tokens": out,
        "status": status,
        "reject_reason": pd.Series([s.reject_reason for s in states], dtype=object),
        "reject_detail": pd.Series([s.reject_detail for s in states], dtype=object),
        "first_scheduled_s": first_sched,
        "first_token_s": first_tok,
        "completion_s": done,
        "queue_ms": (first_sched - arrival) * 1e3,
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "e2el_ms": e2el,
        "preemptions": np.array([s.preemptions for s in states], dtype=np.int64),
    }, index=pd.RangeIndex(n))
    if replica_of is not None:
        frame.insert(1, "replica", np.array(replica_of, dtype=np.int64))
    if handoffs is not None:
        for k, name in enumerate(DISAGG_COLUMNS):
            kind = np.int64 if name.endswith("replica") else float
            frame.insert(1 + k, name, np.array([getattr(h, name) for h in handoffs], dtype=kind))
    if cached_prompt_tokens is not None:
        frame["cached_prompt_tokens"] = np.array(
            [cached_prompt_tokens.get(s.request_id, 0) for s in states], dtype=np.int64)
    return frame


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in milliseconds; None means not constrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))

    def met(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean per request: completed and within every given objective."""
        ok = (frame["status"] == "completed").to_numpy().copy()
        for key in SLO_KEYS:
            limit = getattr(self, key)
            if limit is not None:
                vals = frame[key].to_numpy()
                # An undefined TPOT (1-token output) cannot violate a TPOT objective.
                ok &= np.where(np.isnan(vals), key == "tpot_ms", vals <= limit)
        return ok


def _stats(name: str, values: np.ndarray) -> dict:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        out = {f"mean_{name}": None, f"std_{name}": None}
        out.update({f"{label}_{name}": None for label, _ in PERCENTILES})
        return out
    out = {f"mean_{name}": float(values.mean()), f"std_{name}": float(values.std())}
    for label, q in PERCENTILES:
        out[f"{label}_{name}"] = float(np.percentile(values, q))
    return out


@dataclass(frozen=True)
class SimulatedRun:
    """What a simulated run adds to its summary: the policy, the replica, the workload, the
    engine and the simulation's own speed."""

    policy: dict
    model: str
    gpu: str
    cost: dict
    kv_capacity_tokens: int
    block_size: int
    peak_kv_tokens: int
    iterations: int
    workload: dict                # the workload's meta record
    requests: int                 # requests in the workload
    seed: int
    wall_s: float
    engine: str
    engine_stats: dict = field(default_factory=dict)   # the engine's own counters (vLLM's)
    prefix_cache: dict | None = None   # with prefix caching on: PrefixCacheStats.to_dict()

    def to_dict(self) -> dict:
        out = {"policy": self.policy, "model": self.model, "gpu": self.gpu, "cost": self.cost,
               "kv_capacity_tokens": self.kv_capacity_tokens, "block_size": self.block_size,
               "peak_kv_tokens": self.peak_kv_tokens, "iterations": self.iterations,
               "workload": {**self.workload, "requests": self.requests}, "seed": self.seed,
               "wall_s": self.wall_s,
               "sim_requests_per_wall_s": self.requests / self.wall_s if self.wall_s > 0 else None,
               "engine": self.engine}
        if self.prefix_cache is not None:
            out.update(self.prefix_cache)
        if self.engine_stats:         # under the engine's name: {"vllm": {"version": ...}}
            out[self.engine] = self.engine_stats
        return out


@dataclass(frozen=True)
class LiveRun:
    """What a run measured on a live server adds (``servesim bench``): failed requests by
    error kind, inter-token latencies, the server."""

    failed: int
    errors: dict
    usage_disagreements: int      # requests whose streamed token count differs from the usage
    itl_ms: np.ndarray            # every inter-token gap of the successful requests
    url: str
    model: str
    workload: dict                # the workload's meta record
    requests: int
    seed: int

    def to_dict(self) -> dict:
        return {"failed": self.failed, "errors": self.errors,
                "usage_disagreements": self.usage_disagreements, **_stats("itl_ms", self.itl_ms),
                "source": "live-server", "url": self.url, "model": self.model,
                "workload": {**self.workload, "requests": self.requests},
                "policy": {"policy": "(server)"}, "seed": self.seed}


@dataclass(frozen=True)
class ReplicaSummary:
    """One replica of a cluster: what was routed to it and how it served it."""

    replica: int
    gpu: str
    policy: str
    requests: int
    completed: int
    rejected: int
    preemptions: int
    iterations: int
    kv_capacity_tokens: int
    peak_kv_tokens: int
    mean_ttft_ms: float | None
    mean_e2el_ms: float | None
    prefix_cache: dict | None = None     # with prefix caching on: PrefixCacheStats.to_dict()

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "prefix_cache"}
        if self.prefix_cache is not None:
            out.update(self.prefix_cache)
        return out


@dataclass(frozen=True)
class ClusterSummary:
    """What a cluster adds to its summary: the router, each replica, and the load balance as
    the coefficient of variation (population std / mean) of requests routed per replica: 0
    when every replica got the same number. With admission control, its settings and the
    requests it refused (replica -1 in the table)."""

    router: dict
    replicas: tuple[ReplicaSummary, ...]
    admission: dict | None = None
    refused: int = 0

    @classmethod
    def of(cls, frame: pd.DataFrame, router: dict, counters: list[dict],
           admission: dict | None = None) -> "ClusterSummary":
        """``frame`` holds a ``replica`` column; ``counters[i]`` replica i's preemptions,
        iterations, kv_capacity_tokens and peak_kv_tokens."""
        out = []
        replica = frame["replica"].to_numpy()
        status = frame["status"].to_numpy()
        for i, c in enumerate(counters):
            mine = replica == i
            done = mine & (status == "completed")

            def mean(col):
                return float(frame[col].to_numpy()[done].mean()) if done.any() else None
            out.append(ReplicaSummary(
                replica=i, requests=int(mine.sum()), completed=int(done.sum()),
                rejected=int((mine & (status == "rejected")).sum()),
                mean_ttft_ms=mean("ttft_ms"), mean_e2el_ms=mean("e2el_ms"), **c))
        return cls(router=router, replicas=tuple(out), admission=admission,
                   refused=int((replica == -1).sum()))

    @property
    def requests_cv(self) -> float:
        counts = np.array([r.requests for r in self.replicas], dtype=float)
        return float(counts.std() / counts.mean()) if counts.mean() > 0 else math.nan

    def to_dict(self) -> dict:
        out = {"replicas": len(self.replicas), "router": self.router,
               "requests_per_replica_cv": self.requests_cv,
               "per_replica": [r.to_dict() for r in self.replicas]}
        if self.admission is not None:
            out["admission"] = {**self.admission, "refused": self.refused}
        return out


@dataclass(frozen=True)
class DisaggSummary:
    """What a disaggregated run adds to its summary (under ``cluster``): each pool as a
    cluster of its own (its router, replicas and load balance), the KV link, and the
    transfers' statistics over the requests that crossed. ``per_replica`` lists the prefill
    replicas, then the decode replicas (numbered on after them, as in the timeline), each with
    its ``pool``."""

    prefill: ClusterSummary
    decode: ClusterSummary
    link: dict
    transfers: dict

    @classmethod
    def of(cls, frame: pd.DataFrame, routers: tuple[dict, dict],
           counters: tuple[list[dict], list[dict]], link: dict) -> "DisaggSummary":
        """``frame`` holds the ``DISAGG_COLUMNS``; ``routers`` and ``counters`` are the prefill
        pool's and the decode pool's (``ClusterSummary.of``)."""
        pools = [ClusterSummary.of(frame.assign(replica=frame[f"{pool}_replica"]), router, c)
                 for pool, router, c in zip(("prefill", "decode"), routers, counters)]
        crossed = frame[frame["decode_replica"] >= 0]
        transfers = {**_stats("transfer_ms", crossed["transfer_s"].to_numpy() * 1e3),
                     **_stats("link_wait_ms", crossed["link_wait_s"].to_numpy() * 1e3),
                     "transfers": int(len(crossed))}
        return cls(prefill=pools[0], decode=pools[1], link=link, transfers=transfers)

    def to_dict(self) -> dict:
        p, d = self.prefill.to_dict(), self.decode.to_dict()
        n = p["replicas"]
        per = [{**r, "pool": "prefill"} for r in p["per_replica"]] + \
              [{**r, "replica": n + r["replica"], "pool": "decode"} for r in d["per_replica"]]
        return {"replicas": n + d["replicas"], "router": p["router"],
                # Requests per replica differ between pools of different sizes by design: the
                # balance is each pool's own, and the top-level figure the worse of the two.
                "requests_per_replica_cv": max(
                    (cv for cv in (p["requests_per_replica_cv"], d["requests_per_replica_cv"])
                     if cv == cv), default=math.nan),     # (NaN: a pool that got nothing)
                "prefill_replicas": n, "decode_replicas": d["replicas"],
                "decode_router": d["router"],
                "prefill_requests_per_replica_cv": p["requests_per_replica_cv"],
                "decode_requests_per_replica_cv": d["requests_per_replica_cv"],
                **self.link, **self.transfers, "per_replica": per}


@dataclass(frozen=True)
class Summary:
    """A run's summary, one record whatever produced it (vLLM-bench key names).

    ``duration_s`` runs from the first arrival to the last completion (or ``end_s``), the span
    over which vLLM bench divides its throughputs. ``latency`` holds mean, std, median, p90 and
    p99 of each of ``LATENCIES`` over completed requests (None when none completed). With an
    SLO, ``goodput`` is (request_goodput, slo_attainment, the objectives given).
    """

    completed: int
    rejected: int
    rejected_by_reason: dict      # reject code -> requests, in code order
    unfinished: int
    preemptions: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    latency: dict
    goodput: tuple[float, float, dict] | None = None
    source: SimulatedRun | LiveRun | None = None
    cluster: ClusterSummary | DisaggSummary | None = None    # a run of more than one replica

    @classmethod
    def of(cls, frame: pd.DataFrame, *, preemptions: int = 0, slo: SLO | None = None,
           end_s: float | None = None, source: SimulatedRun | LiveRun | None = None,
           cluster: ClusterSummary | None = None) -> "Summary":
        done = frame[frame["status"] == "completed"]
        start = float(frame["arrival_s"].min()) if len(frame) else 0.0
        last = float(done["completion_s"].max()) if len(done) else start
        end = max(last, end_s if end_s is not None else last)
        duration = end - start
        per_s = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
        out_tokens = int(done["output_tokens"].sum())
        in_tokens = int(done["prompt_tokens"].sum())
        latency: dict = {}
        for key in LATENCIES:
            latency.update(_stats(key, done[key].to_numpy(dtype=float)))
        goodput = None
        if slo is not None and slo.given:
            met = slo.met(frame)
            goodput = (per_s(int(met.sum())), float(met.mean()) if len(frame) else math.nan,
                       {k: getattr(slo, k) for k in SLO_KEYS if getattr(slo, k) is not None})
        return cls(
            completed=int(len(done)),
            rejected=int((frame["status"] == "rejected").sum()),
            rejected_by_reason=rejected_by_reason(frame),
            unfinished=int((frame["status"] == "unfinished").sum()),
            preemptions=int(preemptions), duration_s=duration,
            total_input_tokens=in_tokens, total_output_tokens=out_tokens,
            request_throughput=per_s(len(done)), output_throughput=per_s(out_tokens),
            total_token_throughput=per_s(in_tokens + out_tokens),
            latency=latency, goodput=goodput, source=source, cluster=cluster)

    def to_dict(self) -> dict:
        """The record as ``summary.json`` holds it."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("latency", "goodput", "source", "cluster")}
        out.update(self.latency)
        if self.goodput is not None:
            out["request_goodput"], out["slo_attainment"], out["slo"] = self.goodput
        if self.source is not None:
            out.update(self.source.to_dict())
        if self.cluster is not None:
            out["cluster"] = self.cluster.to_dict()
        return out


def rejected_by_reason(frame: pd.DataFrame) -> dict:
    """How many requests were rejected for each reason code (codes sorted, for determinism)."""
    codes = frame.loc[frame["status"] == "rejected", "reject_reason"].fillna("unknown")
    return {str(k): int(v) for k, v in sorted(codes.value_counts().items())}


# A run that rejects more than this fraction of its requests says so (``rejection_notice``).
REJECT_NOTICE_FRACTION = 0.05


def rejection_notice(frame: pd.DataFrame) -> str | None:
    """One line when more than REJECT_NOTICE_FRACTION of the requests were rejected: how many,
    per reason code, each with the detail of its first request; else None."""
    rejected = frame[frame["status"] == "rejected"]
    if not len(frame) or len(rejected) <= REJECT_NOTICE_FRACTION * len(frame):
        return None
    groups = []
    for code, count in rejected_by_reason(frame).items():
        first = rejected[rejected["reject_reason"].fillna("unknown") == code].iloc[0]
        detail = first.get("reject_detail")
        groups.append(f"{code} {count}" + (f" (e.g. request {first['request_id']}: {detail})"
                                           if isinstance(detail, str) and detail else ""))
    return (f"{len(rejected)} of {len(frame)} requests ({len(rejected) / len(frame):.1%}) were "
            f"rejected: " + "; ".join(groups))


def summarize(frame: pd.DataFrame, *, preemptions: int = 0, slo: SLO | None = None,
              end_s: float | None = None) -> dict:
    """The summary metrics of a requests table, as a dict (``Summary.of(...).to_dict()``)."""
    return Summary.of(frame, preemptions=preemptions, slo=slo, end_s=end_s).to_dict()


class TimelineRow(NamedTuple):
    """One iteration of a replica, as both engines record it (``timeline.csv``'s columns)."""

    start_s: float
    duration_s: float
    prefill_tokens: int
    prefill_requests: int
    decode_requests: int
    batch_kv_tokens: int          # KV tokens the batch attends over (prefill + decode)
    kv_used_tokens: int           # KV tokens allocated after the batch's allocation
    resident: int                 # requests holding KV
    waiting: int
    preempted: int                # preemptions this iteration


TIMELINE_COLUMNS = TimelineRow._fields


def timeline_table(rows: list[TimelineRow] | None, *,
                   cached_blocks: list[int] | None = None) -> pd.DataFrame:
    """The timeline; with prefix caching on, ``cached_blocks`` adds the column of blocks that
    hold a cached prefix (held or evictable) after each iteration's allocation."""
    frame = pd.DataFrame(rows or [], columns=list(TIMELINE_COLUMNS))
    if cached_blocks is not None:
        frame["cached_blocks"] = np.asarray(cached_blocks, dtype=np.int64)
    return frame


def cluster_timeline_table(per_replica: list[list[TimelineRow]], *,
                           cached_blocks: list[list[int]] | None = None) -> pd.DataFrame:
    """The replicas' timelines one after another, each row with its ``replica`` first; with
    prefix caching on, ``cached_blocks[i]`` is replica i's column (``timeline_table``)."""
    frames = []
    for i, rows in enumerate(per_replica):
        frame = timeline_table(rows, cached_blocks=None if cached_blocks is None
                               else cached_blocks[i])
        frame.insert(0, "replica", np.full(len(frame), i, dtype=np.int64))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
