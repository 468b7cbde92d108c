"""Reading a trace file into a raw table, whatever its container (CSV, JSON Lines, Parquet, each
optionally gzip-compressed), and turning its columns into checked numbers.

Every problem is reported as one line naming the file, the line (row for Parquet) and the
column, as a ``WorkloadError``. Nothing is read partially: a truncated gzip stream, a row with
too many fields or a line that is not JSON stops the load instead of yielding fewer requests.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from traces.errors import WorkloadError

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
CONTAINERS = ("csv", "jsonl", "parquet")
# Errors a damaged gzip stream or an unreadable file raise while being read.
_READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: Path):
    """The file's bytes, decompressed if it is gzip (recognised by its magic number, not name)."""
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _read_failure(path: Path, e: Exception) -> WorkloadError:
    if isinstance(e, UnicodeDecodeError):
        return WorkloadError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})")
    if isinstance(e, EOFError):
        return WorkloadError(f"{path}: the gzip stream is truncated (the file was cut short); "
                             f"refusing a partial read")
    return WorkloadError(f"{path}: damaged compressed data ({e})")


def _first_lines(path: Path, count: int) -> list[tuple[int, str]]:
    """The first ``count`` non-blank lines as (line number, text)."""
    out = []
    try:
        with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    out.append((number, line.rstrip("\r\n")))
                    if len(out) == count:
                        break
    except _READ_ERRORS as e:
        raise _read_failure(path, e)
    return out


def sniff_container(path: Path) -> str:
    """csv, jsonl or parquet, from the content: Parquet's magic, a first character ``{``."""
    if not path.is_file():
        raise WorkloadError(f"trace file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise WorkloadError(f"{path}: empty file")
    if head == PARQUET_MAGIC:
        return "parquet"
    lines = _first_lines(path, 1)
    if not lines:
        raise WorkloadError(f"{path}: empty file (no non-blank line)")
    return "jsonl" if lines[0][1].lstrip().startswith("{") else "csv"


def peek_columns(path: Path, container: str) -> list[str]:
    """Column names from the CSV header, the first JSON record, or the Parquet schema."""
    if container == "parquet":
        import pyarrow.parquet as pq
        return list(pq.read_schema(path).names)
    number, text = _first_lines(path, 1)[0]
    if container == "jsonl":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{path} line {number}: not valid JSON ({e.msg}, column {e.colno})")
        if not isinstance(record, dict):
            raise WorkloadError(f"{path} line {number}: expected a JSON object per line")
        return list(record)
    return [c.strip() for c in next(csv.reader([text]))]


@dataclass
class RawTable:
    """A trace file's columns as read; row ``i`` is the i-th record in file order."""

    path: Path
    container: str
    frame: pd.DataFrame

    def where(self, row: int, column: str | None = None) -> str:
        """``FILE line N, column 'C'`` for error messages (``row N`` for Parquet)."""
        if self.container == "parquet":
            place = f"{self.path} row {row + 1}"
        else:
            # Records are the non-blank lines; a CSV's first one is the header.
            skip = 2 if self.container == "csv" else 1
            place = f"{self.path} line {_nth_nonblank_line(self.path, row + skip)}"
        return place if column is None else f"{place}, column {column!r}"

    def __len__(self) -> int:
        return len(self.frame)


def _nth_nonblank_line(path: Path, n: int) -> int:
    lines = _first_lines(path, n)
    return lines[-1][0] if len(lines) == n else -1


def require_columns(path: Path, found: list[str], required: tuple[str, ...], fmt: str,
                    container: str) -> None:
    """One line naming the first missing column, what is there, and the likely misspelling."""
    for col in required:
        if col not in found:
            spare = [c for c in found if c not in required]   # a required one is no typo
            close = [c for c in spare if c.lower() == col.lower()] or \
                difflib.get_close_matches(col, spare, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = str(path) if container == "parquet" else \
                f"{path} line {_nth_nonblank_line(path, 1)}"
            raise WorkloadError(f"{where}: missing column {col!r} for format {fmt}{hint}; "
                                f"found columns: {', '.join(map(repr, found)) or 'none'}")


def read_table(path: Path, container: str, columns: list[str],
               categorical: tuple[str, ...] = ()) -> RawTable:
    """Read just ``columns`` (already checked to exist) from the file."""
    if container == "csv":
        frame = _read_csv(path, columns, categorical)
    elif container == "jsonl":
        frame = _read_jsonl(path, columns)
    else:
        import pyarrow.parquet as pq
        try:
            frame = pq.read_table(path, columns=columns).to_pandas()
        except Exception as e:  # pyarrow raises its own error types for damaged files
            raise WorkloadError(f"{path}: cannot read Parquet file ({str(e).splitlines()[0]})")
    if len(frame) == 0:
        raise WorkloadError(f"{path}: no requests (the file has a header but no records)")
    return RawTable(path, container, frame.reset_index(drop=True))


def _read_csv(path: Path, columns: list[str], categorical: tuple[str, ...]) -> pd.DataFrame:
    # The C parser is fast and lean; repeated strings (model names) become categories. Every
    # column is parsed (no usecols): with usecols pandas silently ignores surplus fields, and a
    # row with too many fields must be an error, not a guess at which values were meant.
    dtype = {c: "category" for c in categorical}
    compression = "gzip" if _is_gzip(path) else None
    try:
        frame = pd.read_csv(path, dtype=dtype or None, compression=compression,
                            skipinitialspace=True, encoding="utf-8-sig")
        return frame.rename(columns=str.strip)[columns]
    except pd.errors.ParserError as e:
        # "Error tokenizing data. C error: Expected 3 fields in line 5, saw 4"
        msg = str(e).split("C error:")[-1].strip()
        raise WorkloadError(f"{path}: malformed CSV: {msg}")
    except pd.errors.EmptyDataError:
        raise WorkloadError(f"{path}: empty file")
    except _READ_ERRORS as e:
        raise _read_failure(path, e)


def _read_jsonl(path: Path, columns: list[str]) -> pd.DataFrame:
    """pyarrow's JSON reader when the file is clean; otherwise a line-by-line pass that names the
    first line that does not parse (pyarrow reports no line numbers)."""
    import pyarrow as pa
    import pyarrow.json as pj
    try:
        with open_binary(path) as f:
            table = pj.read_json(f, read_options=pj.ReadOptions(block_size=1 << 24))
        missing = [c for c in columns if c not in table.column_names]
        if not missing:
            return table.select(columns).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass   # the slow pass below finds and names the problem
    except _READ_ERRORS as e:
        raise _read_failure(path, e)
    return _read_jsonl_slowly(path, columns)


def _read_jsonl_slowly(path: Path, columns: list[str]) -> pd.DataFrame:
    rows: dict[str, list] = {c: [] for c in columns}
    try:
        with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    raise WorkloadError(f"{path} line {number}: not valid JSON ({e.msg}, "
                                        f"column {e.colno})")
                if not isinstance(record, dict):
                    raise WorkloadError(f"{path} line {number}: expected a JSON object, got "
                                        f"{type(record).__name__}")
                for c in columns:   # an absent field is a missing value, named later
                    rows[c].append(record.get(c))
    except _READ_ERRORS as e:
        raise _read_failure(path, e)
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in rows.items()})


# ---------------------------------------------------------------------------------------------
def numbers(table: RawTable, column: str, *, integer: bool, allow_negative: bool = False
            ) -> np.ndarray:
    """A column as int64 (token counts) or float64 (times); the first bad cell is named.

    Rejected: missing or non-numeric cells, infinities, negative values (unless allowed) and,
    for integers, fractional values.
    """
    series = table.frame[column]
    if pd.api.types.is_bool_dtype(series.dtype):
        _bad(table, 0, column, f"expected a number, got {show(series.iloc[0])}")
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            _bad(table, i, column, "missing value" if np.isnan(values[i]) else
                 f"not a finite number: {show(series.iloc[i])}")
    else:
        coerced = pd.to_numeric(series.map(_as_number_text), errors="coerce")
        values = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raw = series.iloc[i]
            missing = raw is None or (isinstance(raw, float) and np.isnan(raw)) or \
                (isinstance(raw, str) and not raw.strip())
            _bad(table, i, column, "missing value" if missing else
                 f"expected a number, got {show(raw)}")
    if not allow_negative:
        neg = values < 0
        if neg.any():
            i = int(np.argmax(neg))
            _bad(table, i, column, f"negative value {show(series.iloc[i])}")
    if integer:
        frac = values != np.floor(values)
        if frac.any():
            i = int(np.argmax(frac))
            _bad(table, i, column, f"expected a whole number of tokens, got {show(series.iloc[i])}")
        return values.astype(np.int64)
    return values


def show(value) -> str:
    """A cell for a message: numpy scalars as plain Python values."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _as_number_text(v):
    # JSON booleans would otherwise coerce to 0/1, and lists to errors deep in pandas.
    if isinstance(v, (bool, list, dict)):
        return "not-a-number"
    return v


def datetimes_seconds(table: RawTable, column: str) -> tuple[np.ndarray, str]:
    """Date-time strings (ISO 8601, any number of fractional digits, optional zone; naive times
    are taken as UTC) to seconds after the earliest one, and that earliest time.

    The subtraction happens in integer nanoseconds, so the strings' full precision (100 ns in
    the Azure traces) survives, which float seconds since the epoch would not.
    """
    series = table.frame[column]
    parsed = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = series.iloc[i]
        _bad(table, i, column, "missing value" if pd.isna(raw) else
             f"expected a date-time like 2023-11-16 18:15:46.6805900, got {show(raw)}")
    ns = parsed.dt.as_unit("ns").astype("int64").to_numpy()
    origin = int(ns.min())
    return (ns - origin).astype(np.float64) / 1e9, pd.Timestamp(origin, tz="UTC").isoformat()


def _bad(table: RawTable, row: int, column: str, problem: str):
    raise WorkloadError(f"{table.where(row, column)}: {problem}")
