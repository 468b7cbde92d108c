"""docs/writing-a-policy.md runs as written: its example policy (the first python block, at most
25 lines) saved as the module the guide names, its servesim commands run from that folder, its
test snippet passes, and the policy keeps the invariants."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from simulator.cli import main
from simulator.policycheck import check_policy

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-policy.md"
MODULE = "shortest_prompt"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.M | re.S)


@pytest.fixture
def author_folder(tmp_path, monkeypatch):
    """The example saved where the guide says, the current folder, as a policy author has it
    (not on sys.path: the `servesim` script finds it there as `python -m` would)."""
    (tmp_path / f"{MODULE}.py").write_text(blocks("python")[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return tmp_path


def test_the_example_policy_is_complete_in_at_most_25_lines():
    code = blocks("python")[0]
    assert len(code.rstrip("\n").splitlines()) <= 25
    assert f"Save this as `{MODULE}.py`" in DOC.read_text()


def test_the_guides_commands_run_as_written(author_folder, capsys):
    commands = [line for block in blocks("bash") for line in block.splitlines()
                if line.startswith("servesim ")]
    assert len(commands) >= 4
    for line in commands:
        assert main(shlex.split(line)[1:]) == 0, line
    out = capsys.readouterr().out
    assert "policy shortest-prompt: invariants hold on 20 workloads" in out
    assert "SERVESIM_POLICY=shortest_prompt:ShortestPromptFirst" in out


def test_the_guides_test_snippet_passes_and_the_example_keeps_the_invariants(author_folder,
                                                                             monkeypatch):
    monkeypatch.syspath_prepend(str(author_folder))   # as pytest does for a test file there
    namespace: dict = {}
    exec(compile(blocks("python")[1], "writing-a-policy.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0]()
    report = check_policy(f"{MODULE}:ShortestPromptFirst", max_examples=50)
    assert report.examples >= 40 and report.with_preemptions > 0 and report.with_rejections > 0
