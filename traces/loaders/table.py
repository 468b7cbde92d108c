"""Reading a trace file into a raw table, whatever its container (CSV, JSON Lines, Parquet, each
optionally gzip-compressed), and turning its columns into checked values.

A text file first passes the block scan of ``traces.files`` (UTF-8, no NUL bytes, bounded
lines, no decompression bomb), so no parser ever holds garbage. The column readers at the end
(``tokens``, ``seconds``, ``datetimes_seconds``, ``int_lists``) are the one validation layer
of trace values: every format reads its columns through them. Every problem is reported as
one line naming the file, the line (row for Parquet) and the column, as a ``WorkloadError``.
Nothing is read partially: a truncated gzip stream, a row with too many fields or a line that
is not JSON stops the load instead of yielding fewer requests.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import difflib
import gzip
import hashlib
import io
import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from traces.errors import WorkloadError
from traces.files import (BLOCK, GZIP_ERRORS, MAX_EXPANSION, TextScan, cut, file_problem,
                          gzip_failure, is_gzip, open_binary, read_head, scan_text, shorten)

PARQUET_MAGIC = b"PAR1"
CONTAINERS = ("csv", "jsonl", "parquet")
MAX_COLUMNS = 1000
# The bounds of a trace's values. A request of more tokens than this is no request any model
# serves, and float64 seconds below 2^33 (272 years: Unix-epoch seconds fit) keep microsecond
# resolution, so arrival times are never rounded together or absorbed by service times.
MAX_TOKENS = 10 ** 9
MAX_SECONDS = float(2 ** 33)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


_SCANS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("trace_scans", default=None)


@contextlib.contextmanager
def one_read():
    """Within this context each file is block-scanned once: the header, record and line-number
    readers share the scan (``read_trace`` reads a file inside one)."""
    token = _SCANS.set({} if _SCANS.get() is None else _SCANS.get())
    try:
        yield
    finally:
        _SCANS.reset(token)


def _scan(path: Path) -> TextScan:
    """The block scan of a text trace (``traces.files.scan_text``)."""
    scans = _SCANS.get()
    if scans is None:
        return scan_text(path, WorkloadError, "a CSV or JSON Lines trace")
    if str(path) not in scans:
        scans[str(path)] = scan_text(path, WorkloadError, "a CSV or JSON Lines trace")
    return scans[str(path)]


def _first_lines(path: Path, count: int) -> list[tuple[int, str]]:
    """The first ``count`` non-blank lines as (line number, text)."""
    scan = _scan(path)
    out = []
    if scan.first_offset < 0:
        return out
    try:
        with open_binary(path) as raw:
            raw.seek(scan.first_offset)
            with io.TextIOWrapper(raw, encoding="utf-8") as f:
                for number, line in enumerate(f, start=scan.first_line):
                    if line.strip():
                        out.append((number, line.rstrip("\r\n")))
                        if len(out) == count:
                            break
    except GZIP_ERRORS as e:
        raise gzip_failure(path, e, WorkloadError)
    return out


def sniff_container(path: Path) -> str:
    """csv, jsonl or parquet, from the content: Parquet's magic, a first character ``{``.
    A text file must first pass the block scan (UTF-8, no NUL bytes, bounded lines)."""
    problem = file_problem(path)
    if problem:
        raise WorkloadError(f"trace file {path} {problem}")
    head = read_head(path, 4, WorkloadError)
    if not head:
        raise WorkloadError(f"{path}: empty file")
    if head == PARQUET_MAGIC:
        return "parquet"
    lines = _first_lines(path, 1)
    if not lines:
        raise WorkloadError(f"{path}: empty file (no non-blank line)")
    return "jsonl" if lines[0][1].lstrip().startswith("{") else "csv"


@contextlib.contextmanager
def _parquet_source(path: Path):
    """What pyarrow opens: the path, or for a gzip-compressed Parquet file (Parquet needs
    random access) its bytes decompressed into a temporary file, with the bomb check."""
    if not is_gzip(path):
        yield str(path)
        return
    compressed = path.stat().st_size
    with tempfile.TemporaryFile() as tmp:
        try:
            with gzip.open(path, "rb") as f:
                size = 0
                while block := f.read(BLOCK):
                    size += len(block)
                    if size > 64 * BLOCK and size > MAX_EXPANSION * compressed:
                        raise WorkloadError(f"{path}: the gzip stream expands more than "
                                            f"{MAX_EXPANSION}-fold: a decompression bomb")
                    tmp.write(block)
        except GZIP_ERRORS as e:
            raise gzip_failure(path, e, WorkloadError)
        tmp.seek(0)
        yield tmp


def _parquet_failure(path: Path, e: Exception) -> WorkloadError:
    text = str(e).strip().splitlines()
    return WorkloadError(f"{path}: not a readable Parquet file, damaged or truncated "
                         f"({cut(text[0], 120) if text else type(e).__name__})")


def peek_columns(path: Path, container: str) -> list[str]:
    """Column names from the CSV header, the first JSON record, or the Parquet schema; a name
    given twice is refused (which of the two is meant?)."""
    if container == "parquet":
        import pyarrow.parquet as pq
        with _parquet_source(path) as source:
            try:
                names = list(pq.read_schema(source).names)
            except Exception as e:   # pyarrow raises its own error types for damaged files
                raise _parquet_failure(path, e)
        return _check_header(str(path), names)
    number, text = _first_lines(path, 1)[0]
    if container == "jsonl":
        return list(_json_record(path, number, text))
    return _check_header(f"{path} line {number}", [c.strip() for c in next(csv.reader([text]))])


def _check_header(where: str, names: list[str]) -> list[str]:
    if len(names) > MAX_COLUMNS:
        raise WorkloadError(f"{where}: {len(names):,} columns, more than the {MAX_COLUMNS} a "
                            f"trace may have")
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise WorkloadError(f"{where}: column {shorten(name)} appears twice (columns "
                                f"{seen[name]} and {i}); rename one")
        seen[name] = i
    return names


class _DuplicateKey(WorkloadError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _json_record(path: Path, number: int, text: str) -> dict:
    """One JSON Lines record: an object whose keys are unique."""
    try:
        record = _JSON.decode(text)
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg}, column {e.colno})"
    except _DuplicateKey as e:
        problem = f"key {shorten(e.args[0])} appears twice in one record"
    except RecursionError:
        problem = "JSON nested too deeply"
    except ValueError as e:   # e.g. an integer of more than 4300 digits
        problem = f"not valid JSON ({cut(str(e), 80)})"
    else:
        if type(record) is dict:
            return record
        problem = f"expected a JSON object, got {type(record).__name__}"
    raise WorkloadError(f"{path} line {number}: {problem}")


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
                                f"found columns: {cut(', '.join(map(shorten, found))) or 'none'}")


def read_table(path: Path, container: str, columns: list[str],
               categorical: tuple[str, ...] = ()) -> RawTable:
    """Read just ``columns`` (already checked to exist) from the file."""
    if container == "csv":
        frame = _read_csv(path, columns, categorical)
    elif container == "jsonl":
        frame = _read_jsonl(path, columns)
    else:
        import pyarrow.parquet as pq
        with _parquet_source(path) as source:
            try:
                frame = pq.read_table(source, columns=columns).to_pandas()
            except Exception as e:  # pyarrow raises its own error types for damaged files
                raise _parquet_failure(path, e)
    if len(frame) == 0:
        raise WorkloadError(f"{path}: no requests (the file has a header but no records)")
    return RawTable(path, container, frame.reset_index(drop=True))


def _read_csv(path: Path, columns: list[str], categorical: tuple[str, ...]) -> pd.DataFrame:
    # The C parser is fast and lean; repeated strings (model names) become categories. Every
    # column is parsed (no usecols): with usecols pandas silently ignores surplus fields, and a
    # row with too many fields must be an error, not a guess at which values were meant.
    dtype = {c: "category" for c in categorical}
    compression = "gzip" if is_gzip(path) else None
    try:
        frame = pd.read_csv(path, dtype=dtype or None, compression=compression,
                            skipinitialspace=True, encoding="utf-8-sig")
        return frame.rename(columns=str.strip)[columns]
    except pd.errors.ParserError as e:
        # "Error tokenizing data. C error: Expected 3 fields in line 5, saw 4"
        msg = str(e).split("C error:")[-1].strip()
        raise WorkloadError(f"{path}: malformed CSV: {cut(msg)}")
    except pd.errors.EmptyDataError:
        raise WorkloadError(f"{path}: empty file")
    except GZIP_ERRORS as e:
        raise gzip_failure(path, e, WorkloadError)


def _read_jsonl(path: Path, columns: list[str]) -> pd.DataFrame:
    """Line by line with Python's JSON parser, which (unlike a columnar reader) keeps integers
    exact, refuses a key given twice, and names the line of every problem."""
    rows: dict[str, list] = {c: [] for c in columns}
    scan = _scan(path)
    try:
        with open_binary(path) as raw:
            raw.seek(scan.first_offset)
            with io.TextIOWrapper(raw, encoding="utf-8") as f:
                for number, line in enumerate(f, start=scan.first_line):
                    if not line.strip():
                        continue
                    record = _json_record(path, number, line.rstrip("\r\n"))
                    for c in columns:   # an absent field is a missing value, named later
                        rows[c].append(record.get(c))
    except GZIP_ERRORS as e:
        raise gzip_failure(path, e, WorkloadError)
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in rows.items()})


# ---------------------------------------------------------------------------------------------
# The one validation layer of trace values: every loader takes its columns through these.
def tokens(table: RawTable, column: str) -> np.ndarray:
    """Token counts as int64: whole numbers in [0, MAX_TOKENS]."""
    return _numbers(table, column, integer=True).astype(np.int64)


def seconds(table: RawTable, column: str, per_second: float = 1.0) -> np.ndarray:
    """Times as float64 seconds (the column's numbers in units of 1 / ``per_second`` s: 1000
    for milliseconds), in [0, MAX_SECONDS]."""
    return _numbers(table, column, integer=False, per_second=per_second)


def _numbers(table: RawTable, column: str, *, integer: bool, per_second: float = 1.0
             ) -> np.ndarray:
    """The column as float64 after every check; the first bad cell is named. Refused: missing
    or non-numeric cells (in JSON Lines and Parquet, numbers written as text too), infinities,
    negative values, values beyond the bound and, for token counts, fractions."""
    series = table.frame[column]
    values = _as_float(series, typed=table.container != "csv")
    if per_second != 1.0:
        values = values / per_second
    bound = MAX_TOKENS if integer else MAX_SECONDS
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0) | (values > bound)
        if integer:
            bad |= values != np.floor(values)
    if bad.any():
        i = int(np.argmax(bad))
        _bad(table, i, column, _problem(series.iloc[i], values[i], integer, table.container))
    return values


_HUGE = float(np.finfo(np.float64).max)


def _typed_number(v) -> float:
    # A JSON or Parquet cell: numbers are numbers, never text or booleans.
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return float(v) if abs(v) < 2 ** 1000 else _HUGE
    if isinstance(v, (float, np.floating)):
        return float(v)
    return np.nan


def _as_float(series: pd.Series, typed: bool) -> np.ndarray:
    """float64 values, NaN where a cell is missing or not a number."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return np.full(len(series), np.nan)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if typed:
        cells = series.tolist()
        if set(map(type, cells)) <= {int, float}:       # the usual JSON column: plain numbers
            try:
                return np.array(cells, dtype=np.float64)
            except OverflowError:                        # an integer beyond float64
                pass
        return np.fromiter(map(_typed_number, cells), dtype=np.float64, count=len(cells))
    # CSV text: pandas left the column as strings because some cell is not a number.
    coerced = pd.to_numeric(series.map(_as_number_text), errors="coerce")
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan)


def _as_number_text(v):
    # Booleans would otherwise coerce to 0/1, and lists to errors deep in pandas.
    if isinstance(v, (bool, list, dict)):
        return "not-a-number"
    return v


def _missing(raw) -> bool:
    return raw is None or raw is pd.NA or (isinstance(raw, float) and np.isnan(raw)) or \
        (isinstance(raw, str) and not raw.strip())


_AS_TEXT = {"jsonl": " (a number written as text: drop the quotes)",
            "parquet": " (a number stored as text: store the column as numbers)"}


def _problem(raw, value: float, integer: bool, container: str) -> str:
    """What is wrong with one cell (``value``: its float, scaled to seconds for times)."""
    if _missing(raw):
        return "missing value"
    if np.isnan(value):
        as_text = container in _AS_TEXT and isinstance(raw, str) and _looks_numeric(raw)
        return f"expected a number, got {show(raw)}" + (_AS_TEXT[container] if as_text else "")
    if not np.isfinite(value):
        return f"not a finite number: {show(raw)}"
    if value < 0:
        return f"negative value {show(raw)}"
    if integer and value > MAX_TOKENS:
        return f"{show(raw)} tokens, more than the {MAX_TOKENS:,} a request may have"
    if value > MAX_SECONDS:
        return (f"time {show(raw)} ({value:.3g} s) is beyond 2^33 s (272 years), where float64 "
                f"seconds would lose microseconds (a wrong time unit?)")
    return f"expected a whole number of tokens, got {show(raw)}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def show(value) -> str:
    """A cell for a message: numpy scalars as plain Python values, cut to a readable length."""
    return shorten(value.item() if isinstance(value, np.generic) else value)


def int_lists(table: RawTable, column: str) -> np.ndarray:
    """A column of lists of integers (Mooncake's prefix-block ``hash_ids``), as an object array
    of Python lists; text, numbers, booleans or nested lists in a cell are refused."""
    series = table.frame[column]
    cells = [c.tolist() if isinstance(c, np.ndarray) else c for c in series]
    out = np.empty(len(cells), dtype=object)
    if all(type(c) is list for c in cells):
        flat = list(itertools.chain.from_iterable(cells))
        if set(map(type, flat)) <= {int} and (not flat or (-2 ** 63 <= min(flat)
                                                           and max(flat) < 2 ** 63)):
            for i, cell in enumerate(cells):   # (a slice assignment would make lists rows)
                out[i] = cell
            return out
    for i, cell in enumerate(cells):      # name the first bad cell
        if not (isinstance(cell, list) and all(type(x) is int for x in cell)):
            _bad(table, i, column, "missing value" if cell is None else
                 f"expected a list of integers (block hashes), got {show(series.iloc[i])}")
        wide = next((x for x in cell if not -2 ** 63 <= x < 2 ** 63), None)
        if wide is not None:
            _bad(table, i, column, f"block hash {show(wide)} is outside the signed 64-bit range "
                                   f"[-2^63, 2^63)")
    raise AssertionError("unreachable: a bad cell was found above")


def block_lists_fit(table: RawTable, column: str, lists: np.ndarray, prompt: np.ndarray,
                    block_tokens: int) -> None:
    """Refuse a row whose list names more blocks than its prompt has (a hash per
    ``block_tokens`` tokens, the last block partial): the extra ones would be dropped unread.
    Fewer are allowed: the prompt's tail is then its own."""
    counts = np.fromiter(map(len, lists), np.int64, len(lists))
    most = -(-prompt // block_tokens)
    # (A row of no prompt tokens is the loaders' to drop, with its warning: not checked.)
    over = np.flatnonzero((counts > most) & (prompt > 0))
    if len(over):
        i = int(over[0])
        _bad(table, i, column, f"{counts[i]} block hashes for a prompt of {prompt[i]} tokens: "
                               f"at most {most[i]}, one per {block_tokens} tokens")


# Time-zone suffix of an ISO 8601 date-time: Z, +HH, +HHMM or +HH:MM after the time of day;
# the second pattern is a zone of offset 0 (UTC).
_ZONED = r"\d:\d\d(?::\d\d(?:[.,]\d*)?)?\s*(?:[Zz]|[+-]\d\d(?::?\d\d)?)\s*$"
_UTC = r"\d:\d\d(?::\d\d(?:[.,]\d*)?)?\s*(?:[Zz]|[+-]00(?::?00)?)\s*$"


def datetimes_seconds(table: RawTable, column: str) -> tuple[np.ndarray, str]:
    """Date-time strings (ISO 8601, any number of fractional digits, optional zone) to seconds
    after the earliest one, and that earliest time.

    Times without a zone are read as UTC, so they may stand beside UTC ones (``+00:00``, ``Z``)
    but not beside other offsets, where a naive time's instant would be a guess: refused.
    The subtraction happens in integer nanoseconds, so the strings' full precision (100 ns in
    the Azure traces) survives, which float seconds since the epoch would not.
    """
    series = table.frame[column]
    if pd.api.types.is_datetime64_any_dtype(series.dtype):     # a Parquet timestamp column
        parsed = pd.to_datetime(series, utc=True)
    else:
        # In JSON Lines or Parquet a number is no date-time (pandas would take it as epoch ns).
        text = series if table.container == "csv" else \
            series.map(lambda v: v if isinstance(v, str) else None)
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = series.iloc[i]
        _bad(table, i, column, "missing value" if _missing(raw) else
             f"expected a date-time like 2023-11-16 18:15:46.6805900, got {show(raw)}")
    if not pd.api.types.is_datetime64_any_dtype(series.dtype):
        _check_zones(table, column)
    ns = parsed.dt.as_unit("ns").astype("int64").to_numpy()
    origin = int(ns.min())
    offsets = (ns - origin).astype(np.float64) / 1e9
    if offsets.max() > MAX_SECONDS:
        i = int(np.argmax(offsets))
        _bad(table, i, column, f"{show(series.iloc[i])} is {offsets[i]:.3g} s after the earliest "
             f"time, beyond 2^33 s (272 years)")
    return offsets, pd.Timestamp(origin, tz="UTC").isoformat()


def _check_zones(table: RawTable, column: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    series = table.frame[column]
    strings = pa.array(series, type=pa.string())
    naive = ~pc.match_substring_regex(strings, _ZONED).to_numpy(zero_copy_only=False)
    offset = ~naive & ~pc.match_substring_regex(strings, _UTC).to_numpy(zero_copy_only=False)
    if naive.any() and offset.any():
        first_naive, first_offset = int(np.argmax(naive)), int(np.argmax(offset))
        i, other = max(first_naive, first_offset), min(first_naive, first_offset)
        _bad(table, i, column, f"{show(series.iloc[i])} and {show(series.iloc[other])} (record "
             f"{other + 1}) mix a time without a zone and one with a non-UTC offset; give every "
             f"time its zone (a time without one is read as UTC)")


def _bad(table: RawTable, row: int, column: str, problem: str):
    raise WorkloadError(f"{table.where(row, column)}: {problem}")
