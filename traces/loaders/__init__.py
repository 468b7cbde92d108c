"""Trace loaders: every common public trace format to one ``Workload``.

``load_trace(path)`` detects the format from the file's header (CSV), first record (JSONL) or
schema (Parquet), reads gzip-compressed files transparently, and returns requests with arrival
seconds from the trace's first request. The detection rule: among the formats whose required
columns are all present, the one requiring the most columns wins (so a Mooncake file, which
has ``hash_ids``, is ``mooncake`` rather than ``vllm-trace``; a Vidur file with ``arrived_at``
is ``vidur`` rather than ``vidur-lengths``). Column options (``prompt=``, ``output=``,
``arrival=``) select the generic format. A file with at least half of one format's columns is
reported as that format with its missing column named. ``format=`` overrides detection.
"""

from __future__ import annotations

from pathlib import Path

from traces.arrivals import ArrivalProcess
from traces.errors import WorkloadError
from traces.files import shorten
from traces.lengths import EmpiricalLengths
from traces.loaders import azure, burstgpt, generic, mooncake, vidur, vllm_bench
from traces.loaders.base import TraceFormat, finish
from traces.loaders.table import (one_read, peek_columns, read_table, require_columns,
                                  sniff_container)
from traces.transforms import generate_arrivals, jitter
from traces.workload import Workload

FORMATS: dict[str, TraceFormat] = {f.name: f for f in (
    azure.FORMAT, mooncake.FORMAT, mooncake.VLLM_TRACE, vidur.FORMAT, vidur.LENGTHS,
    burstgpt.FORMAT, vllm_bench.FORMAT, generic.FORMAT)}


def trace_format(name: str) -> TraceFormat:
    if name not in FORMATS:
        raise WorkloadError(f"unknown trace format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def detect_format(path: str | Path, columns: list[str] | None = None,
                  options: dict | None = None) -> TraceFormat:
    """The format of a file, by the rule in this module's docstring."""
    path = Path(path)
    if columns is None:
        columns = peek_columns(path, sniff_container(path))
    if options and set(options) & {"prompt", "output", "arrival"}:
        return FORMATS["generic"]
    present = set(columns)
    matches = [f for f in FORMATS.values() if f.columns and set(f.columns) <= present]
    if not matches:
        # A near miss (a misnamed column) is reported against the format it nearly is.
        near = max((f for f in FORMATS.values() if f.columns),
                   key=lambda f: len(set(f.columns) & present) / len(f.columns))
        if len(set(near.columns) & present) >= len(near.columns) / 2:
            require_columns(path, columns, near.columns, near.name, sniff_container(path))
        shown = ", ".join(map(shorten, columns[:8])) + (", ..." if len(columns) > 8 else "")
        raise WorkloadError(
            f"{path}: cannot tell the trace format from its columns ({shown}); give --format "
            f"({', '.join(FORMATS)}), or map columns with -T prompt=COL -T output=COL "
            f"[-T arrival=COL]")
    return max(matches, key=lambda f: len(f.columns))


def read_trace(path: str | Path, format: str | None = None, options: dict | None = None, *,
               strict: bool = False, seed: int = 0) -> Workload:
    """A trace file as a Workload; for a length-only file the arrival times are NaN and
    ``meta['arrival'] == 'none'`` (``load_trace`` pairs it with an arrival process)."""
    path = Path(path)
    with one_read():
        container = sniff_container(path)
        columns = peek_columns(path, container)
        fmt = trace_format(format) if format else detect_format(path, columns, options)
        opts = fmt.check_options(options)
        required, optional = fmt.needed_columns(opts)
        require_columns(path, columns, required, fmt.name, container)
        table = read_table(path, container, [*required, *(c for c in optional if c in columns)],
                           fmt.categorical)
        workload = finish(table, fmt, fmt.parse(table, opts, seed), opts, strict)
    workload.meta["container"] = container
    if opts.get("jitter"):
        workload = jitter(workload, opts["jitter"], seed)
    return workload


def load_trace(path: str | Path, format: str | None = None, options: dict | None = None, *,
               strict: bool = False, seed: int = 0,
               arrival: ArrivalProcess | None = None) -> Workload:
    """A replayable workload from a trace file. A length-only file needs ``arrival``, the
    process that generates its arrival times (seeded by ``seed``); the file's lengths are kept
    in file order."""
    workload = read_trace(path, format, options, strict=strict, seed=seed)
    if workload.meta["arrival"] == "none":
        if arrival is None:
            raise WorkloadError(f"{path} has no arrival times (format "
                                f"{workload.meta['format']}: lengths only); give an arrival "
                                f"process (--arrival, --rate)")
        workload = generate_arrivals(workload, arrival, seed)
    return workload


def load_lengths(path: str | Path, format: str | None = None,
                 options: dict | None = None) -> EmpiricalLengths:
    """The (prompt, output) pairs of any trace file, to sample lengths from."""
    w = read_trace(path, format, options)
    return EmpiricalLengths(w.frame["prompt_tokens"].to_numpy(), w.frame["output_tokens"].to_numpy(),
                            source=Path(path).name)


__all__ = ["FORMATS", "TraceFormat", "detect_format", "load_lengths", "load_trace", "read_trace",
           "trace_format"]
