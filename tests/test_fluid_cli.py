"""``servesim fluid``: the report's keys and values, the fitted cost, and bad input."""

import json

import pytest

from simulator.cli import main


def fluid_json(capsys, *args):
    assert main(["fluid", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report_with_given_cost(capsys):
    # p512d20 at 18 req/s, d0 = 13 ms, d1 = 0.55 us: w = 20 (512 + 19/2) = 10430 (engine stages).
    r = fluid_json(capsys, "--type", "p512d20:18", "--d0", "0.013", "--d1", "5.5e-7",
                   "--kv-capacity", "137000")
    for key in ("M_star", "dT_star", "n_star", "throughput_bound", "stable", "max_rate_scale"):
        assert key in r
    rho = 18 * 10430
    assert r["M_star"] == pytest.approx(0.013 * rho / (1 - 5.5e-7 * rho))
    assert r["dT_star"] == pytest.approx(0.013 / (1 - 5.5e-7 * rho))
    assert r["n_star"]["p512d20"] == pytest.approx(18 * r["dT_star"])
    assert r["throughput_bound"] == pytest.approx(360)
    assert r["stable"] is True
    assert r["max_rate_scale"] == pytest.approx(136992 / (rho * (0.013 + 5.5e-7 * 136992)))
    assert r["cost"] == {"source": "given"}
    paper = fluid_json(capsys, "--type", "p512d20:18", "--d0", "0.013", "--d1", "5.5e-7",
                       "--convention", "paper")
    assert paper["types"][0]["work"] == 21 * (512 + 10)


def test_fitted_cost_and_unstable_load(capsys):
    r = fluid_json(capsys, "--type", "p512d1000:3", "--kv-capacity", "137000")
    assert r["cost"]["source"] == "fit" and r["cost"]["model"] == "roofline"
    assert r["stable"] is False and r["max_rate"] < 3
    assert r["wait"]["capped"] is True


def test_lengths_workload_is_clustered(capsys):
    r = fluid_json(capsys, "--rate", "4", "--prompt-len", "100:300", "--output-len", "10:200",
                   "--segments", "3", "-n", "2000")
    assert len(r["types"]) == 3
    assert sum(t["rate"] for t in r["types"]) == pytest.approx(r["request_rate"])
    assert r["request_rate"] == pytest.approx(4)


def test_table_output(capsys):
    assert main(["fluid", "--type", "p512d20:18", "--kv-capacity", "137000"]) == 0
    out = capsys.readouterr().out
    assert "throughput bound" in out and "largest stable request rate" in out


@pytest.mark.parametrize("args, message", [
    (["--d0", "-0.1"], "--d0 must be a number >= 0"),
    (["--d0", "0", "--d1", "0"], "both 0"),
    (["--segments", "0"], "--segments must be >= 1"),
    (["--type", "p512d20"], "type: expected like p512d20:8.4"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(["fluid", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_fluid_of_a_replayed_trace(capsys):
    from tests.conftest import require_shared
    path = require_shared("traces", "AzureLLMInferenceTrace_conv.csv")
    r = fluid_json(capsys, "--trace", str(path), "--kv-capacity", "137000", "--segments", "5")
    assert r["request_rate"] == pytest.approx(5.53, abs=0.01)     # the trace's own mean rate
    assert r["throughput_bound"] == pytest.approx(5.53 * 211.1, rel=0.01)
    assert len(r["types"]) == 5
    # At its native rate this trace is past the fluid stable region of Llama-2-7B on an A100.
    assert r["stable"] is False and 4 < r["max_rate"] < 5.53
