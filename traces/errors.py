"""The error hierarchy of servesim, and the errors of workload input.

Every error servesim raises on purpose derives from ``ServesimError`` and carries the exit
status the command line returns for it (``servesim`` prints one line, never a traceback):

    ServesimError (1)
    +-- UserError (2): bad input the user can fix; also a ValueError
    |   +-- WorkloadError        traces/ (this module): workload parameters, trace files
    |   +-- PolicyError          scheduler/base.py: policy names and parameters
    |   +-- ConfigError          simulator/errors.py: run configuration, presets, files
    +-- SimulationError (3): a run that cannot go on; also a RuntimeError
        +-- PolicyViolation      simulator/errors.py: a decision the engine cannot apply
        +-- SimulationStalled    simulator/errors.py: unfinished requests, nothing to wake

The base lives here because traces/ is the lowest room: scheduler/ and simulator/ may import
it, and it imports nothing (docs/architecture.md).
"""

from __future__ import annotations

from typing import ClassVar


class ServesimError(Exception):
    """An error servesim raises on purpose. The message is one line a user can act on."""

    exit_code: ClassVar[int] = 1
    kind: ClassVar[str] = "error"       # the command line's prefix: "servesim: error: ..."


class UserError(ServesimError, ValueError):
    """Invalid input: a flag, parameter, file or value the user gave."""

    exit_code = 2


class SimulationError(ServesimError, RuntimeError):
    """A simulation that cannot go on (a policy bug, or a run that can never finish)."""

    exit_code = 3
    kind = "simulation error"


class WorkloadError(UserError):
    """A workload parameter or input file is invalid."""
