"""Errors of the simulator (the hierarchy and its exit codes: traces/errors.py)."""

from traces.errors import SimulationError, UserError


class ConfigError(UserError):
    """A run configuration value is invalid (flag, config file key or type, preset name)."""


class PolicyViolation(SimulationError):
    """A policy returned a decision the engine cannot apply (a bug in the policy)."""


class SimulationStalled(SimulationError):
    """The policy left requests unfinished with nothing that could ever wake the replica."""

