"""The checks every user input file passes before a parser sees it, and the shortening of values
quoted in error lines.

A file must be a regular file (a FIFO or a device cannot be read twice, and ``/dev/null`` holds
nothing), readable, and, for text, UTF-8 without NUL bytes and with lines of bounded length.
Text is checked by ``scan_text`` in blocks of ``BLOCK`` bytes, so garbage of any size (a
gigabyte of NUL bytes, one endless line, a decompression bomb) is refused in constant memory,
before pandas or a YAML parser would try to hold it. Each function takes the error type to
raise (``WorkloadError`` for traces, ``ConfigError`` for config files).
"""

from __future__ import annotations

import codecs
import gzip
import os
import reprlib
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 1 << 20
MAX_LINE_BYTES = 4 << 20     # a vllm-custom prompt of ~1M tokens; any other record is < 1 KiB
MAX_EXPANSION = 100          # decompressed / compressed bytes: the reference traces gzip 2-4 fold
GZIP_MAGIC = b"\x1f\x8b"
_BLANK = b" \t\r\n"
# Errors a damaged gzip stream raises while being read.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = 6
_short.maxlevel = 3


def shorten(value) -> str:
    """``repr`` of a value quoted in a message, cut to a readable length (never the whole of a
    200 MB field: reprlib stops at the limit instead of building the full repr)."""
    return _short.repr(value)


def cut(text: str, limit: int = 200) -> str:
    """Text for a message, at most about ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input file ('does not exist', 'is a directory', ...),
    or None when it is a readable regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a parent is not a folder)"
    except PermissionError:
        return "cannot be read (permission denied)"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "not a regular file")
        return f"is {kind}, not a regular file (give a file on disk)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: Path):
    """The file's bytes, decompressed if it is gzip (recognised by its magic number, not name)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def read_head(path: Path, size: int, error: type[Exception]) -> bytes:
    """The first ``size`` (decompressed) bytes."""
    try:
        with open_binary(path) as f:
            return f.read(size)
    except GZIP_ERRORS as e:
        raise gzip_failure(path, e, error)


def gzip_failure(path, e: Exception, error: type[Exception]) -> Exception:
    if isinstance(e, EOFError):
        return error(f"{path}: the gzip stream is truncated (the file was cut short); refusing "
                     f"a partial read")
    return error(f"{path}: damaged compressed data ({str(e).splitlines()[0] if str(e) else e})")


@dataclass(frozen=True)
class TextScan:
    """What the block scan learnt of a text file (decompressed)."""

    size: int                 # bytes
    lines: int
    first_offset: int         # byte offset of the first non-blank line; -1 when all blank
    first_line: int           # its 1-based line number; 0 when all blank


def scan_text(path: Path, error: type[Exception], what: str = "text",
              decompress: bool = True, name: str | None = None) -> TextScan:
    """Check in blocks that the file is UTF-8 text, without NUL bytes, with no line longer than
    ``MAX_LINE_BYTES`` and (gzip, when ``decompress``) no more than ``MAX_EXPANSION``-fold
    expansion; memory stays at a few blocks whatever the input. Messages call the file
    ``name`` (default: its path) and what it should be ``what``."""
    path, shown = Path(path), name or str(path)
    compressed = path.stat().st_size
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    size = lines = run = 0            # run: bytes of the current record so far
    record_line = 1                   # the line it starts on
    first_offset, first_line = -1, 0
    quoted = odd = False              # CSV quoting applies; a quoted field is open
    try:
        with (open_binary(path) if decompress else open(path, "rb")) as f:
            while block := f.read(BLOCK):
                if size == 0 and block[:2] in (b"\xff\xfe", b"\xfe\xff"):
                    raise error(f"{shown}: UTF-16 text (byte-order mark); save it as UTF-8")
                nul = block.find(b"\x00")
                if nul >= 0:
                    line = lines + block.count(b"\n", 0, nul) + 1
                    raise error(f"{shown} line {line}: a NUL byte: binary data, not "
                                f"{what} (UTF-16 text? save it as UTF-8)")
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as e:
                    at = max(0, e.start - pending)
                    line = lines + block.count(b"\n", 0, at) + 1
                    raise error(f"{shown} line {line}: not UTF-8 text (byte "
                                f"0x{block[at]:02x}: {e.reason}); save it as UTF-8")
                if first_offset < 0:
                    start = 3 if size == 0 and block.startswith(codecs.BOM_UTF8) else 0
                    rest = block[start:].lstrip(_BLANK)
                    if rest:
                        at = len(block) - len(rest)
                        first_offset = size + at
                        first_line = lines + block.count(b"\n", 0, at) + 1
                        quoted = block[at] != ord("{")     # CSV (or garbage), not JSON
                # A block (1 MiB) is shorter than the record limit: only a record that runs on
                # from earlier blocks can pass it.
                first_end, last_end, odd = _record_ends(block, odd, quoted)
                if first_end >= 0:
                    if run + first_end > MAX_LINE_BYTES:
                        raise error(_long_record(shown, record_line, odd))
                    run = len(block) - last_end - 1
                    record_line = lines + block.count(b"\n", 0, last_end) + 2
                else:
                    run += len(block)
                    if run > MAX_LINE_BYTES:
                        raise error(_long_record(shown, record_line, odd))
                lines += block.count(b"\n")
                size += len(block)
                if size > 64 * BLOCK and size > MAX_EXPANSION * compressed:
                    raise error(f"{shown}: the gzip stream expands more than {MAX_EXPANSION}-fold "
                                f"(past {size >> 20} MiB from {compressed:,} bytes): a "
                                f"decompression bomb, not {what}")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise error(f"{shown} line {lines + 1}: not UTF-8 text (the file ends inside a "
                    f"character: {e.reason})")
    except GZIP_ERRORS as e:
        raise gzip_failure(shown, e, error)
    return TextScan(size, lines + (run > 0), first_offset, first_line)


def _record_ends(block: bytes, odd: bool, quoted: bool) -> tuple[int, int, bool]:
    """Offsets of the first and the last newline in ``block`` that end a record (-1: none),
    and whether a quoted field is open at its end (``odd``: open at its start). Without CSV
    quoting every newline ends a record; with it, a newline inside a quoted field does not
    (a field may run over lines, and must not run past the limit either)."""
    if not quoted or (not odd and b'"' not in block):
        return block.find(b"\n"), block.rfind(b"\n"), odd
    if b'"' not in block:                 # inside a quoted field throughout
        return -1, -1, odd
    data = np.frombuffer(block, dtype=np.uint8)
    quotes, newlines = np.flatnonzero(data == ord('"')), np.flatnonzero(data == ord("\n"))
    ends = newlines[(np.searchsorted(quotes, newlines) + odd) % 2 == 0]
    odd = bool((len(quotes) + odd) % 2)
    return (int(ends[0]), int(ends[-1]), odd) if len(ends) else (-1, -1, odd)


def _long_record(shown: str, line: int, in_quotes: bool) -> str:
    why = "a quoted field opened here and not closed?" if in_quotes else \
        "a line of a trace or a config is far shorter; is this the right file?"
    return f"{shown} line {line}: a record longer than {MAX_LINE_BYTES >> 20} MiB ({why})"


def read_text(path: Path, error: type[Exception], what: str, limit: int) -> str:
    """A whole (small) text file, after ``file_problem`` and ``scan_text``: at most ``limit``
    bytes, UTF-8 (a byte-order mark is allowed and dropped)."""
    problem = file_problem(path)
    if problem:
        raise error(f"{what} {path} {problem}")
    size = path.stat().st_size
    if size > limit:
        raise error(f"{what} {path}: {size:,} bytes, more than the {limit:,} a {what} may have")
    scan_text(path, error, "text", decompress=False, name=f"{what} {path}")
    return path.read_bytes().decode("utf-8-sig")
