"""What every trace format shares: its declaration (columns, options) and the common finish
(zero-length requests, unsorted timestamps, time origin, provenance record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from traces.errors import WorkloadError
from traces.loaders.table import RawTable, sha256_of
from traces.transforms import stamp
from traces.workload import Workload


@dataclass(frozen=True)
class Option:
    """A format-specific option, given as ``-T NAME=VALUE`` or ``trace_options`` in a config."""

    name: str
    kind: type            # str, int, float or bool
    default: Any
    help: str

    def coerce(self, value: Any, fmt: str) -> Any:
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
        else:
            try:
                if self.kind is str:
                    return str(value)
                if isinstance(value, bool):
                    raise ValueError
                return self.kind(value)
            except (TypeError, ValueError):
                pass
        kind = {bool: "true/false", int: "an integer", float: "a number"}[self.kind]
        raise WorkloadError(f"trace option {self.name} (format {fmt}) must be {kind}, "
                            f"got {value!r}")


def jitter_option(bucket: str) -> Option:
    """The option of formats whose timestamps are coarse (``traces.transforms.jitter``)."""
    return Option("jitter", float, 0.0,
                  f"spread each request uniformly over this many seconds after its timestamp "
                  f"({bucket}; 0 = off), seeded by --seed")


@dataclass
class Parsed:
    """A format's requests before the common finish. ``rows`` are the file rows kept (for error
    messages): every row as parsed, fewer after ``keep``; ``arrival_s`` is None for length-only
    formats."""

    arrival_s: np.ndarray | None
    prompt: np.ndarray
    output: np.ndarray
    labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    rows: np.ndarray | None = None

    def __post_init__(self):
        if self.rows is None:
            self.rows = np.arange(len(self.prompt))

    def keep(self, mask: np.ndarray) -> "Parsed":
        """The subset of requests where ``mask`` holds."""
        def sub(a):
            return None if a is None else a[mask]
        return Parsed(sub(self.arrival_s), self.prompt[mask], self.output[mask], sub(self.labels),
                      {k: sub(v) for k, v in self.extra.items()}, self.meta, self.rows[mask])


@dataclass(frozen=True)
class TraceFormat:
    """A trace format: the columns that identify it, how to parse it, its options."""

    name: str
    description: str
    columns: tuple[str, ...]                        # required; also its detection signature
    parse: Callable[[RawTable, dict, int], Parsed]   # (table, options, seed)
    optional_columns: tuple[str, ...] = ()          # read when present
    categorical: tuple[str, ...] = ()               # repeated strings: read as categories
    options: tuple[Option, ...] = ()
    has_arrivals: bool = True
    # For formats whose columns are named by options (generic): options -> (required, optional).
    columns_for: Callable[[dict], tuple[tuple[str, ...], tuple[str, ...]]] | None = None

    def needed_columns(self, options: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self.columns_for is not None:
            return self.columns_for(options)
        return self.columns, self.optional_columns

    def check_options(self, given: dict | None) -> dict:
        known = {o.name: o for o in self.options}
        out = {o.name: o.default for o in self.options}
        for key, value in (given or {}).items():
            name = str(key).replace("-", "_")
            if name not in known:
                allowed = ", ".join(known) or "none"
                raise WorkloadError(f"trace option {key!r} is not known for format {self.name}; "
                                    f"its options: {allowed}")
            out[name] = known[name].coerce(value, self.name)
        return out


def finish(table: RawTable, fmt: TraceFormat, parsed: Parsed, options: dict,
           strict: bool) -> Workload:
    """Common checks and the provenance record, shared by every format.

    - A request with 0 prompt or 0 output tokens cannot be served (the prefill emits the first
      token): dropped and counted with a warning, or an error under ``strict``.
    - Unsorted timestamps: sorted (stably) with a warning, or an error under ``strict``.
    - Arrival seconds count from the trace's first request; the original offset is recorded.
    """
    warnings: list[str] = list(parsed.meta.pop("warnings", []))
    meta = {"source": "trace", "path": str(table.path), "format": fmt.name,
            "sha256": sha256_of(table.path), "rows": len(table), **parsed.meta}
    options_set = {k: v for k, v in options.items()
                   if v != next(o.default for o in fmt.options if o.name == k)}
    if options_set:
        meta["options"] = options_set

    empty = (parsed.prompt < 1) | (parsed.output < 1)
    if empty.any():
        i = int(np.argmax(empty))
        column = "prompt" if parsed.prompt[i] < 1 else "output"
        if strict:
            raise WorkloadError(f"{table.where(int(parsed.rows[i]))}: {column} of 0 tokens "
                                f"(a request needs >= 1 prompt and output token)")
        warnings.append(f"dropped {int(empty.sum())} requests with 0 prompt or output tokens "
                        f"(first at {table.where(int(parsed.rows[i]))})")
        meta.setdefault("dropped", {})["zero_tokens"] = int(empty.sum())
        parsed = parsed.keep(~empty)
    if len(parsed.prompt) == 0:
        raise WorkloadError(f"{table.path}: no requests left after the format's filters "
                            f"({meta.get('dropped', {})})")

    arrivals = parsed.arrival_s
    if arrivals is not None:
        back = np.diff(arrivals) < 0
        if back.any():
            i = int(np.argmax(back)) + 1
            where = table.where(int(parsed.rows[i]))
            if strict:
                raise WorkloadError(f"{where}: timestamp earlier than the previous request's "
                                    f"(unsorted trace; sort it, or replay without --strict)")
            warnings.append(f"timestamps not sorted ({int(back.sum())} steps back, first at "
                            f"{where}); requests sorted by arrival time")
            parsed = parsed.keep(np.argsort(arrivals, kind="stable"))
            arrivals = parsed.arrival_s
        origin = float(arrivals[0])
        if origin != 0:
            meta["start_offset_s"] = meta.get("start_offset_s", 0.0) + origin
            arrivals = arrivals - origin
        meta["arrival"] = "trace"
    else:
        arrivals = np.full(len(parsed.prompt), np.nan)
        meta["arrival"] = "none"
    meta["lengths"] = f"trace {table.path.name}"
    meta["warnings"] = warnings
    meta["transforms"] = []
    extra = {"trace_row": parsed.rows.astype(np.int64), **parsed.extra}
    workload = Workload.from_arrays(arrivals, parsed.prompt, parsed.output, parsed.labels,
                                    meta=meta, extra=extra)
    stamp(workload.meta, workload.frame)
    return workload
