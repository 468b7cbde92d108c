"""From a spec to points: one fully resolved, validated RunConfig per grid cell, and its key.

A point's key is a hash of its resolved configuration, so it names the simulation itself: the
same point in a re-run (or in another spec) is found done, and a changed base config, a changed
default or a changed axis value gives a new key and a fresh run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scheduler.base import PolicyError, make_policy
from scheduler.state import WorkloadHint
from simulator.config import FILE_FIELDS, RunConfig, build_config, request_types
from simulator.errors import ConfigError
from simulator.runner import build_replica, build_workload
from simulator.sweep.spec import RESERVED_FIELDS, SweepSpec
from traces.errors import WorkloadError
from traces.loaders.table import sha256_of

# Bump when the meaning of a stored point changes (what a worker records), to invalidate old ones.
POINT_SCHEMA = 1
# Input files (FILE_FIELDS) are resolved to absolute paths, and hashed by content in the key.


@dataclass(frozen=True)
class Point:
    index: int                    # position in the spec's grid (first axis slowest)
    key: str
    axes: dict                    # axis name -> value shown in the results table
    config: RunConfig


def point_key(cfg: RunConfig, digest: Callable[[str], str] | None = None) -> str:
    """16 hex digits of the SHA-256 of the resolved configuration (outputs excluded). Input
    files count by content, not by name: an edited trace gives new keys, a moved one does not.
    ``digest`` may memoize ``file_digest`` over the points of one sweep."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in RESERVED_FIELDS}
    for name in FILE_FIELDS:
        if d.get(name):
            d[name] = (digest or file_digest)(d[name])
    text = json.dumps({"schema": POINT_SCHEMA, "config": d}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    """SHA-256 of a file's content (the path itself when it cannot be read: the point then
    fails when it runs, with the loader's message)."""
    try:
        return "sha256:" + sha256_of(Path(path))
    except OSError:
        return path


def absolute_files(cfg: RunConfig) -> RunConfig:
    """Input files as absolute paths, so a worker finds them whatever its working directory
    (on a Ray cluster they must exist at the same path on every node)."""
    changes = {name: str(Path(getattr(cfg, name)).expanduser().resolve())
               for name in FILE_FIELDS if getattr(cfg, name)}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def at_rate(cfg: RunConfig, rate: float) -> RunConfig:
    """``cfg`` with total arrival rate ``rate``. With request types the mix keeps its
    proportions (each type's rate is scaled), since there the types' rates define the load; a
    replayed trace is rate-scaled to it (target_rate), keeping its own arrival pattern."""
    if cfg.arrival == "piecewise" and not cfg.trace:
        raise ConfigError("rate: a piecewise arrival takes its rates from rate_schedule; vary "
                          "rate_schedule instead")
    if cfg.trace and not cfg.generate_arrivals:
        return dataclasses.replace(cfg, rate=float(rate), target_rate=float(rate),
                                   speedup=None).validate()
    types = request_types(cfg)
    if not types:
        return dataclasses.replace(cfg, rate=float(rate)).validate()
    scale = rate / sum(t.rate for t in types)
    scaled = [{"name": t.name, "prompt": t.prompt_tokens, "output": t.output_tokens,
               "rate": float(f"{t.rate * scale:.12g}")} for t in types]
    return dataclasses.replace(cfg, rate=float(rate), types=scaled).validate()


def expand_points(spec: SweepSpec, timeline: bool | None = None) -> list[Point]:
    """Every point of the grid, validated up front: a bad value fails before anything runs."""
    timeline = spec.save_timeline if timeline is None else timeline
    points = []
    checked_policies: set = set()
    digest = functools.lru_cache(maxsize=None)(file_digest)   # each input file hashed once
    for index, combo in enumerate(itertools.product(*(range(len(a.values)) for a in spec.axes))):
        values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.base.items()}
        shown = {}
        for axis, i in zip(spec.axes, combo):
            shown[axis.name] = axis.values[i]
            if axis.field is None:
                for k, v in axis.overrides[i].items():
                    _set(values, k, v)
            elif "." in axis.field:
                head, key = axis.field.split(".", 1)
                values[head] = {**values.get(head, {}), key: axis.values[i]}
            else:
                _set(values, axis.field, axis.values[i])
        values["timeline"] = timeline
        try:
            # A base field may apply to some points only (cv with an arrival axis): not refused.
            cfg = absolute_files(build_config(values, refuse_unused=False))
            if any(a.field == "rate" for a in spec.axes):
                cfg = at_rate(cfg, cfg.rate)
            _check_files(cfg)
            _check_policy(cfg, checked_policies)
        except (ConfigError, PolicyError, WorkloadError) as e:
            where = ", ".join(f"{k}={v}" for k, v in shown.items())
            raise type(e)(f"{spec.source}: point {where}: {e}") from None
        points.append(Point(index, point_key(cfg, digest), shown, cfg))
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        same = [p.axes for p in points if p.key == dup]
        raise ConfigError(f"{spec.source}: points {same[0]} and {same[1]} resolve to the same "
                          f"run configuration; an axis has no effect there")
    return points


def _check_files(cfg: RunConfig) -> None:
    for name in FILE_FIELDS:
        path = getattr(cfg, name)
        if path and not Path(path).exists():
            raise ConfigError(f"{name} {path} does not exist")


# The fields that make a replica and its policy: a point is checked once per distinct set.
_REPLICA_KEYS = ("policy", "policy_params", "model", "gpu", "cost_model", "cost_params",
                 "kv_capacity", "block_size", "gpu_memory_utilization", "max_model_len",
                 "types", "tp", "pp")


def _check_policy(cfg: RunConfig, checked: set) -> None:
    """Bind the point's policy to its replica, as the run will: a bad policy name or parameter,
    a cost model that cannot be built, or a budget below max_model_len would fail every point
    that shares them, but only once it ran. A policy that plans from the workload (WAIT) may
    need its lengths: only when binding without them fails is the workload built to tell."""
    key = json.dumps([getattr(cfg, k) for k in _REPLICA_KEYS], sort_keys=True, default=str)
    if key in checked:
        return
    try:
        spec = dataclasses.replace(build_replica(cfg),
                                   workload_hint=WorkloadHint(types=request_types(cfg)))
        make_policy(cfg.policy, cfg.policy_params).bind(spec)
    except (ConfigError, PolicyError):
        make_policy(cfg.policy, cfg.policy_params).bind(build_replica(cfg, build_workload(cfg)))
        return          # it needed the workload: checked for this point only
    checked.add(key)


def _set(values: dict, name: str, value) -> None:
    # Mapping fields merge (as flags over a config file do); other fields replace.
    if isinstance(value, dict) and isinstance(values.get(name), dict):
        values[name] = {**values[name], **value}
    else:
        values[name] = dict(value) if isinstance(value, dict) else value
