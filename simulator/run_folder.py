"""A run's output folder holds exactly one run, and says when that run is whole.

Before a run writes anything, ``prepare`` makes sure the folder can be written and holds no other
run (or, asked to replace it, lists that run's files so that ``clear`` removes them first; files
that belong to no run are left alone). The run's files are written first and ``manifest.json``
last, atomically, listing them with the run's status: a folder without a manifest holds a run
that was killed or is still being written, never one that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from simulator.errors import ConfigError
from simulator.io import write_json

MANIFEST = "manifest.json"
# Every file a servesim run or bench writes into its folder (a folder holding any of them holds
# a run, whichever command wrote it).
RUN_FILES = ("summary.json", "requests.csv", "requests.parquet", "timeline.csv", "config.json",
             "records.jsonl", "bench.json")


def prepare(folder: str | Path, replace: bool = False) -> tuple[Path, list[Path]]:
    """The folder (created if missing) and the files of the run it already holds, to ``clear``
    once nothing else can fail. Refuses, in one line, a folder that cannot be created or
    written, and one that holds another run unless ``replace``."""
    if not str(folder).strip():
        raise ConfigError("--out is empty: name the folder for the run's files")
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    previous = previous_run(out)
    if previous and not replace:
        names = ", ".join(p.name for p in previous[:4]) + (", ..." if len(previous) > 4 else "")
        raise ConfigError(f"--out {out} holds another run ({names}): choose another folder, "
                          f"or pass --replace to remove that run first")
    return out, previous


def previous_run(out: Path) -> list[Path]:
    """The files of the run in ``out``: those its manifest lists, the known run files, and
    temporary files an interrupted atomic write left behind."""
    names = set(RUN_FILES) | {MANIFEST}
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            listed = []
        # Only plain names: a manifest never sends a removal outside its folder.
        names |= {n for n in listed if isinstance(n, str) and n == Path(n).name}
    found = [out / n for n in sorted(names) if (out / n).is_file()]
    found += sorted(p for p in out.glob(".*.tmp") if p.is_file())
    return found


def clear(files: list[Path]) -> None:
    """Remove a previous run's files, its manifest first (so a failure part way never leaves a
    manifest that lists missing files)."""
    for path in sorted(files, key=lambda p: p.name != MANIFEST):
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise ConfigError(f"--replace: cannot remove {path} ({e.strerror})") from None


def write_manifest(out: Path, kind: str, files: list[str], status: str = "complete",
                   **info) -> Path:
    """The last file of a run: what wrote it, its status and its files."""
    path = out / MANIFEST
    write_json(path, {"kind": kind, "status": status, "files": list(files), **info})
    return path
