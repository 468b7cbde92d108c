"""Run fields: one declaration per field, and one validation layer for every value.

The declarations drive the flags, the config-file keys, the help defaults and the docs table; a
value from any source is checked the same way. Property tests generate bad input of each class
(numbers, degenerate arithmetic, flags that conflict or do nothing, sweep specs) and assert the
product's promise: exit status 2 with exactly one stderr line naming the field, no traceback and
no warning. Each class counts the cases it tried and the clean exits (printed with ``-s``).
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import tempfile
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.cli import main
from simulator.cli.options import REPLICA_FLAGS, option_fields
from simulator.config import (FIELDS, MAX_REQUESTS, MAX_SCHEDULE_SEGMENTS, MAX_SIM_SECONDS,
                              WORKLOAD_FIELDS, RunConfig, build_config, check_fields,
                              fields_markdown)
from simulator.errors import ConfigError
from simulator.hardware import model_spec

ROOT = Path(__file__).resolve().parent.parent
COUNTS: collections.Counter = collections.Counter()


def cases(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    classes = sorted({c for c, _ in COUNTS})
    for c in classes:
        print(f"\n{c}: {COUNTS[c, 'tried']} cases tried, {COUNTS[c, 'clean']} clean exits")
    if os.environ.get("SERVESIM_CASE_COUNTS"):
        Path(os.environ["SERVESIM_CASE_COUNTS"]).write_text(json.dumps(
            {c: {"tried": COUNTS[c, "tried"], "clean": COUNTS[c, "clean"]} for c in classes},
            indent=2))


def cli(*args: str) -> tuple[int, str, list[str]]:
    """Run ``servesim ARGS`` in-process: (status, stdout, stderr lines + warnings raised)."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, redirect_stdout(out), \
            redirect_stderr(err):
        warnings.simplefilter("always")
        code = main(list(args))
    lines = err.getvalue().strip().splitlines() + [f"warning: {w.message}" for w in caught]
    return code, out.getvalue(), lines


def assert_clean(cls: str, result, *names: str) -> str:
    """Exit 2, one stderr line naming one of ``names``, no traceback; counted under ``cls``."""
    COUNTS[cls, "tried"] += 1
    code, out, lines = result
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("servesim: error: ") and "Traceback" not in out + line, line
    assert any(n in line for n in names), (names, line)
    COUNTS[cls, "clean"] += 1
    return line


# ---------------------------------------------------------------------------------------------
# One declaration per field


def test_every_declared_field_is_a_flag_with_its_declared_help_and_default(capsys):
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())     # undo click's wrapping
    for name, f in FIELDS.items():
        if not f.flags:
            continue
        for flag in f.flags:
            assert re.search(rf"(^|[ ,]){re.escape(flag)}[ ,]", text), flag
        help_start = " ".join(f.info.help.split())[:30]
        assert help_start in text, name
        if f.describe_default() is not None:
            # The default shown is the dataclass's own: help never restates it by hand.
            assert f"[default: {f.describe_default()}]" in text, name


def test_flags_config_keys_and_sweep_fields_come_from_the_declarations():
    assert set(WORKLOAD_FIELDS) < set(FIELDS)
    assert {FIELDS[n].group for n in WORKLOAD_FIELDS} == {"workload", "trace"}
    assert set(REPLICA_FLAGS) == {f.dest for f in FIELDS.values()
                                  if f.flags and f.group in ("policy", "replica", "cluster")}
    # Every field is a config-file key, and its default passes its own check.
    assert check_fields(RunConfig().to_dict(), "test") == RunConfig().to_dict()
    assert build_config(RunConfig().to_dict(), refuse_unused=False) == RunConfig()


def test_a_flag_and_a_config_key_give_the_same_typed_value(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("rate: 4\nnum_requests: 7\npolicy: sarathi\npolicy_params: {chunk_size: 64}\n"
                    "slo: {ttft_ms: 500}\n")
    opts = {"rate": ("4",), "num_requests": ("7",), "policy": ("sarathi",),
            "policy_param": ("chunk_size=64",), "slo": ("ttft=500",)}
    from_file = build_config(*option_fields({"config_file": str(path)}))
    from_flags = build_config(*option_fields(opts))
    assert from_file == from_flags
    assert from_flags.policy_params == {"chunk_size": 64} and from_flags.rate == 4.0


def test_docs_table_is_generated_from_the_declarations():
    doc = (ROOT / "docs" / "run-config.md").read_text()
    begin, end = "<!-- fields:begin -->\n", "<!-- fields:end -->"
    assert begin in doc and end in doc
    table = doc.split(begin, 1)[1].split(end, 1)[0]
    assert table == fields_markdown(), "regenerate with: python -m simulator.config"


# ---------------------------------------------------------------------------------------------
# Numbers: NaN, infinities, beyond int64 / float range, outside the field's bounds

NUMERIC = [f for f in FIELDS.values() if f.kind in (int, float)]
NONFINITE = ["nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "-Infinity", "1e309",
             "-1e309", "1e999", "2e308"]


def bad_number(f) -> st.SearchStrategy[str]:
    """Text that no declaration of ``f`` accepts."""
    options = [st.sampled_from(NONFINITE),
               st.integers(2**63, 10**40).map(str), st.integers(-(10**40), -(2**63) - 1).map(str)]
    low, high = f.info.low, f.info.high
    if f.kind is int:
        options.append(st.floats(-1e6, 1e6).filter(lambda x: not x.is_integer()).map(repr))
        options.append(st.sampled_from(["1e3", "5.", "0x10", "12abc", "", " "]))
        if high is not None and high < 2**63 - 1:
            options.append(st.integers(int(high) + 1, 2**63 - 1).map(str))
        if low is not None:
            options.append(st.integers(-(2**63), int(low) - (0 if f.info.low_open else 1))
                           .map(str))
    else:
        options.append(st.sampled_from(["abc", "1,5", "", " ", "--", "1e", "0x"]))
        if high is not None:
            options.append(st.floats(high, 1.7e308, exclude_min=True).map(repr))
        if low is not None:
            options.append(st.floats(-1.7e308, low).filter(
                lambda x, low=low, open_=f.info.low_open: x <= low if open_ else x < low)
                .map(repr))
            if low > 0:
                options.append(st.sampled_from(["1e-300", "5e-324", "1e-310"]))
    return st.one_of(options)


@st.composite
def numeric_case(draw):
    f = draw(st.sampled_from(NUMERIC))
    return f, draw(bad_number(f)), draw(st.sampled_from(["flag", "config", "sweep"]))


@cases(400)
@given(numeric_case())
def test_bad_numbers_are_one_line_naming_the_field(case):
    f, text, source = case
    with tempfile.TemporaryDirectory() as tmp:
        if source == "flag":
            args = ["run", "-q", f"{f.flags[-1]}={text}"]
        elif source == "config":
            path = Path(tmp) / "run.yaml"
            path.write_text(f"{f.name}: {json.dumps(text)}\n")     # a string, as YAML reads 1e309
            args = ["run", "-q", "--config", str(path)]
        else:
            path = Path(tmp) / "spec.yaml"
            path.write_text(f"axes: {{{f.name}: [{json.dumps(text)}]}}\n")
            args = ["sweep", str(path), "--out", str(Path(tmp) / "out")]
        assert_clean("numbers", cli(*args), f.name)


@cases(60)
@given(st.sampled_from([f for f in NUMERIC if f.kind is float]),
       st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400]))
def test_nonfinite_numbers_from_code_or_toml_are_refused(f, value):
    COUNTS["numbers", "tried"] += 1
    with pytest.raises(ConfigError, match=f.name):
        build_config({}, {f.name: value})
    COUNTS["numbers", "clean"] += 1


# A command's own numeric options (not run fields) pass the same number check.
COMMAND_NUMBERS = [(["capacity", "--criterion", "stable", "-n", "5"], "--seeds", int),
                   (["capacity", "--criterion", "stable", "-n", "5"], "--tol", float),
                   (["capacity", "--criterion", "stable", "-n", "5"], "--rate-max", float),
                   (["capacity", "--criterion", "stable", "-n", "5"], "--growth-limit", float),
                   (["fluid", "--type", "p16d4:2"], "--segments", int),
                   (["fluid", "--type", "p16d4:2"], "--slack", float),
                   (["fluid", "--type", "p16d4:2"], "--d0", float),
                   (["sweep", "no-such-spec.yaml"], "--workers", int)]


@cases(100)
@given(st.sampled_from(COMMAND_NUMBERS), st.data())
def test_command_numbers_are_one_line_naming_the_flag(command, data):
    args, flag, kind = command
    bad = st.one_of(st.sampled_from(NONFINITE + ["", "abc"]), st.integers(2**63, 10**30).map(str))
    if kind is int:
        bad = st.one_of(bad, st.sampled_from(["1.5", "1e3", "-1", "0"]))
    text = data.draw(bad)
    assert_clean("numbers", cli(*args, f"{flag}={text}"), flag)


# ---------------------------------------------------------------------------------------------
# Arithmetic that would silently degenerate (the fields are each valid; together they are not)


@st.composite
def degenerate_case(draw):
    kind = draw(st.sampled_from(["horizon", "too_many", "too_few", "schedule", "cost", "policy",
                                 "type_rate"]))
    if kind == "horizon":           # arrivals so sparse that time absorbs the service times
        n = draw(st.integers(1, 1000))
        rate = n / (MAX_SIM_SECONDS * draw(st.floats(1.001, 1e290)))
        return ["-n", str(n), f"--rate={rate!r}"], ("rate",)
    if kind == "too_many":
        duration = draw(st.floats(10.0, MAX_SIM_SECONDS))
        rate = min(draw(st.floats(1.001, 1e6)) * MAX_REQUESTS / duration, 1e6)
        if duration * rate <= MAX_REQUESTS:
            duration = MAX_SIM_SECONDS
        return [f"--duration={duration!r}", f"--rate={rate!r}"], ("duration",)
    if kind == "too_few":
        rate = draw(st.floats(1e-6, 1e6))
        duration = draw(st.floats(1e-300, 0.999)) / rate
        return [f"--duration={duration!r}", f"--rate={rate!r}"], ("duration",)
    if kind == "schedule":          # a cycle tiny against the run: the layout would not fit
        d = draw(st.floats(1e-12, 1.0))
        r = draw(st.floats(max(1e-3, 1e3 / MAX_SIM_SECONDS), 1e6))
        if 1000 / (r * d) <= MAX_SCHEDULE_SEGMENTS:
            d = 1e-3 / r / 10
        return ["--arrival", "piecewise", f"--rate-schedule={d!r}:{r!r}"], ("rate_schedule",)
    if kind == "cost":
        key = draw(st.sampled_from(["overhead_s", "layer_floor_s", "compute_eff"]))
        value = draw(st.one_of(st.sampled_from(NONFINITE), st.floats(1e3, 1e308,
                                                                    exclude_min=True).map(repr)))
        return ["-n", "5", "--cost-param", f"{key}={value}"], (key,)
    if kind == "policy":
        value = draw(st.one_of(st.sampled_from(NONFINITE + ["1e20", "1e19"]),
                               st.integers(2**63, 10**30).map(str)))
        return ["-n", "5", "-p", f"max_num_seqs={value}"], ("max_num_seqs",)
    value = draw(st.one_of(st.sampled_from(["inf", "nan", "1e309", "0", "-1"]),
                           st.floats(1e6, 1e300, exclude_min=True).map(repr)))
    return ["-n", "5", "--type", f"p16d4:{value}"], ("type",)


@cases(200)
@given(degenerate_case())
def test_degenerate_arithmetic_is_refused_in_one_line(case):
    args, names = case
    assert_clean("degenerate arithmetic", cli("run", "-q", *args), *names)


# ---------------------------------------------------------------------------------------------
# Flags that conflict or do nothing

SINGLE_VALUED = {"--rate": st.sampled_from(["1", "3.5", "8"]),
                 "--seed": st.integers(0, 99).map(str),
                 "--policy": st.sampled_from(["vllm-v1", "sarathi", "sjf"]),
                 "--num-requests": st.integers(1, 50).map(str),
                 "--block-size": st.sampled_from(["16", "32"]),
                 "--prompt-len": st.sampled_from(["64", "32:128"]),
                 "--model": st.just("llama-2-7b"),
                 "--arrival": st.sampled_from(["poisson", "gamma"]),
                 "--kv-capacity": st.integers(20_000, 90_000).map(str)}
TYPES = st.builds(lambda p, d, r: f"p{p}d{d}:{r}", st.integers(1, 512), st.integers(1, 64),
                  st.sampled_from(["1", "2.5", "8"]))
TEXT_FIELDS = [f for f in FIELDS.values() if f.kind is str and f.flags]


@st.composite
def conflict_case(draw):
    kind = draw(st.sampled_from(["type", "schedule", "cv", "piecewise_rate", "long_context",
                                 "repeated_flag", "repeated_key", "empty", "lengths"]))
    if kind == "type":
        other = draw(st.sampled_from([("--prompt-len", "prompt_len", "64"),
                                      ("--output-len", "output_len", "8"),
                                      ("--rate", "rate", draw(st.sampled_from(["1", "9.5"])))]))
        return [["--type", draw(TYPES)], [other[0], other[2]]], (other[1],)
    if kind == "schedule":
        groups = [["--rate-schedule", "10:2,5:0"]]
        arrival = draw(st.sampled_from([None, "poisson", "gamma", "deterministic"]))
        return groups + ([["--arrival", arrival]] if arrival else []), ("rate_schedule",)
    if kind == "cv":
        arrival = draw(st.sampled_from([None, "poisson", "deterministic"]))
        groups = [["--cv", draw(st.sampled_from(["0.5", "2", "4"]))]]
        return groups + ([["--arrival", arrival]] if arrival else []), ("cv",)
    if kind == "piecewise_rate":
        return [["--arrival", "piecewise"], ["--rate-schedule", "10:2"], ["--rate", "3"]], \
            ("rate",)
    if kind == "long_context":
        context = model_spec("llama-2-7b").max_model_len
        return [["--max-model-len", str(draw(st.integers(context + 1, 2**31 - 1)))]], \
            ("max_model_len",)
    if kind == "repeated_flag":
        flag = draw(st.sampled_from(sorted(SINGLE_VALUED)))
        return [[flag, draw(SINGLE_VALUED[flag])], [flag, draw(SINGLE_VALUED[flag])]], (flag,)
    if kind == "repeated_key":
        flag, key, again = draw(st.sampled_from([("--slo", "ttft", "ttft"),
                                                 ("--slo", "ttft", "ttft_ms"),
                                                 ("--slo", "e2e", "e2el"),
                                                 ("-p", "max_num_seqs", "max-num-seqs"),
                                                 ("--cost-param", "overhead_s", "overhead_s")]))
        a, b = draw(st.integers(1, 900)), draw(st.integers(1, 900))
        if draw(st.booleans()):
            return [[flag, f"{key}={a},{again}={b}"]], (key.replace("-", "_"), again)
        return [[flag, f"{key}={a}"], [flag, f"{again}={b}"]], (key.replace("-", "_"), again)
    if kind == "empty":
        f = draw(st.sampled_from(TEXT_FIELDS + ["--out"]))
        blank = draw(st.sampled_from(["", " ", "   ", "\t"]))
        if f == "--out":
            return [["--out", blank]], ("--out",)
        return [[f.flags[-1], blank]], (f.name, f.flag)
    source = draw(st.sampled_from([("--trace", "trace"), ("--lengths-from", "lengths file")]))
    other = draw(st.sampled_from([("--prompt-len", "prompt_len"), ("--output-len", "output_len")]))
    path = str(ROOT / "tests" / "data" / "does-not-matter.csv")
    return [[source[0], path], [other[0], "64"]], (other[1],)


@cases(300)
@given(conflict_case(), st.randoms(use_true_random=False))
def test_conflicting_or_inert_flags_are_refused_in_one_line(case, rnd):
    groups, names = case
    rnd.shuffle(groups)          # the order of the flags does not matter
    args = [a for g in groups for a in g]
    assert_clean("conflicting or inert flags", cli("run", "-q", "-n", "5", *args), *names)


def test_the_same_fields_from_a_config_file_conflict_too(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('types = ["p16d4:2"]\nrate = 3\n')
    assert_clean("conflicting or inert flags", cli("run", "--config", str(path)), "rate")
    # A flag overrides the file's field without conflict: the documented precedence.
    path.write_text("rate = 3\nnum_requests = 5\n")
    code, _, lines = cli("run", "-q", "--config", str(path), "--rate", "4")
    assert code == 0, lines


def test_allow_long_max_model_len_is_the_explicit_override():
    context = model_spec("llama-2-7b").max_model_len
    cfg = build_config({}, {"max_model_len": context * 2, "allow_long_max_model_len": True})
    assert cfg.max_model_len == context * 2
    assert_clean("conflicting or inert flags", cli("run", "--allow-long-max-model-len"),
                 "allow_long_max_model_len")


# ---------------------------------------------------------------------------------------------
# Sweeps: every point is validated before anything runs; a name is a name, not a path

BAD_NAMES = st.one_of(
    st.sampled_from(["", " ", "..", ".", "../../x", "/abs", "a/b", "a\\b", "x/", " lead",
                     "trail ", "nul\0", "tab\there"]),
    st.builds(lambda a, b: f"{a}/{b}", st.text(max_size=5), st.text(max_size=5)),
    st.text(max_size=6).map(lambda s: "../" + s))


@cases(80)
@given(BAD_NAMES)
def test_a_sweep_name_that_is_not_a_plain_name_is_refused(name):
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "sub" / "spec.yaml"
        spec.parent.mkdir()
        spec.write_text(json.dumps({"name": name, "axes": {"seed": [0, 1]}}))
        cwd = os.getcwd()
        os.chdir(spec.parent)
        try:
            assert_clean("sweep specs", cli("sweep", str(spec), "-q"), "name")
        finally:
            os.chdir(cwd)
        assert sorted(p.name for p in Path(tmp).rglob("*")) == ["spec.yaml", "sub"]


@st.composite
def bad_point_case(draw):
    kind = draw(st.sampled_from(["trace", "lengths", "types", "budget", "kv"]))
    good = draw(st.integers(0, 3))
    if kind in ("trace", "lengths"):
        field = "trace" if kind == "trace" else "lengths_file"
        missing = f"/nonexistent/{draw(st.text('abc', min_size=1, max_size=8))}.csv"
        return {"base": {"num_requests": 5}, "axes": {field: [missing]}}, (field, missing)
    if kind == "types":
        bad = draw(st.sampled_from(["junk", "p5d5", "p5d5:-1", "p5d5:inf", "d5p5:1", "p0d5:1"]))
        values = [[f"p16d4:{good + 1}"], [bad]]
        return {"base": {"num_requests": 5}, "axes": {"types": values}}, ("types",)
    if kind == "budget":
        small = draw(st.integers(1, model_spec("llama-2-7b").max_model_len - 1))
        return {"base": {"num_requests": 5, "policy": "vllm-v1",
                         "policy_params": {"enable_chunked_prefill": False}},
                "axes": {"policy_params.max_num_batched_tokens": [8192, small]}}, \
            ("max_num_batched_tokens",)
    return {"base": {"num_requests": 5}, "axes": {"kv_capacity": [50_000, draw(st.integers(1, 15))],
                                                  "seed": [0, 1]}}, ("kv_capacity",)


@cases(80)
@given(bad_point_case())
def test_every_sweep_point_is_checked_before_anything_runs(case):
    spec_raw, names = case
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(json.dumps(spec_raw))
        out = Path(tmp) / "out"
        assert_clean("sweep specs", cli("sweep", str(spec), "--out", str(out), "-q"), *names)
        assert not out.exists()            # nothing ran, nothing was written


# ---------------------------------------------------------------------------------------------
# The cases the issue saw, in a real process: stderr is exactly the one line (no warning
# printed before or after it by numpy or Python)

SEEN = [(["--arrival", "gamma", "--cv", "1e308"], "cv"),
        (["--duration", "1e308"], "duration"),
        (["-n", "99999999999999999999999"], "num_requests"),
        (["--arrival", "piecewise", "--rate-schedule", "1e-9:8"], "rate_schedule"),
        (["--rate", "1e-300"], "rate"),
        (["-n", "5", "--cost-param", "overhead_s=inf"], "overhead_s"),
        (["-p", "max_num_seqs=1e20"], "max_num_seqs"),
        (["--type", "p512d20:8", "--prompt-len", "64"], "prompt_len"),
        (["--type", "p512d20:8", "--rate", "3"], "rate"),
        (["--rate-schedule", "10:2"], "rate_schedule"),
        (["--cv", "2"], "cv"),
        (["--trace", ""], "trace"),
        (["--out", ""], "--out"),
        (["--slo", "ttft=5,ttft=6"], "ttft"),
        (["--max-model-len", "100000"], "max_model_len")]


@pytest.mark.parametrize("args,name", SEEN, ids=[" ".join(a) for a, _ in SEEN])
def test_seen_cases_in_a_real_process(args, name):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "simulator", "run", "-q", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("servesim: error: ") and name in lines[0]
