"""A run's output folder holds exactly one run (simulator/run_folder.py), for ``servesim run``
(its figures included), ``capacity`` and ``sweep``: reuse is refused with the first run's bytes
unchanged, ``--replace`` removes that run's files only, a run killed by SIGKILL in its write
phase leaves no manifest and is refused until ``--replace``, an unwritable folder is one line
with exit status 2."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.cli import main
from simulator.run_folder import MANIFEST

SMALL = ["-n", "20", "--rate", "8", "--prompt-len", "64:256", "--output-len", "4:32"]
HYPOTHESIS = settings(max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err: str, *words: str) -> None:
    assert err.startswith("servesim: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def holds_exactly_its_run(folder: Path, others: set[str] = frozenset()) -> dict:
    """The folder holds the files its manifest lists, the manifest and ``others``, nothing
    else (no temporary file, no file of an earlier run)."""
    m = manifest(folder)
    assert m["status"] == "complete"
    assert set(snapshot(folder)) == set(m["files"]) | {MANIFEST} | set(others)
    return m


# ---------------------------------------------------------------------------------------------
# servesim run


def test_reusing_a_folder_is_refused_and_the_first_run_is_untouched(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "run", *SMALL, "--seed", "1", "--plot", "-q", "--out", str(out))
    assert code == 0, err
    first = snapshot(out)
    m = holds_exactly_its_run(out)
    assert {"figures/timeline.png", "figures/latency_cdf.png"} <= set(m["files"])
    assert m["seed"] == 1 and m["requests"] == 20
    code, _, err = run(capsys, "run", *SMALL, "--seed", "2", "--out", str(out))
    assert code == 2
    one_error_line(err, f"--out {out} holds another run", "--replace")
    assert snapshot(out) == first


def test_replace_removes_only_that_runs_files(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "run", *SMALL, "--plot", "-q", "--requests-format", "parquet",
               "--out", str(out))[0] == 0
    (out / "notes.txt").write_text("mine")
    (out / "figures" / "sketch.txt").write_text("mine too")
    code, _, err = run(capsys, "run", *SMALL, "--seed", "5", "--no-timeline", "-q", "--replace",
                       "--out", str(out))
    assert code == 0, err
    m = holds_exactly_its_run(out, {"notes.txt", "figures/sketch.txt"})
    assert set(m["files"]) == {"summary.json", "requests.csv", "config.json"}
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["seed"] == 5
    # A figures folder left with none of the run's figures but a file of the user's stays.
    assert not list((out / "figures").glob("*.png"))


def test_replace_without_out_and_an_unwritable_folder_are_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "run", *SMALL, "--replace")
    assert code == 2
    one_error_line(err, "--replace", "--out")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(capsys, "run", *SMALL, "--out", str(blocker / "run"))
    assert code == 2
    one_error_line(err, f"--out {blocker / 'run'}", "cannot write there")
    code, _, err = run(capsys, "run", *SMALL, "--out", str(blocker))
    assert code == 2
    one_error_line(err, "'--out'", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_one_line(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run(capsys, "run", *SMALL, "--out", str(ro))
        assert code == 2
        one_error_line(err, f"--out {ro}", "cannot write there (Permission denied)")
    finally:
        ro.chmod(0o755)


def killed_run(out: Path, kill_at: int, before: bool, *args: str) -> None:
    """``servesim run`` in a forked child that kills itself with SIGKILL at its ``kill_at``-th
    atomic rename (before or after doing it): a kill -9 at that moment of the write phase."""
    pid = os.fork()
    if pid == 0:                     # the child: never returns to pytest
        try:
            real, calls = os.replace, [0]

            def replace(src, dst):
                calls[0] += 1
                if calls[0] == kill_at and before:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(src, dst)
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            os.replace = replace
            main(["run", *SMALL, "-q", "--out", str(out), *args])
        finally:
            os._exit(0)              # reached only when the kill point was never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "not killed"


# summary, requests, timeline, config, two figures, manifest: 7 renames in a run with --plot.
# Every kill point (before and after each rename but the manifest's), into an empty folder or
# one holding a complete earlier run: all 26 cases.
KILL_POINTS = [(k, before) for k in range(1, 8) for before in (True, False)
               if (k, before) != (7, False)]


@pytest.mark.parametrize("replace_first", [False, True])
@pytest.mark.parametrize("kill_at, before", KILL_POINTS)
def test_a_run_killed_in_its_write_phase_never_looks_complete(capsys, tmp_path, kill_at, before,
                                                              replace_first):
    import matplotlib  # noqa: F401  (imported once here, not in every forked child)
    out = tmp_path / "run"
    if replace_first:   # the killed run was replacing a complete one
        assert run(capsys, "run", *SMALL, "--seed", "9", "-q", "--out", str(out))[0] == 0
    killed_run(out, kill_at, before, "--plot", "--replace")
    assert not (out / MANIFEST).exists()
    left = snapshot(out)
    code, _, err = run(capsys, "run", *SMALL, "--out", str(out))
    assert code == 2
    one_error_line(err, "holds another run", "--replace")
    assert snapshot(out) == left
    code, _, err = run(capsys, "run", *SMALL, "--seed", "3", "-q", "--plot", "--replace",
                       "--out", str(out))
    assert code == 0, err
    assert holds_exactly_its_run(out)["seed"] == 3
    assert not [n for n in snapshot(out) if n.endswith(".tmp")]


@HYPOTHESIS
@given(steps=st.lists(st.tuples(st.integers(0, 3), st.booleans(),
                                st.sampled_from(["csv", "parquet"]), st.booleans(),
                                st.sampled_from([False, False, False, True])),
                      min_size=1, max_size=5))
def test_any_sequence_of_runs_into_one_folder_leaves_one_whole_run(capsys, tmp_path_factory,
                                                                   steps):
    """Random sequences of runs (seed, --replace, format, timeline, --plot) into one folder:
    each run into an occupied folder without --replace is refused and changes no byte; every
    other run leaves exactly its own files, its manifest and the user's file."""
    out = tmp_path_factory.mktemp("seq") / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    has_run = False
    for seed, replace, fmt, timeline, plot in steps:
        before = snapshot(out)
        args = [*SMALL, "-q", "--seed", str(seed), "--requests-format", fmt, "--out", str(out)]
        args += [] if timeline else ["--no-timeline"]
        plot = plot and timeline           # the figures draw the timeline
        args += ["--plot"] if plot else []
        args += ["--replace"] if replace else []
        code, _, err = run(capsys, "run", *args)
        if has_run and not replace:
            assert code == 2
            one_error_line(err, "holds another run")
            assert snapshot(out) == before
            continue
        assert code == 0, err
        has_run = True
        m = holds_exactly_its_run(out, {"notes.txt"})
        assert m["seed"] == seed
        assert (f"requests.{fmt}" in m["files"]) and ("timeline.csv" in m["files"]) == timeline
        assert any(f.startswith("figures/") for f in m["files"]) == plot
        assert json.loads((out / "summary.json").read_text())["seed"] == seed


def test_a_manifest_never_sends_a_removal_outside_its_folder(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "run", *SMALL, "-q", "--out", str(out))[0] == 0
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    m = manifest(out)
    m["files"] += ["../precious.txt", str(outside), "figures/../../precious.txt"]
    (out / MANIFEST).write_text(json.dumps(m))
    assert run(capsys, "run", *SMALL, "-q", "--replace", "--out", str(out))[0] == 0
    assert outside.read_text() == "keep"


# ---------------------------------------------------------------------------------------------
# servesim capacity

CAPACITY = ["capacity", "--prompt-len", "1", "--output-len", "1", "--cost-model", "linear",
            "--cost-param", "c0=0.1", "-p", "max_num_seqs=1", "-n", "200", "--seeds", "1",
            "--criterion", "stable", "--rate-min", "2", "--rate-max", "40", "--tol", "0.5",
            "-j", "1", "-q"]


def test_capacity_folder_holds_one_search(capsys, tmp_path):
    out = tmp_path / "cap"
    code, _, err = run(capsys, *CAPACITY, "--out", str(out))
    assert code == 0, err
    m = holds_exactly_its_run(out)
    assert m["kind"] == "capacity" and m["files"] == ["capacity.json"]
    first = snapshot(out)
    code, _, err = run(capsys, *CAPACITY, "--out", str(out))
    assert code == 2
    one_error_line(err, "holds another run (capacity.json, manifest.json)")
    assert snapshot(out) == first
    # Another command's run is refused too, and --replace takes its place.
    code, _, err = run(capsys, "run", *SMALL, "--out", str(out))
    assert code == 2
    assert run(capsys, *CAPACITY, "--replace", "--out", str(out))[0] == 0
    blocker = tmp_path / "f"
    blocker.write_text("")
    code, _, err = run(capsys, *CAPACITY, "--out", str(blocker / "x"))
    assert code == 2
    one_error_line(err, "cannot write there")


# ---------------------------------------------------------------------------------------------
# servesim sweep

SPEC = "base: {num_requests: 20, rate: 8, prompt_len: '64:128', output_len: '4:16'}\n"


def test_a_sweep_folder_resumes_its_own_spec_and_refuses_another(capsys, tmp_path):
    spec, out = tmp_path / "s.yaml", tmp_path / "results"
    spec.write_text(SPEC + "axes: {seed: [0, 1]}\n")
    code, stdout, err = run(capsys, "sweep", str(spec), "--out", str(out), "--json", "-j", "1")
    assert code == 0, err
    m = manifest(out)
    assert m["kind"] == "sweep" and m["status"] == "complete" and m["ok"] == 2
    assert set(snapshot(out)) == set(m["files"]) | {MANIFEST}
    # The same spec resumes (nothing to run); a changed save: still the same sweep.
    code, stdout, err = run(capsys, "sweep", str(spec), "--out", str(out), "--json", "-j", "1")
    assert code == 0 and json.loads(stdout)["skipped"] == 2
    spec.write_text(SPEC + "axes: {seed: [0, 1]}\nsave: {timeline: true}\n")
    code, stdout, err = run(capsys, "sweep", str(spec), "--out", str(out), "--json", "-j", "1")
    assert code == 0 and json.loads(stdout)["ran"] == 2, err
    # Another grid is another sweep: refused, bytes unchanged, until --replace.
    before = snapshot(out)
    spec.write_text(SPEC + "axes: {seed: [0, 1, 2]}\n")
    code, _, err = run(capsys, "sweep", str(spec), "--out", str(out), "-j", "1")
    assert code == 2
    one_error_line(err, f"--out {out} holds another run", "--replace")
    assert snapshot(out) == before
    code, stdout, err = run(capsys, "sweep", str(spec), "--out", str(out), "--json", "-j", "1",
                            "--replace")
    assert code == 0 and json.loads(stdout)["ran"] == 3, err
    m = manifest(out)
    assert set(snapshot(out)) == set(m["files"]) | {MANIFEST} and m["points"] == 3
    # A run's folder is not a sweep's, nor the other way round.
    code, _, err = run(capsys, "run", *SMALL, "--out", str(out))
    assert code == 2 and "holds another run" in err
    assert run(capsys, "run", *SMALL, "-q", "--out", str(tmp_path / "r"))[0] == 0
    code, _, err = run(capsys, "sweep", str(spec), "--out", str(tmp_path / "r"))
    assert code == 2
    one_error_line(err, "holds another run (config.json")
    blocker = tmp_path / "f"
    blocker.write_text("")
    code, _, err = run(capsys, "sweep", str(spec), "--out", str(blocker / "results"))
    assert code == 2
    one_error_line(err, "cannot write there")


# ---------------------------------------------------------------------------------------------
# servesim report


def test_a_report_replaces_its_predecessor_and_never_lands_beside_another_run(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "run", *SMALL, "-q", "--plot", "--out", str(out))[0] == 0
    (out / "figures" / "p99_vs_rate.png").write_bytes(b"a figure of an earlier report")
    code, _, err = run(capsys, "report", str(out))
    assert code == 0, err
    # The run's figures redrawn in place, the earlier report's figure gone, the manifest true.
    holds_exactly_its_run(out, {"report.md"})
    elsewhere = tmp_path / "elsewhere"
    assert run(capsys, "report", str(out), "--out", str(elsewhere))[0] == 0
    before = snapshot(elsewhere)
    code, _, err = run(capsys, "report", str(out), "--out", str(elsewhere))
    assert code == 2
    one_error_line(err, f"--out {elsewhere} holds another run", "--replace")
    assert snapshot(elsewhere) == before
    assert run(capsys, "report", str(out), "--out", str(elsewhere), "--replace")[0] == 0
    (out / MANIFEST).unlink()        # as a killed run leaves it
    code, _, err = run(capsys, "report", str(out))
    assert code == 0 and "has no manifest.json: its run was killed" in err
