"""Errors of the simulator. Each message is one line a user can act on."""

# Declared beside the policy interface: StepPlan raises it too, and scheduler/ imports nothing
# from simulator/.
from scheduler.base import PolicyViolation  # noqa: F401


class ConfigError(ValueError):
    """A run configuration value is invalid (flag, config file key or type, preset name)."""


class SimulationStalled(RuntimeError):
    """The policy left requests unfinished with nothing that could ever wake the replica."""
