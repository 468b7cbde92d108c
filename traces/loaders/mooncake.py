"""Mooncake (FAST'25) traces and the same timed-trace JSONL that ``vllm bench serve`` replays.

One JSON object per line: ``timestamp`` (ms from the trace start), ``input_length``,
``output_length`` and, in Mooncake's files, ``hash_ids``: the hashes of the prompt's 512-token
blocks (equal hashes = a shared prefix). They are kept as a column for a prefix-cache model.

Mooncake's timestamps come in 3-second buckets (about ten requests share each value); the
``jitter=3`` option spreads each request uniformly inside its bucket, seeded, so that a replay
does not see ten simultaneous arrivals every 3 s (``traces.transforms.jitter``).
"""

from __future__ import annotations

from traces.loaders.base import Parsed, TraceFormat, jitter_option
from traces.loaders.table import RawTable, block_lists_fit, int_lists, seconds, tokens
from traces.workload import MOONCAKE_BLOCK_TOKENS


def parse(table: RawTable, options: dict, seed: int) -> Parsed:
    parsed = Parsed(seconds(table, "timestamp", per_second=1000.0),
                    tokens(table, "input_length"), tokens(table, "output_length"))
    if "hash_ids" in table.frame.columns:
        ids = int_lists(table, "hash_ids")
        block_lists_fit(table, "hash_ids", ids, parsed.prompt, MOONCAKE_BLOCK_TOKENS)
        parsed.extra["hash_ids"] = ids
    return parsed


FORMAT = TraceFormat(
    name="mooncake",
    description="Mooncake/FAST'25 JSONL: timestamp (ms), input_length, output_length, hash_ids",
    columns=("timestamp", "input_length", "output_length", "hash_ids"),
    parse=parse,
    options=(jitter_option("Mooncake: 3, its bucket width"),),
)

VLLM_TRACE = TraceFormat(
    name="vllm-trace",
    description="vllm bench timed trace JSONL: timestamp (ms), input_length, output_length",
    columns=("timestamp", "input_length", "output_length"),
    optional_columns=("hash_ids",),
    parse=parse,
    options=(jitter_option("Mooncake: 3, its bucket width"),),
)
