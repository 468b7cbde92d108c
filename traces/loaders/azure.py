"""Azure LLM inference traces, 2023 (Splitwise, ISCA 2024) and 2024 (DynamoLLM).

Columns ``TIMESTAMP, ContextTokens, GeneratedTokens``; timestamps are date-times with up to
seven fractional digits (100 ns), e.g. ``2023-11-16 18:15:46.6805900``.
"""

from __future__ import annotations

from traces.loaders.base import Parsed, TraceFormat
from traces.loaders.table import RawTable, datetimes_seconds, tokens


def parse(table: RawTable, options: dict, seed: int) -> Parsed:
    arrival, origin = datetimes_seconds(table, "TIMESTAMP")
    return Parsed(arrival, tokens(table, "ContextTokens"), tokens(table, "GeneratedTokens"),
                  meta={"start_time": origin})


FORMAT = TraceFormat(
    name="azure",
    description="Azure LLM inference trace 2023/2024: TIMESTAMP, ContextTokens, GeneratedTokens",
    columns=("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    parse=parse,
)
