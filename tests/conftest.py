"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ON_CI = os.environ.get("CI", "").lower() == "true"

# Under CI the property tests draw a fixed sequence of examples, so a run is reproducible and a
# red build always points at the same counterexample; local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if ON_CI:
    settings.load_profile("ci")


def require_shared(*parts: str) -> Path:
    """Path under ../shared; skipped locally when missing, a failure under CI=true."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if ON_CI:
            pytest.fail(f"{path} is missing: CI must provide ../shared")
        pytest.skip(f"{path} not available")
    return path


def require_vllm():
    """Import vLLM's V1 scheduler: skipped locally when vLLM is missing or broken, a failure
    under CI=true (CI installs the vllm extra). Call at module level of a vLLM test file."""
    try:
        import vllm
        from vllm.v1.core.sched.scheduler import Scheduler  # noqa: F401
    except Exception as e:   # a broken install (torchvision beside CPU torch) raises RuntimeError
        msg = f"vLLM is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if ON_CI:
            pytest.fail(f"{msg}: CI must install the vllm extra", pytrace=False)
        pytest.skip(msg, allow_module_level=True)
    return vllm


def builtin_policy_names() -> list[str]:
    """The policies servesim ships (scheduler/policies/), without the test policies that other
    test modules register while pytest collects them (their order would otherwise decide which
    policies a parametrized test covers)."""
    from scheduler.base import policy_class, policy_names
    return [n for n in policy_names() if policy_class(n).__module__.startswith("scheduler.policies")]


def take_sigint() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT (as Ctrl-C would): it takes the
    signal even when the test run itself ignores it. A shell without job control starts a
    background command (``pytest ... &`` in a script) with SIGINT ignored, and children
    inherit that (POSIX), so such a child would not notice the test's Ctrl-C at all."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def load_experiment(name: str):
    """The script experiments/NAME.py as a module (executed afresh), for its tests."""
    path = ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
