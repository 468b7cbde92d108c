"""BurstGPT (Wang et al., 2024): ChatGPT and GPT-4 requests served through Azure OpenAI.

Columns ``Timestamp`` (seconds from midnight of the first day), ``Model``, ``Request tokens``,
``Response tokens``, ``Total tokens``, ``Log Type``. A response of 0 tokens marks a failed
request: dropped by default (nothing was generated, and 0-token outputs cannot be simulated),
or kept as a prefill-only request (1 output token) with ``failed=keep``. ``model`` and
``log_type`` keep only the named values (comma-separated). The model becomes the label.
Timestamps are whole seconds: ``jitter=1`` spreads the requests of each second over it.
"""

from __future__ import annotations

import numpy as np

from traces.errors import WorkloadError
from traces.loaders.base import Option, Parsed, TraceFormat, jitter_option
from traces.loaders.table import RawTable, seconds, tokens


def _selected(table: RawTable, column: str, wanted: str) -> np.ndarray:
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    values = table.frame[column]
    present = sorted(map(str, values.dropna().unique()))
    unknown = [n for n in names if n not in present]
    if unknown:
        raise WorkloadError(f"{table.path}: no request has {column} {unknown[0]!r}; "
                            f"present: {', '.join(present)}")
    return values.isin(names).to_numpy()


def parse(table: RawTable, options: dict, seed: int) -> Parsed:
    frame = table.frame
    parsed = Parsed(seconds(table, "Timestamp"),
                    tokens(table, "Request tokens"), tokens(table, "Response tokens"),
                    labels=frame["Model"].astype(object).to_numpy())
    if "Log Type" in frame.columns:
        parsed.extra["log_type"] = frame["Log Type"].astype(object).to_numpy()
    dropped = {}
    keep = np.ones(len(table), dtype=bool)
    for option, column in (("model", "Model"), ("log_type", "Log Type")):
        if options[option]:
            if column not in frame.columns:
                raise WorkloadError(f"{table.path}: option {option} needs a {column!r} column")
            mask = _selected(table, column, options[option])
            dropped[option] = int((keep & ~mask).sum())
            keep &= mask
    failed = parsed.output == 0
    if options["failed"] == "drop":
        dropped["failed"] = int((keep & failed).sum())
        keep &= ~failed
    elif options["failed"] == "keep":
        parsed.output = np.where(failed, 1, parsed.output)
        parsed.meta["failed_as_prefill_only"] = int((keep & failed).sum())
    else:
        raise WorkloadError(f"trace option failed must be drop or keep, got {options['failed']!r}")
    parsed.meta["dropped"] = dropped
    return parsed.keep(keep)


FORMAT = TraceFormat(
    name="burstgpt",
    description="BurstGPT CSV: Timestamp, Model, Request tokens, Response tokens, Total tokens, "
                "Log Type",
    columns=("Timestamp", "Model", "Request tokens", "Response tokens"),
    optional_columns=("Log Type",),
    categorical=("Model", "Log Type"),
    parse=parse,
    options=(
        Option("model", str, "", "keep only these models, comma-separated (ChatGPT, GPT-4)"),
        Option("log_type", str, "", "keep only these log types (Conversation log, API log)"),
        Option("failed", str, "drop", "failed requests (0 response tokens): drop, or keep as "
                                      "prefill-only (1 output token)"),
        jitter_option("BurstGPT: 1, its timestamps are whole seconds"),
    ),
)
