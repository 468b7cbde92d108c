"""Start-up: ``servesim --help``, ``--version`` and ``servesim policies`` import neither pandas,
SimPy, matplotlib nor vLLM (each command imports what it needs when it runs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("pandas", "pyarrow", "simpy", "matplotlib", "vllm", "torch", "asyncio", "rich.table")
PROBE = """
import contextlib, io, json, sys
from simulator.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = main({argv!r})
print(json.dumps({{"rc": rc, "out": out.getvalue(),
                  "loaded": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""


def start(*argv: str) -> dict:
    code = PROBE.format(argv=list(argv))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("argv, shows", [
    (("--help",), "Commands:"),
    (("--version",), "servesim, version"),
    (("policies",), "vllm-v1"),
])
def test_light_commands_import_no_heavy_package(argv, shows):
    got = start(*argv)
    assert got["rc"] == 0 and shows in got["out"]
    assert sorted(set(HEAVY) & set(got["loaded"])) == []


def test_a_simulation_still_finds_what_it_imports_late(tmp_path):
    """The imports moved into the commands are there when a command runs."""
    got = start("run", "-n", "3", "--json", "--out", str(tmp_path))
    assert got["rc"] == 0 and json.loads(got["out"])["completed"] == 3
    assert {"pandas", "simpy"} <= set(got["loaded"])


def test_the_lazy_packages_resolve_their_names():
    import simulator.sweep
    import traces
    assert traces.Poisson(2.0).rate == 2.0
    assert callable(simulator.sweep.run_sweep) and "run_sweep" in simulator.sweep.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        traces.Nope  # noqa: B018
