"""The scripts under experiments/ still run, and the roofline defaults are what the calibration
derives from the measured profiles (so README and code cannot drift apart)."""

from __future__ import annotations


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
