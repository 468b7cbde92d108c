"""Resume: a sweep killed midway keeps its finished points; the re-run completes only the missing
ones, and the final table equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from simulator.errors import ConfigError
from simulator.sweep import comparable, load_spec, run_sweep
from tests.conftest import ROOT

SPEC = """\
name: resume
base: {num_requests: 800, prompt_len: "64:512", output_len: "8:64", kv_capacity: 20000}
axes:
  policy: [vllm-v1, sarathi]
  rate: [6, 9, 12]
  seed: [0, 1]
"""
TOTAL = 12


def sweep_cmd(spec, out, *extra):
    return [sys.executable, "-m", "simulator", "sweep", str(spec), "--out", str(out), *extra]


def finished(out) -> set[str]:
    return {p.name for p in (out / "points").glob("*.json")} if (out / "points").exists() else set()


def test_killed_sweep_resumes_only_the_missing_points(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    # One worker, in its own process group, so the kill takes the whole sweep down at once.
    proc = subprocess.Popen(sweep_cmd(spec, out, "-j", "1", "-q"), cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(finished(out)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = finished(out)
    assert 3 <= len(before) < TOTAL, "kill the sweep midway"
    assert not (out / "manifest.json").exists(), "a killed sweep must not look complete"
    mtimes = {name: (out / "points" / name).stat().st_mtime_ns for name in before}

    rerun = subprocess.run(sweep_cmd(spec, out, "-j", "2", "--json"), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["skipped"] == len(before)
    assert report["ran"] == TOTAL - len(before)
    assert report["failed"] == 0
    # The points finished before the kill were not run again.
    assert {n: (out / "points" / n).stat().st_mtime_ns for n in before} == mtimes
    assert len(finished(out)) == TOTAL
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["status"], manifest["points"], manifest["ok"]) == ("complete", TOTAL, TOTAL)

    resumed = pd.read_parquet(out / "results.parquet")
    fresh = run_sweep(load_spec(spec), tmp_path / "fresh", workers=1).table
    pd.testing.assert_frame_equal(comparable(resumed), comparable(fresh), check_exact=True)


def test_changed_base_config_invalidates_done_points(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("base: {num_requests: 30}\naxes: {seed: [0, 1]}\n")
    first = run_sweep(load_spec(spec), tmp_path / "out", workers=1)
    assert (first.ran, first.skipped) == (2, 0)
    again = run_sweep(load_spec(spec), tmp_path / "out", workers=1)
    assert (again.ran, again.skipped) == (0, 2)
    spec.write_text("base: {num_requests: 30, kv_capacity: 9000}\naxes: {seed: [0, 1]}\n")
    with pytest.raises(ConfigError, match="holds another run"):
        run_sweep(load_spec(spec), tmp_path / "out", workers=1)
    changed = run_sweep(load_spec(spec), tmp_path / "out", workers=1, replace=True)
    assert (changed.ran, changed.skipped) == (2, 0)
    # The table holds the current spec's points only.
    assert len(changed.table) == 2 and (changed.table["kv_capacity_tokens"] == 9000 // 16 * 16).all()
