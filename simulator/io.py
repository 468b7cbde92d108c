"""Writing output files, for every room that writes them: whole files only, normal permissions.

A file is written to a temporary name beside its destination and renamed into place, so a crash
never leaves half a file and a failed run never destroys an earlier run's output. The writer
creates the temporary file itself, so it gets the permissions any new file gets (0644 under the
usual umask 022), not the owner-only 0600 of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from simulator.errors import ConfigError


def temporary_path(path: Path, suffix: str = ".tmp") -> Path:
    """A name beside ``path`` that no other writer (process or thread) picks."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` creates the file at the path ``tmp``; it then replaces ``path``."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    """``obj`` as indented JSON (what JSON cannot hold, as text), written atomically."""
    write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def output_folder(out_dir: str | Path) -> Path:
    """The ``out`` folder, created if missing (a path that cannot be one is a user error)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out: cannot create output folder {out}: {e.strerror}")
    return out
