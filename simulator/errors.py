"""Errors of the simulator (the hierarchy and its exit codes: traces/errors.py)."""

from traces.errors import SimulationError, UserError

# Declared beside the policy interface: StepPlan raises it too, and scheduler/ imports nothing
# from simulator/.
from scheduler.base import PolicyViolation  # noqa: F401


class ConfigError(UserError):
    """A run configuration value is invalid (flag, config file key or type, preset name)."""


class SimulationStalled(SimulationError):
    """The policy left requests unfinished with nothing that could ever wake the replica."""

