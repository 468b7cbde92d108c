"""A sweep's table is the same, bit for bit, whichever executor and worker count ran it (wall-time
columns aside); a failing point is recorded with its error and the others still run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from simulator.cli import main
from simulator.sweep import WALL_TIME_COLUMNS, comparable, parse_spec, run_sweep
from tests.conftest import ON_CI, ROOT

SPEC = {
    "name": "tiny",
    "base": {"num_requests": 60, "prompt_len": "64:256", "output_len": "4:32",
             "kv_capacity": 4000},
    "axes": {"policy": ["vllm", "sarathi"], "rate": [4, 16], "seed": [0, 1]},
}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return run_sweep(parse_spec(SPEC), tmp_path_factory.mktemp("serial"), workers=1)


def test_table_has_one_row_per_point_in_grid_order(serial):
    t = serial.table
    assert list(t["point"]) == list(range(8))
    assert (t["status"] == "ok").all()
    assert list(t["policy"]) == ["vllm"] * 4 + ["sarathi"] * 4
    assert list(t["seed"]) == [0, 1] * 4
    # Each point simulated its own seed and rate.
    assert list(t["workload.seed"]) == list(t["seed"])
    assert list(t["offered_rate"]) == [4.0, 4.0, 16.0, 16.0] * 2
    assert (t["completed"] == 60).all()
    # Parquet on disk holds exactly the returned table.
    pd.testing.assert_frame_equal(pd.read_parquet(serial.results_dir / "results.parquet"), t)
    for col in WALL_TIME_COLUMNS:
        assert col in t.columns


def test_two_workers_give_the_identical_table(serial, tmp_path):
    pooled = run_sweep(parse_spec(SPEC), tmp_path, workers=2)
    pd.testing.assert_frame_equal(comparable(pooled.table), comparable(serial.table),
                                  check_exact=True)
    # The per-request tables too.
    for key in serial.table["point_key"]:
        a = pd.read_parquet(serial.results_dir / "points" / f"{key}.requests.parquet")
        b = pd.read_parquet(pooled.results_dir / "points" / f"{key}.requests.parquet")
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_ray_executor_gives_the_identical_table(serial, tmp_path):
    if importlib.util.find_spec("ray") is None:
        if ON_CI:
            pytest.fail("ray is not installed: CI installs it with the dev extra")
        pytest.skip("ray not installed")
    # In a subprocess with a time limit: a local Ray with 2 CPUs starts in ~10 s here; a hung
    # start fails the test instead of the suite, and Ray's state stays out of this process.
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "ray"
    run = subprocess.run([sys.executable, "-m", "simulator", "sweep", str(spec), "--out", str(out),
                          "--executor", "ray", "--workers", "2", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["ran"] == 8
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(out / "results.parquet")),
                                  comparable(serial.table), check_exact=True)


def test_failing_point_is_recorded_and_does_not_stop_the_sweep(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    # Every point is checked before anything runs; what only running can find (a lengths file
    # that exists but holds no lengths) fails that point alone.
    (tmp_path / "good.csv").write_text("num_prefill_tokens,num_decode_tokens\n32,4\n40,6\n")
    (tmp_path / "bad.csv").write_text("colour,shape\nred,round\n")
    spec.write_text(f"base: {{num_requests: 20}}\naxes: {{lengths_file: [{tmp_path}/good.csv, "
                    f"{tmp_path}/bad.csv], seed: [0, 1]}}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "-j", "2"]) == 1
    captured = capsys.readouterr()
    assert "4 points (4 ran, 0 already done, 2 failed)" in captured.out
    t = pd.read_parquet(out / "results.parquet")
    failed = t[t["lengths_file"].str.endswith("bad.csv")]
    assert list(failed["status"]) == ["failed", "failed"]
    assert failed["error"].str.contains("bad.csv").all()
    assert failed["completed"].isna().all()
    ok = t[t["lengths_file"].str.endswith("good.csv")]
    assert list(ok["status"]) == ["ok", "ok"] and (ok["completed"] == 20).all()
    # Re-running retries the failed points only (they fail again, deterministically).
    assert main(["sweep", str(spec), "--out", str(out), "--json"]) == 1
    assert '"ran": 2' in capsys.readouterr().out


def test_a_point_that_cannot_run_fails_the_sweep_before_anything_runs(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    # kv_capacity 8 is below one 16-token block: the replica of that point cannot be built.
    spec.write_text("base: {num_requests: 20, prompt_len: '32', output_len: '4'}\n"
                    "axes: {kv_capacity: [5000, 8], seed: [0, 1]}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "kv_capacity=8" in err and "smaller than one block" in err
    assert not (tmp_path / "out").exists()
