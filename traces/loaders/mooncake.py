"""Mooncake (FAST'25) traces and the same timed-trace JSONL that ``vllm bench serve`` replays.

One JSON object per line: ``timestamp`` (ms from the trace start), ``input_length``,
``output_length`` and, in Mooncake's files, ``hash_ids``: the hashes of the prompt's 512-token
blocks (equal hashes = a shared prefix). They are kept as a column for a prefix-cache model.

Mooncake's timestamps come in 3-second buckets (about ten requests share each value); the
``jitter`` option spreads each request uniformly inside its bucket, seeded, so that a replay
does not see ten simultaneous arrivals every 3 s.
"""

from __future__ import annotations

import numpy as np

from traces.errors import WorkloadError
from traces.loaders.base import Option, Parsed, TraceFormat
from traces.loaders.table import RawTable, numbers
from traces.workload import stream_rng

BUCKET_S = 3.0


def parse(table: RawTable, options: dict, seed: int) -> Parsed:
    arrival = numbers(table, "timestamp", integer=False) / 1000.0
    parsed = Parsed(arrival,
                    numbers(table, "input_length", integer=True),
                    numbers(table, "output_length", integer=True),
                    np.arange(len(table)))
    if "hash_ids" in table.frame.columns:
        parsed.extra["hash_ids"] = table.frame["hash_ids"].to_numpy(dtype=object)
    width = options["jitter"]
    if not (np.isfinite(width) and width >= 0):
        raise WorkloadError(f"trace option jitter must be a number of seconds >= 0, got {width!r}")
    if width:
        # Each request lands uniformly in [t, t + width): the bucket its timestamp opens.
        rng = stream_rng(seed, "jitter")
        parsed.arrival_s = arrival + rng.uniform(0.0, width, size=len(arrival))
        parsed.meta["jitter_s"] = width
    return parsed


def _jitter_option(default_width: float) -> Option:
    return Option("jitter", float, 0.0,
                  f"spread requests uniformly over this many seconds after their timestamp "
                  f"(Mooncake: {default_width:g}, its bucket width; 0 = off); seeded by --seed")


FORMAT = TraceFormat(
    name="mooncake",
    description="Mooncake/FAST'25 JSONL: timestamp (ms), input_length, output_length, hash_ids",
    columns=("timestamp", "input_length", "output_length", "hash_ids"),
    parse=parse,
    options=(_jitter_option(BUCKET_S),),
)

VLLM_TRACE = TraceFormat(
    name="vllm-trace",
    description="vllm bench timed trace JSONL: timestamp (ms), input_length, output_length",
    columns=("timestamp", "input_length", "output_length"),
    optional_columns=("hash_ids",),
    parse=parse,
    options=(_jitter_option(BUCKET_S),),
)
