"""One error hierarchy (traces/errors.py): every error class servesim defines derives from
ServesimError, and the command line's exit status and prefix come from the error's class."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from scheduler.base import PolicyError
from simulator.cli import cli, main
from simulator.errors import ConfigError, PolicyViolation, SimulationStalled
from tests.conftest import ROOT
from traces.errors import ServesimError, SimulationError, UserError, WorkloadError


def defined_exceptions() -> set[type]:
    """Every Exception class defined in the package (SweepInterrupted, a KeyboardInterrupt that
    carries the saved outcome of an interrupted sweep, is control flow, not an error)."""
    found = set()
    for package in ("scheduler", "simulator", "traces"):
        # This tree's folder only: simulator/ is a namespace package, which would also list
        # the modules of any other checkout on sys.path.
        path = [str(ROOT / package)]
        for info in pkgutil.walk_packages(path, package + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, Exception) and \
                        value.__module__ == module.__name__:
                    found.add(value)
    return found


def test_every_error_class_derives_from_the_one_base():
    classes = defined_exceptions()
    assert {ConfigError, PolicyError, WorkloadError, PolicyViolation,
            SimulationStalled} <= classes
    assert {c for c in classes if not issubclass(c, ServesimError)} == set()


@pytest.mark.parametrize("error, code, prefix", [
    (WorkloadError, 2, "error"), (PolicyError, 2, "error"), (ConfigError, 2, "error"),
    (PolicyViolation, 3, "simulation error"), (SimulationStalled, 3, "simulation error"),
    (ServesimError, 1, "error"),
])
def test_the_exit_status_is_the_error_class_s(error, code, prefix, capsys):
    assert error.exit_code == code
    assert issubclass(error, UserError) == (code == 2)
    assert issubclass(error, SimulationError) == (code == 3)

    @cli.command("raise-for-test")
    def raise_for_test():
        raise error("what went wrong, in one line")
    try:
        assert main(["raise-for-test"]) == code
    finally:
        cli.commands.pop("raise-for-test")
    assert capsys.readouterr().err == f"servesim: {prefix}: what went wrong, in one line\n"


def test_real_user_errors_exit_2_with_one_line(capsys):
    assert main(["run", "-n", "3", "--policy", "no-such-policy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("servesim: error: unknown policy 'no-such-policy'") and \
        err.count("\n") == 1
    assert main(["run", "-n", "3", "--prompt-len", "0"]) == 2
    assert capsys.readouterr().err.startswith("servesim: error: prompt_len")


def test_user_errors_stay_value_errors():
    """Code that catches ValueError around parsing keeps catching bad input."""
    for error in (ConfigError, PolicyError, WorkloadError):
        assert issubclass(error, ValueError)
    assert issubclass(PolicyViolation, RuntimeError)
