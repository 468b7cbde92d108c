"""Errors a user can cause with workload input (bad parameters, malformed files)."""


class WorkloadError(ValueError):
    """A workload parameter or input file is invalid. The message is one line a user can act on."""
