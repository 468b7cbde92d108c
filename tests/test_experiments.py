"""The scripts under experiments/ still run, and the roofline defaults are what the calibration
derives from the measured profiles (so README and code cannot drift apart)."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, load_experiment, require_shared
from simulator.cost.roofline import EFFICIENCY_DEFAULTS


@pytest.fixture(scope="module")
def calibration():
    return load_experiment("calibrate_roofline")


def test_roofline_defaults_are_the_calibrated_medians(calibration):
    profiles = require_shared("profiles")
    factors = calibration.calibrate(profiles)
    for key in calibration.FACTORS:
        assert set(factors[key]) == {"a100", "h100"}
        assert calibration.recommended(factors[key], key) == pytest.approx(EFFICIENCY_DEFAULTS[key])


def test_calibration_prints_the_readme_tables(calibration, capsys):
    require_shared("profiles", "a100", "llama-2-7b", "mlp.csv")
    assert calibration.main([]) == 0
    out = capsys.readouterr().out
    assert "| `compute_eff` |" in out
    for label, _ in calibration.REFERENCE_BATCHES:
        assert f"| {label} |" in out
    readme = (ROOT / "docs" / "cost-models.md").read_text()
    for line in out.splitlines():
        if line.startswith("| ") and " ms |" in line:
            assert line in readme, f"docs/cost-models.md reference table is stale: {line}"


def test_bench_speed_quick(capsys):
    bench = load_experiment("bench_speed")
    assert [name for name, _ in bench.BENCHMARKS][:2] == ["p512d20", "azure-conv"]
    assert bench.main(["--quick", "--only", "p512d20"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("p512d20")]
    assert [r[1] for r in rows] == list(bench.BASELINES)
    for r in rows:
        assert r[2] == r[3] == "1,000"          # requests == completed


def test_bench_bytecodes_counts_the_cache_model(capsys):
    require_shared("traces", "conversation_trace.jsonl")
    bench = load_experiment("bench_bytecodes")
    seen = []

    def on_collection(phase, info):         # Python run by collections, as Hypothesis adds
        seen.append(phase)

    gc.callbacks.append(on_collection)
    try:
        counts = bench.mooncake_counts(30, "vllm-v1")
        garbage = [[] for _ in range(50_000)]
        for item in garbage:
            item.append(item)                    # cycles for the collector to find
        del garbage
        again = bench.mooncake_counts(30, "vllm-v1")
    finally:
        gc.callbacks.remove(on_collection)
    assert again == counts                       # a count: the same every run
    off, on = counts["off"], counts["on"]
    pool = [key for key in on if key.startswith("prefix_cache.py:") and
            key.endswith((":allocate", ":release", ":register"))]
    assert len(pool) == 3 and all(on[key] > 0 and off[key] == 0 for key in pool)
    assert bench.main(["--requests", "30", "--top", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total_off, total_on = sum(off.values()), sum(on.values())
    assert lines[0] == (f"bytecodes, vllm-v1, 30 requests: cache off {total_off:,}, on "
                        f"{total_on:,}, on / off {total_on / total_off:.3f}")
    assert len(lines) == 2 + 4
    assert bench.main(["--requests", "5", "--policy", "fastest"]) == 2
    assert "unknown policy 'fastest'" in capsys.readouterr().err


def test_bench_instructions_reads_cachegrind_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    bench = load_experiment("bench_instructions")
    with pytest.raises(ValueError, match="no instruction count"):
        bench.parse_cachegrind_log("==1== Cachegrind, a cache and branch-prediction profiler\n")
    if shutil.which("valgrind"):
        # A real log: Cachegrind's own summary of a trivial process, with the cache model on.
        log = tmp_path / "cg.log"
        subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--log-file={log}",
                        f"--cachegrind-out-file={tmp_path / 'cg.out'}", sys.executable, "-c",
                        "pass"], check=True, capture_output=True)
        counts = bench.parse_cachegrind_log(log.read_text())
        assert set(counts) == {"instructions", "i1_misses", "d1_misses"}
        assert counts["instructions"] > 10 * counts["d1_misses"] > 0
    with pytest.raises(SystemExit) as bad:
        bench.main(["--requests", "0"])
    assert bad.value.code == 2
    monkeypatch.setenv("PATH", str(tmp_path))              # no valgrind there
    assert bench.main(["--requests", "10"]) == 2
    assert "valgrind is not on the PATH" in capsys.readouterr().err


def test_bench_instructions_child_runs_the_benchmark(capsys):
    # What each measured process runs (here without valgrind): the warm-ups, then the run.
    require_shared("traces", "conversation_trace.jsonl")
    bench = load_experiment("bench_instructions")
    assert bench.main(["--child", "on", "--requests", "20"]) == 0
    assert bench.main(["--child", "baseline"]) == 0
    if shutil.which("valgrind"):
        assert bench.main(["--policy", "fastest"]) == 2
        assert "unknown policy 'fastest'" in capsys.readouterr().err
