"""Any CSV, JSONL or Parquet file with an explicit column mapping, e.g.
``-T arrival=ts -T prompt=input_tokens -T output=output_tokens -T time_unit=ms``.

Without ``arrival`` the file is length-only (pair it with a generated arrival process).
``time_unit`` is s, ms, us or ns for numbers, or ``datetime`` for date-time strings.
"""

from __future__ import annotations

from traces.errors import WorkloadError
from traces.loaders.base import Option, Parsed, TraceFormat
from traces.loaders.table import RawTable, datetimes_seconds, seconds, tokens

UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}      # per second


def columns_for(options: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not (options["prompt"] and options["output"]):
        raise WorkloadError("format generic needs the column mapping: -T prompt=COLUMN "
                            "-T output=COLUMN [-T arrival=COLUMN] [-T label=COLUMN]")
    required = tuple(options[k] for k in ("arrival", "prompt", "output", "label") if options[k])
    return required, ()


def parse(table: RawTable, options: dict, seed: int) -> Parsed:
    prompt = tokens(table, options["prompt"])
    output = tokens(table, options["output"])
    arrival = None
    parsed_meta = {"columns": {k: options[k] for k in ("arrival", "prompt", "output", "label")
                               if options[k]}}
    if options["arrival"]:
        unit = options["time_unit"]
        if unit == "datetime":
            arrival, origin = datetimes_seconds(table, options["arrival"])
            parsed_meta["start_time"] = origin
        elif unit in UNITS:
            arrival = seconds(table, options["arrival"], per_second=UNITS[unit])
        else:
            raise WorkloadError(f"trace option time_unit must be one of "
                                f"{', '.join([*UNITS, 'datetime'])}; got {unit!r}")
    labels = None
    if options["label"]:
        labels = table.frame[options["label"]].astype(object).to_numpy()
    return Parsed(arrival, prompt, output, labels=labels, meta=parsed_meta)


FORMAT = TraceFormat(
    name="generic",
    description="any CSV/JSONL/Parquet with a column mapping (-T prompt=.. -T output=.. "
                "[-T arrival=..])",
    columns=(),
    parse=parse,
    columns_for=columns_for,
    options=(
        Option("arrival", str, "", "column of arrival times (omit for a length-only file)"),
        Option("prompt", str, "", "column of prompt token counts"),
        Option("output", str, "", "column of output token counts"),
        Option("label", str, "", "column of request labels (optional)"),
        Option("time_unit", str, "s", "unit of the arrival column: s, ms, us, ns or datetime"),
    ),
)
