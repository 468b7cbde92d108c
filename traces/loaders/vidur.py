"""Vidur's processed traces and the Vidur/etalon length-only files.

- ``vidur``: ``arrived_at`` (seconds from the start), ``num_prefill_tokens``,
  ``num_decode_tokens`` (e.g. ``splitwise_conv.csv``, the Azure conv trace in Vidur's format).
- ``vidur-lengths``: ``num_prefill_tokens, num_decode_tokens[, num_total_tokens, pd_ratio]``
  with no times (ShareGPT, arXiv summarization, BWB); replay them with a generated arrival
  process.
"""

from __future__ import annotations

from traces.loaders.base import Parsed, TraceFormat
from traces.loaders.table import RawTable, seconds, tokens


def _lengths(table: RawTable):
    return tokens(table, "num_prefill_tokens"), tokens(table, "num_decode_tokens")


def parse(table: RawTable, options: dict, seed: int) -> Parsed:
    prompt, output = _lengths(table)
    return Parsed(seconds(table, "arrived_at"), prompt, output)


def parse_lengths(table: RawTable, options: dict, seed: int) -> Parsed:
    prompt, output = _lengths(table)
    return Parsed(None, prompt, output)


FORMAT = TraceFormat(
    name="vidur",
    description="Vidur processed trace: arrived_at (s), num_prefill_tokens, num_decode_tokens",
    columns=("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    parse=parse,
)

LENGTHS = TraceFormat(
    name="vidur-lengths",
    description="Vidur/etalon length-only file: num_prefill_tokens, num_decode_tokens (no times)",
    columns=("num_prefill_tokens", "num_decode_tokens"),
    parse=parse_lengths,
    has_arrivals=False,
)
