"""Errors of the simulator. Each message is one line a user can act on."""

from scheduler.base import PolicyError
from traces.errors import WorkloadError


class ConfigError(ValueError):
    """A run configuration value is invalid (flag, config file key or type, preset name)."""


class PolicyViolation(RuntimeError):
    """A policy returned a decision the engine cannot apply (a bug in the policy)."""


class SimulationStalled(RuntimeError):
    """The policy left requests unfinished with nothing that could ever wake the replica."""


# Errors a user causes with bad input (the CLI: one line, exit status 2).
USER_ERRORS = (ConfigError, PolicyError, WorkloadError)
