"""An output folder holds exactly one run, and says when that run is whole.

Every command that writes a folder (``servesim run``, ``bench``, ``capacity``, ``sweep``) goes
through here. Before a run writes anything, ``prepare`` makes sure the folder can be written and
holds no other run (or, asked to replace it, lists that run's files so that ``clear`` removes
them first; files that belong to no run are left alone). A sweep may instead resume the run the
folder holds, when it is the same sweep. The run's files are written first and ``manifest.json``
last, atomically, listing them with the run's status: a folder without a manifest holds a run
that was killed or is still being written, never one that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from simulator.errors import ConfigError
from simulator.io import write_json

MANIFEST = "manifest.json"
# Every file a servesim command writes into its folder (a folder holding any of them holds a
# run, whichever command wrote it), as paths relative to the folder.
RUN_FILES = ("summary.json", "requests.csv", "requests.parquet", "timeline.csv", "config.json",
             "records.jsonl", "bench.json", "capacity.json", "sweep.json", "results.parquet",
             "report.md")
# Subfolders that hold nothing but run files: the figures (run --plot, report) and a sweep's
# points. Files there with these endings belong to the run.
RUN_SUBFOLDERS = {"figures": (".png",),
                  "points": (".json", ".requests.parquet", ".timeline.parquet")}


def prepare(folder: str | Path, replace: bool = False,
            resumes: Callable[[Path], bool] | None = None, flag: str = "--out"
            ) -> tuple[Path, list[Path]]:
    """The folder (created if missing) and the files of the run it already holds, to ``clear``
    once nothing else can fail. Refuses, in one line, a folder that cannot be created or
    written, and one that holds another run unless ``replace``. With ``resumes``, a run that
    ``resumes(folder)`` says is this one's is kept: only its manifest (no longer true once this
    run writes) is returned for clearing."""
    if not str(folder).strip():
        raise ConfigError(f"{flag} is empty: name the folder for the run's files")
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{flag} {out}: cannot write there ({e.strerror or e})") from None
    previous = previous_run(out)
    if previous and not replace and resumes is not None and resumes(out):
        return out, [p for p in previous if p.name == MANIFEST or p.name.endswith(".tmp")]
    if previous and not replace:
        names = [str(p.relative_to(out)) for p in previous]
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ConfigError(f"{flag} {out} holds another run ({shown}): choose another folder, "
                          f"or pass --replace to remove that run first")
    return out, previous


def _inside(name) -> bool:
    """A relative path that stays in its folder (a manifest never sends a removal outside)."""
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and len(p.parts) <= 2


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
        names |= {n for n in listed if _inside(n)} if isinstance(listed, list) else set()
    found = sorted(out / n for n in names if (out / n).is_file())
    found += sorted(p for p in out.glob(".*.tmp") if p.is_file())
    seen = set(found)
    for sub, endings in RUN_SUBFOLDERS.items():
        folder = out / sub
        if folder.is_dir() and not folder.is_symlink():
            found += sorted(p for p in folder.iterdir() if p not in seen and p.is_file() and
                            (p.name.endswith(endings) or (p.name.startswith(".") and
                                                          p.name.endswith(".tmp"))))
    return found


def clear(files: list[Path]) -> None:
    """Remove a previous run's files, its manifest first (so a failure part way never leaves a
    manifest that lists missing files), then the run's subfolders left empty."""
    for path in sorted(files, key=lambda p: p.name != MANIFEST):
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise ConfigError(f"--replace: cannot remove {path} ({e.strerror})") from None
    for folder in {p.parent for p in files if p.parent.name in RUN_SUBFOLDERS}:
        try:
            folder.rmdir()
        except OSError:          # holds files of no run: left alone, with them
            pass


def write_manifest(out: Path, kind: str, files: Sequence[str | Path], status: str = "complete",
                   **info) -> Path:
    """The last file of a run: what wrote it, its status and its files (paths relative to
    ``out``)."""
    path = out / MANIFEST
    names = [_relative(Path(f), out) for f in files]
    write_json(path, {"kind": kind, "status": status, "files": names, **info})
    return path


def _relative(path: Path, out: Path) -> str:
    try:
        return path.relative_to(out).as_posix()
    except ValueError:           # already relative to the folder
        return path.as_posix()
