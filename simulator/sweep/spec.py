"""The sweep specification: a base run configuration and the axes that vary around it.

A spec file (YAML or TOML) holds::

    name: p512d20                 # optional; names the default results folder
    base: run.yaml                # a run config file (relative to the spec), or a mapping of
                                  # run fields, exactly as `servesim run --config` takes them
    axes:                         # the grid is the product of every axis, first axis slowest
      policy: [vllm, sarathi]     # a run field: a list of values ...
      rate: {start: 12, stop: 24, step: 2}            # ... or an inclusive range
      policy_params.chunk_size: [256, 512]            # one key of a mapping field
      variant:                    # any other name: values are mappings of run fields
        - {name: vllm, policy: vllm}
        - {name: sarathi-512, policy: sarathi, policy_params: {chunk_size: 512}}
      seed: {start: 0, stop: 2}
    out: results/p512d20          # optional results folder (relative to the working directory)
    save: {requests: true, timeline: false}          # per-point tables kept beside the summary

Ranges: ``{start, stop, step}`` (step defaults to 1; stop included when the grid reaches it) or
``{start, stop, num}`` evenly spaced, ``log: true`` for a geometric grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.config import (FIELDS, MAPPING_FIELDS, check_fields, load_config_file,
                              read_mapping_file)
from simulator.errors import ConfigError

SPEC_KEYS = ("name", "base", "axes", "out", "save")
SAVE_KEYS = ("requests", "timeline")
# Fields a sweep decides itself: where outputs go, and whether the timeline is recorded.
RESERVED_FIELDS = ("out", "timeline")


@dataclass(frozen=True)
class Axis:
    """One dimension of the grid. ``field`` is the run field it sets (``None`` for a label axis
    whose values are mappings of run fields); ``values`` are what the table shows."""

    name: str
    values: tuple
    field: str | None = None      # "rate", "policy_params.chunk_size", or None (label axis)
    overrides: tuple = ()         # label axis: one mapping of run fields per value


@dataclass
class SweepSpec:
    name: str
    base: dict                    # checked run-field values (as from a config file)
    axes: list[Axis]
    out: str | None = None
    save_requests: bool = True
    save_timeline: bool = False
    source: str = "spec"
    raw: dict = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return math.prod(len(a.values) for a in self.axes)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec file (YAML or TOML)."""
    p = Path(path)
    raw = read_mapping_file(p, "sweep spec")
    return parse_spec(raw, source=f"sweep spec {p}", base_dir=p.parent, default_name=p.stem)


def parse_spec(raw: dict, source: str = "sweep spec", base_dir: Path | None = None,
               default_name: str = "sweep") -> SweepSpec:
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(SPEC_KEYS)}")
    base = _parse_base(raw.get("base"), source, base_dir or Path("."))
    axes_raw = raw.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise ConfigError(f"{source}: axes must be a non-empty mapping of axis: values")
    axes = [_parse_axis(str(name), values, source) for name, values in axes_raw.items()]
    points = math.prod(len(a.values) for a in axes)
    if points > MAX_POINTS:
        raise ConfigError(f"{source}: the axes make {points:,} points, more than {MAX_POINTS:,}; "
                          f"split the sweep or coarsen a range")
    save = raw.get("save") or {}
    if not isinstance(save, dict) or any(k not in SAVE_KEYS for k in save) or \
            any(not isinstance(v, bool) for v in save.values()):
        raise ConfigError(f"{source}: save must be a mapping with true/false values for "
                          f"{', '.join(SAVE_KEYS)}, got {save!r}")
    out = raw.get("out")
    if out is not None and (not isinstance(out, str) or not out.strip()):
        raise ConfigError(f"{source}: out must be a folder path, got {out!r}")
    name = check_name(raw.get("name", default_name), source)
    return SweepSpec(name=name, base=base, axes=axes, out=out,
                     save_requests=save.get("requests", True),
                     save_timeline=save.get("timeline", False), source=source, raw=raw)


def check_name(name: Any, source: str) -> str:
    """A sweep's name names its default results folder, results/<name>: one path component,
    so that a name can never write outside results/ (``../x``) or into it (an empty name)."""
    text = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else None
    if text is None or not text.strip() or text in (".", "..") or text != text.strip() or \
            any(c in text for c in "/\\\0") or not text.isprintable():
        raise ConfigError(f"{source}: name must be one folder name, not a path (no / or \\, "
                          f"not empty, . or ..), got {name!r}")
    return text


def _parse_base(base: Any, source: str, base_dir: Path) -> dict:
    if base is None:
        return {}
    if isinstance(base, str):
        values = load_config_file(base_dir / base)
    elif isinstance(base, dict):
        values = check_fields(base, f"{source}: base")
    else:
        raise ConfigError(f"{source}: base must be a run config file or a mapping of run fields")
    for name in RESERVED_FIELDS:
        values.pop(name, None)
    return values


def _parse_axis(name: str, values: Any, source: str) -> Axis:
    where = f"{source}: axis {name!r}"
    values = _expand_values(values, where)
    head, _, key = name.partition(".")
    if head in RESERVED_FIELDS:
        raise ConfigError(f"{where}: {head} is set by the sweep itself (see save: and out:)")
    if key:
        if head not in MAPPING_FIELDS:
            raise ConfigError(f"{where}: a dotted axis sets one key of a mapping field "
                              f"({', '.join(MAPPING_FIELDS)}); {head!r} is not one")
        for v in values:
            check_fields({head: {key: v}}, where)
        return Axis(name, tuple(values), field=name)
    if head in FIELDS:
        # Coerce as a config file would (a rate of 12 becomes 12.0), so a value hashes the
        # same whether it came from an axis or from the base config.
        values = [check_fields({head: v}, where)[head] for v in values]
        return Axis(name, tuple(values), field=name)
    # A label axis: each value is a mapping of run fields; 'name' (optional) labels it.
    if not all(isinstance(v, dict) for v in values):
        raise ConfigError(f"{where}: not a run field ({', '.join(FIELDS)}); an axis of another "
                          f"name takes mappings of run fields, like {{name: x, policy: sarathi}}")
    labels, overrides = [], []
    for v in values:
        v = dict(v)
        label = v.pop("name", None)
        checked = check_fields(v, where)
        for reserved in RESERVED_FIELDS:
            if reserved in checked:
                raise ConfigError(f"{where}: {reserved} is set by the sweep itself")
        labels.append(str(label) if label is not None else
                      ",".join(f"{k}={checked[k]}" for k in sorted(checked)))
        overrides.append(checked)
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: two values have the same name; give each a distinct name")
    return Axis(name, tuple(labels), field=None, overrides=tuple(overrides))


def _expand_values(values: Any, where: str) -> list:
    if isinstance(values, dict):
        values = _range(values, where)
    elif not isinstance(values, list):
        values = [values]
    if not values:
        raise ConfigError(f"{where}: no values")
    keys = [repr(v) for v in values]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where}: repeated values {values!r}")
    return values


# Every point is a whole simulation (seconds to minutes): a grid past these sizes is a typo in a
# range, not an experiment, and building it would exhaust memory before anything ran.
MAX_AXIS_VALUES = 10_000
MAX_POINTS = 100_000


def _range(r: dict, where: str) -> list:
    allowed = ("start", "stop", "step", "num", "log")
    for k in r:
        if k not in allowed:
            raise ConfigError(f"{where}: a range takes {', '.join(allowed)}; got {k!r} "
                              f"(a label axis takes a list of mappings)")
    try:
        start, stop = r["start"], r["stop"]
    except KeyError:
        raise ConfigError(f"{where}: a range needs start and stop")
    for k in ("start", "stop", "step", "num"):
        v = r.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v)):
            raise ConfigError(f"{where}: range {k} must be a number, got {v!r}")
    if stop < start:
        raise ConfigError(f"{where}: range stop {stop} is below start {start}")
    if "num" in r:
        num = r["num"]
        if not isinstance(num, int) or not 1 <= num <= MAX_AXIS_VALUES:
            raise ConfigError(f"{where}: range num must be an integer from 1 to "
                              f"{MAX_AXIS_VALUES:,}, got {num!r}")
        if "step" in r:
            raise ConfigError(f"{where}: give step or num, not both")
        if r.get("log"):
            if start <= 0:
                raise ConfigError(f"{where}: a log range needs start > 0")
            ratio = (stop / start) ** (1 / (num - 1)) if num > 1 else 1.0
            values = [start * ratio ** i for i in range(num)]
        else:
            step = (stop - start) / (num - 1) if num > 1 else 0.0
            values = [start + i * step for i in range(num)]
        values[-1] = stop if num > 1 else start
    else:
        if r.get("log"):
            raise ConfigError(f"{where}: a log range needs num, not step")
        step = r.get("step", 1)
        if step <= 0:
            raise ConfigError(f"{where}: range step must be > 0, got {step!r}")
        # The small slack keeps `stop` in the grid despite float rounding (12:24:0.1).
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > MAX_AXIS_VALUES:   # counted before any value is built: never a memory blow-up
            raise ConfigError(f"{where}: the range has {count:,} values, more than "
                              f"{MAX_AXIS_VALUES:,}; use a larger step")
        values = [start + i * step for i in range(count)]
        if all(isinstance(x, int) for x in (start, step)):
            return [int(v) for v in values]
    # Grids like 0.1 * 3 = 0.30000000000000004 would print badly and hash differently from the
    # same value typed in a list: round to 12 significant digits.
    return [float(f"{v:.12g}") for v in values]
