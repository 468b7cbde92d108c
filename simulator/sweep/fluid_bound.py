"""The fluid model's throughput bound for a sweep point, when the fluid model is installed.

The fluid model (scheduler/fluid.py, with ``servesim fluid``) is its own issue; this hook adds
its numbers to a point's summary when it is importable and leaves them out otherwise, so sweeps
and reports work either way and pick the bound up as soon as the module lands.
"""

from __future__ import annotations

from simulator.config import RunConfig
from simulator.errors import ConfigError
from traces.errors import WorkloadError

KEYS = ("throughput_bound", "max_rate_scale", "max_rate", "M_star", "stable")


def fluid_summary(cfg: RunConfig) -> dict | None:
    """Thr* (output tokens/s at the offered rates), the largest stable rate scaling and the
    equilibrium memory of ``cfg``'s workload; None without the fluid model or for a workload
    it cannot describe."""
    try:
        from simulator.cli.fluid import fluid_report
    except ImportError:
        return None
    try:
        report = fluid_report(cfg)
    except (ConfigError, WorkloadError, ValueError):
        return None
    return {k: report.get(k) for k in KEYS}


def bounded_throughput(throughput_bound: float, max_rate_scale: float | None) -> float:
    """The bound at this load: Thr* inside the stable region; past it, Thr* scaled back to the
    largest stable rates (no policy sustains more). A null scale is an unbounded region."""
    scale = 1.0 if max_rate_scale is None else min(1.0, max_rate_scale)
    return throughput_bound * scale
