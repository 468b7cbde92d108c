"""Every ```bash example in README.md, docs/*.md and experiments/README.md runs as written.

A document's blocks run in order, each as one bash script under ``set -euo pipefail``, in one
temporary folder per document that stands in for the repository root: the repository's
top-level entries are linked into it (so ``experiments/sweeps/quick.yaml`` resolves, while
anything an example writes, ``runs/`` or ``results/``, lands in the temporary folder), and
``../shared`` is the reference data beside the repository, as in tests/conftest.py. ``servesim``
is ``python -m simulator`` of this checkout. The examples are written with small sizes: the
test changes nothing in them.

A block that the text before it introduces with "Save this as `NAME`" is saved as NAME in that
folder first, as a reader would (docs/writing-a-policy.md's policy module).

Examples that cannot run here (a download, a GPU, a remote Ray cluster, a Hugging Face model
name) are written in ```console blocks, which this test does not run.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.conftest import ON_CI, ROOT, SHARED

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             ROOT / "experiments" / "README.md"]
FENCE = re.compile(r"^\s*```(\S*)\s*$")
SAVE_AS = re.compile(r"Save this as `([^`/]+)`:?\s*$")
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    path: Path
    line: int          # of the opening fence, 1-based
    lang: str
    text: str
    save_as: str | None = None     # named by "Save this as `NAME`" just before the block

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their language tag."""
    blocks, lang, start, body, prose = [], None, 0, [], ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if lang is None and fence:
            save = SAVE_AS.search(prose)
            lang, start, body = fence.group(1), number, []
        elif lang is not None and fence and not fence.group(1):
            blocks.append(Block(path, start, lang, "\n".join(body) + "\n",
                                save.group(1) if save else None))
            lang, prose = None, ""
        elif lang is not None:
            body.append(line)
        elif line.strip():
            prose = line
    assert lang is None, f"{path.relative_to(ROOT)}:{start}: unclosed code block"
    return blocks


def bash_blocks(path: Path) -> list[Block]:
    return [b for b in code_blocks(path) if b.lang == "bash"]


def workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder standing in for the repository root, and the environment examples run in."""
    work = tmp_path / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in ("runs", "results"):
            (work / entry.name).symlink_to(entry)
    if SHARED.exists():
        (tmp_path / "shared").symlink_to(SHARED)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    servesim = bin_dir / "servesim"
    servesim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m simulator \"$@\"\n")
    servesim.chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]]),
        PYTHONPATH=str(ROOT),
        SERVESIM_CACHE=str(tmp_path / "cache"),   # never the user's cache
        HF_HUB_OFFLINE="1",
        MPLBACKEND="Agg",
        COLUMNS="100",
    )
    return work, env


def run_block(block: Block, work: Path, env: dict[str, str]) -> None:
    # A session of its own, so a block that overruns is stopped with every process it started.
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.text], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{block.where()}: still running after {BLOCK_TIMEOUT_S} s:\n{block.text}",
                    pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{block.where()}: exit status {proc.returncode}\n{block.text}\n--- output "
                    f"---\n{output[-3000:]}", pytrace=False)


def run_document(path: Path, work: Path, env: dict[str, str]) -> None:
    """Save the files the text asks for, then run the bash blocks in order."""
    for block in code_blocks(path):
        if block.save_as:
            (work / block.save_as).write_text(block.text)
    for block in bash_blocks(path):
        run_block(block, work, env)


WITH_EXAMPLES = [p for p in DOCUMENTS if p.exists() and bash_blocks(p)]


@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_bash_example_runs(path, tmp_path):
    blocks = bash_blocks(path)
    if any("../shared" in b.text for b in blocks) and not SHARED.exists():
        if ON_CI:
            pytest.fail(f"{SHARED} is missing: CI must provide ../shared")
        pytest.skip(f"{SHARED} not available")
    run_document(path, *workspace(tmp_path))


def test_the_readme_has_examples_to_run():
    assert len(bash_blocks(ROOT / "README.md")) >= 5      # one per common task


def test_readme_setup_command_is_the_ci_command():
    """The README's test command is byte for byte what .ci/run runs."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = [line for line in ci if line.startswith("python3 -m venv")]
    assert len(command) == 1, ".ci/run should hold one set-up command"
    readme_lines = [line for b in code_blocks(ROOT / "README.md") for line in b.text.splitlines()]
    assert command[0] in readme_lines


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if p.exists()],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(path):
    """A link moved with its text into docs/ or experiments/ still resolves from there."""
    broken = [target for target in LINK.findall(path.read_text())
              if not re.match(r"[a-z]+:|#", target)
              and not (path.parent / target.split("#")[0]).exists()]
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files: {broken}"


def test_readme_lists_the_columns_the_tables_have():
    from simulator.metrics import REQUEST_COLUMNS, TIMELINE_COLUMNS
    text = (ROOT / "README.md").read_text()
    for table, columns in (("requests.csv", REQUEST_COLUMNS), ("timeline.csv", TIMELINE_COLUMNS)):
        bullet = re.search(rf"^- \*\*{re.escape(table)}\*\*(.*?)(?=^- |^$)", text, re.M | re.S)
        assert bullet, f"README.md has no bullet for {table}"
        listed = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", bullet.group(1)))
        assert tuple(listed) == tuple(columns), table


def test_code_blocks_reads_tags_and_bodies(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```bash\necho one\n```\n\n```console\n$ x\n```\n  ```bash\n  echo two\n"
                   "  ```\n")
    blocks = code_blocks(doc)
    assert [(b.line, b.lang) for b in blocks] == [(2, "bash"), (6, "console"), (9, "bash")]
    assert blocks[0].text == "echo one\n"
    assert [b.text for b in bash_blocks(doc)] == ["echo one\n", "  echo two\n"]
    assert [b.save_as for b in blocks] == [None, None, None]


def test_a_block_introduced_as_a_file_is_saved_before_the_examples_run(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Save this as `greet.py`:\n\n```python\nprint('hi')\n```\n\nThen:\n\n"
                   "```bash\npython greet.py | grep -x hi\n```\n")
    saved, run = code_blocks(doc)
    assert (saved.save_as, run.save_as) == ("greet.py", None)
    work, env = workspace(tmp_path)
    run_document(doc, work, env)
    assert (work / "greet.py").read_text() == "print('hi')\n"


def test_an_overrunning_example_is_stopped_with_its_children(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "BLOCK_TIMEOUT_S", 1)
    pid_file = tmp_path / "child.pid"
    doc = tmp_path / "x.md"
    doc.write_text(f"```bash\nsleep 60 >/dev/null 2>&1 & echo $! > {pid_file}\nwait\n```\n")
    block = replace(bash_blocks(doc)[0], path=ROOT / "docs" / "x.md")
    work, env = workspace(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="still running after 1 s"):
        run_block(block, work, env)
    child = int(pid_file.read_text())
    for _ in range(100):            # killed; gone once its new parent has reaped it
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the block's child {child} outlived it")


def test_a_failing_example_names_its_place(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("```bash\ntrue\nfalse\necho never\n```\n")
    block = replace(bash_blocks(doc)[0], path=ROOT / "docs" / "x.md")   # where(): from ROOT
    work, env = workspace(tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"docs/x\.md:1: exit status 1"):
        run_block(block, work, env)
