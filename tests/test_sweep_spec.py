"""Sweep specs: axes and ranges expand to the right grid, point keys follow the resolved config,
bad specs fail with one line and exit status 2."""

from __future__ import annotations

import textwrap

import pytest

from simulator.cli import main
from simulator.errors import ConfigError
from simulator.runner import request_types
from simulator.sweep import expand_points, load_spec, parse_spec


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_grid_is_the_product_of_axes_first_axis_slowest():
    spec = parse_spec({"base": {"num_requests": 10},
                       "axes": {"policy": ["vllm", "sarathi"], "rate": {"start": 1, "stop": 2,
                                                                        "step": 0.5},
                                "seed": [0, 1]}})
    points = expand_points(spec)
    assert len(points) == spec.num_points == 2 * 3 * 2
    assert [p.axes for p in points[:3]] == [{"policy": "vllm", "rate": 1.0, "seed": 0},
                                           {"policy": "vllm", "rate": 1.0, "seed": 1},
                                           {"policy": "vllm", "rate": 1.5, "seed": 0}]
    assert points[-1].axes == {"policy": "sarathi", "rate": 2.0, "seed": 1}
    assert all(p.config.num_requests == 10 for p in points)
    assert [p.config.rate for p in points[:6:2]] == [1.0, 1.5, 2.0]
    assert len({p.key for p in points}) == len(points)


@pytest.mark.parametrize("r, expected", [
    ({"start": 12, "stop": 24, "step": 4}, [12, 16, 20, 24]),
    ({"start": 0.1, "stop": 0.3, "step": 0.1}, [0.1, 0.2, 0.3]),      # stop kept despite rounding
    ({"start": 1, "stop": 3}, [1, 2, 3]),
    ({"start": 1, "stop": 2, "num": 3}, [1.0, 1.5, 2.0]),
    ({"start": 1, "stop": 100, "num": 3, "log": True}, [1.0, 10.0, 100.0]),
])
def test_ranges(r, expected):
    spec = parse_spec({"axes": {"seed" if isinstance(expected[0], int) else "rate": r}})
    assert list(spec.axes[0].values) == expected


def test_dotted_and_label_axes_set_the_right_fields(tmp_path):
    base = write(tmp_path, "policy: sarathi\nnum_requests: 5\npolicy_params: {chunk_size: 256}\n",
                 "run.yaml")
    spec = load_spec(write(tmp_path, f"""
        base: {base.name}
        axes:
          policy_params.chunk_size: [128, 512]
          variant:
            - {{name: small-kv, kv_capacity: 20000}}
            - {{name: big-kv, kv_capacity: 80000, slo: {{ttft_ms: 500}}}}
    """))
    points = expand_points(spec)
    assert [p.config.policy_params["chunk_size"] for p in points] == [128, 128, 512, 512]
    assert [p.axes["variant"] for p in points] == ["small-kv", "big-kv"] * 2
    assert [p.config.kv_capacity for p in points] == [20000, 80000] * 2
    assert points[1].config.slo == {"ttft_ms": 500} and points[0].config.slo == {}
    assert all(p.config.policy == "sarathi" and p.config.num_requests == 5 for p in points)


def test_rate_axis_scales_a_type_mix_keeping_its_proportions():
    spec = parse_spec({"base": {"types": ["p512d20:7", "p512d50:3"], "num_requests": 10},
                       "axes": {"rate": [5, 20]}})
    lo, hi = (request_types(p.config) for p in expand_points(spec))
    assert [t.rate for t in lo] == pytest.approx([3.5, 1.5])
    assert [t.rate for t in hi] == pytest.approx([14.0, 6.0])
    assert [t.name for t in hi] == ["p512d20", "p512d50"]


def test_point_key_follows_the_resolved_config():
    def keys(base):
        return [p.key for p in expand_points(parse_spec({"base": base,
                                                         "axes": {"seed": [0, 1]}}))]
    same = keys({"num_requests": 10})
    assert keys({"num_requests": 10}) == same
    # A value equal to the default resolves to the same configuration: the same points.
    assert keys({"num_requests": 10, "policy": "vllm-v1"}) == same
    # A changed base config changes every key: old results are not reused.
    assert set(keys({"num_requests": 10, "kv_capacity": 50000})).isdisjoint(same)
    # Where the results go is not part of a point's identity.
    assert keys({"num_requests": 10, "out": "elsewhere"}) == same


@pytest.mark.parametrize("text, words", [
    ("axes: {rate: [1, 2]}\nfoo: 1\n", ["unknown key 'foo'"]),
    ("axes: {bogus: [1, 2]}\n", ["axis 'bogus'", "not a run field"]),
    ("axes: {rate: [1, -2]}\n", ["rate must be a positive number"]),
    ("axes: {rate: {start: 3, stop: 1}}\n", ["stop 1 is below start 3"]),
    ("axes: {seed: [1, 1]}\n", ["repeated values"]),
    ("axes: {model.x: [1]}\n", ["dotted axis", "'model' is not one"]),
    ("axes: {policy: [vllm, nonesuch]}\n", ["policy=nonesuch"]),
    ("axes: {policy_params.no_such_param: [1]}\n", ["no_such_param"]),
    ("axes: {out: [a, b]}\n", ["set by the sweep itself"]),
    ("axes: {rate: [1, 2]}\nbase: {nonsense: 3}\n", ["unknown key 'nonsense'"]),
    ("axes: {rate: [1, 2\n", ["cannot parse"]),
    ("axes: {}\n", ["axes must be a non-empty mapping"]),
    ("base: {arrival: piecewise, rate_schedule: [[10, 1]]}\naxes: {rate: [1, 2]}\n",
     ["rate_schedule"]),
])
def test_bad_specs_fail_with_one_line_and_status_2(tmp_path, capsys, text, words):
    path = write(tmp_path, text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("servesim: error:") and "\n" not in err
    assert "Traceback" not in err
    for w in words:
        assert w in err


def test_missing_spec_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2365750,879,46
2023-11-16 18:15:53.4511990,91,214
2023-11-16 18:15:55.0001000,200,30
"""


def test_trace_sweep_resolves_files_keys_by_content_and_scales_the_rate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "azure.csv").write_text(AZURE)
    spec = {"base": {"trace": "azure.csv"}, "axes": {"rate": [1, 4]}}
    points = expand_points(parse_spec(spec))
    # Workers may run elsewhere: the trace path is absolute in every point.
    assert {p.config.trace for p in points} == {str(tmp_path / "azure.csv")}
    # rate on a replayed trace scales it to that mean rate, keeping its arrival pattern.
    assert [p.config.target_rate for p in points] == [1.0, 4.0]
    from simulator.runner import build_workload
    w = build_workload(points[1].config)
    assert len(w) == 5 and w.meta["mean_rate"] == pytest.approx(4.0)
    keys = [p.key for p in points]
    # Same content under another name: same points. Edited content: new points.
    (tmp_path / "copy.csv").write_text(AZURE)
    assert [p.key for p in expand_points(parse_spec({**spec, "base": {"trace": "copy.csv"}}))] \
        == keys
    (tmp_path / "azure.csv").write_text(AZURE.replace("374,44", "375,44"))
    assert set(p.key for p in expand_points(parse_spec(spec))).isdisjoint(keys)


@pytest.mark.parametrize("axes,message", [
    ({"rate": {"start": 0, "stop": 1e9, "step": 1e-9}}, "more than 10,000; use a larger step"),
    ({"rate": {"start": 1, "stop": 2, "num": 10**12}}, "num must be an integer from 1 to 10,000"),
    ({"seed": {"start": 0, "stop": 999}, "rate": {"start": 1, "stop": 2, "num": 200}},
     "make 200,000 points, more than 100,000"),
])
def test_an_oversized_grid_is_refused_before_anything_is_built(axes, message):
    """A typo in a range (a step of 1e-9) must give one line, not exhaust memory building 1e18
    values: sizes are counted before any value exists."""
    with pytest.raises(ConfigError, match=message):
        parse_spec({"axes": axes})
