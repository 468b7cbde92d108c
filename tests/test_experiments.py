"""The scripts under experiments/ still run, and the roofline defaults are what the calibration
derives from the measured profiles (so README and code cannot drift apart)."""

from __future__ import annotations

import gc
import os
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


# Cachegrind's summaries as Valgrind 3.19 (three spaces in "I   refs") and 3.22 on print them.
_CACHEGRIND_3_19 = """==7== Cachegrind, a cache and branch-prediction profiler
==7== I   refs:      19,965,579,148
==7== I1  misses:       141,797,726
==7== LLi misses:       125,898,455
==7== D   refs:       9,172,619,080  (6,466,437,472 rd   + 2,706,181,608 wr)
==7== D1  misses:       188,799,164  (  171,435,081 rd   +    17,364,083 wr)
"""
_CACHEGRIND_3_22 = """==8== Cachegrind, a high-precision tracing profiler
==8== I refs:        1,234,567
"""

# A stand-in for valgrind: writes a log whose instruction count is the measured process's
# --child role (baseline, off, on) looked up in the environment, or fails as told.
_FAKE_VALGRIND = """#!/bin/sh
for arg; do
  case $arg in --log-file=*) log=${arg#--log-file=};; esac
  [ "$prev" = --child ] && role=$arg
  prev=$arg
done
[ -n "$FAIL" ] && { echo "valgrind: $FAIL" >&2; exit 1; }
eval n=\\$COUNT_$role
echo "==1== I   refs:      $n" > "$log"
"""


def test_bench_instructions_reads_both_cachegrind_formats(tmp_path):
    bench = load_experiment("bench_instructions")
    assert bench.parse_cachegrind_log(_CACHEGRIND_3_19) == {
        "instructions": 19_965_579_148, "i1_misses": 141_797_726, "d1_misses": 188_799_164}
    assert bench.parse_cachegrind_log(_CACHEGRIND_3_22) == {"instructions": 1_234_567}
    with pytest.raises(bench.MeasureError, match="no instruction count"):
        bench.parse_cachegrind_log("==1== Cachegrind, a cache and branch-prediction profiler\n")
    if shutil.which("valgrind"):
        # And the log of the valgrind here, with the cache model on, of a trivial process.
        log = tmp_path / "cg.log"
        subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--log-file={log}",
                        f"--cachegrind-out-file={tmp_path / 'cg.out'}", sys.executable, "-c",
                        "pass"], check=True, capture_output=True)
        counts = bench.parse_cachegrind_log(log.read_text())
        assert set(counts) == {"instructions", "i1_misses", "d1_misses"}
        assert counts["instructions"] > 10 * counts["d1_misses"] > 0


def test_bench_instructions_measures_and_refuses(tmp_path, monkeypatch, capsys):
    require_shared("traces", "conversation_trace.jsonl")
    bench = load_experiment("bench_instructions")
    fake = tmp_path / "bin" / "valgrind"
    fake.parent.mkdir()
    fake.write_text(_FAKE_VALGRIND)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("COUNT_baseline", "1,000")
    monkeypatch.setenv("COUNT_off", "5,000")
    monkeypatch.setenv("COUNT_on", "6,000")
    assert bench.main(["--requests", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("Cachegrind, vllm-v1, 10 requests (each run's process less the "
                      "baseline's, 1,000 instructions)")
    assert out[2].split() == ["instructions", "4,000", "5,000", "1.250"]
    assert out[3] == "requests per instruction, on against off: -20.0%"
    monkeypatch.setenv("COUNT_on", "900")              # below the baseline: nothing measured
    assert bench.main(["--requests", "10"]) == 2
    assert "give more --requests" in capsys.readouterr().err
    monkeypatch.setenv("FAIL", "no such tool")         # a failed run: one line, status 1
    assert bench.main(["--requests", "10"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed under valgrind (status 1): valgrind: no such tool" in err[0]
    assert bench.main(["--policy", "fastest"]) == 2    # refused before any process starts
    assert "unknown policy 'fastest'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        bench.main(["--requests", "0"])
    assert bad.value.code == 2
    monkeypatch.setenv("PATH", str(tmp_path))          # no valgrind there
    assert bench.main(["--requests", "10"]) == 2
    assert "valgrind is not on the PATH" in capsys.readouterr().err


def test_bench_instructions_child_runs_warm_ups_then_the_run(monkeypatch):
    # What each measured process runs: two 50-request warm-ups (cache off, on), then the run.
    require_shared("traces", "conversation_trace.jsonl")
    bench = load_experiment("bench_instructions")
    import experiments.bench_speed
    import simulator.runner
    runs = []

    def record(cfg):
        runs.append((cfg.num_requests, cfg.prefix_caching))
    monkeypatch.setattr(simulator.runner, "simulate", record)         # the run
    monkeypatch.setattr(experiments.bench_speed, "simulate", record)  # the warm-ups
    assert bench.main(["--child", "on", "--requests", "20"]) == 0
    assert bench.main(["--child", "baseline"]) == 0
    assert runs == [(50, False), (50, True), (20, True), (50, False), (50, True)]
