"""The fluid model's throughput bound for a sweep point (``servesim fluid``'s numbers), and the
bound at a given load for the report's throughput figure.
"""

from __future__ import annotations

from simulator.config import RunConfig
from simulator.errors import ConfigError
from traces.errors import WorkloadError

KEYS = ("throughput_bound", "max_rate_scale", "max_rate", "M_star", "stable")


def fluid_summary(cfg: RunConfig, workload=None) -> dict | None:
    """Thr* (output tokens/s at the offered rates), the largest stable rate scaling and the
    equilibrium memory of ``cfg``'s workload (``workload``: the one ``cfg`` builds, when the
    caller has it); None for a workload the fluid model cannot describe (no arrival rate)."""
    from simulator.fluid_report import fluid_report
    try:
        report = fluid_report(cfg, workload=workload)
    except (ConfigError, WorkloadError, ValueError):
        return None
    return {k: report.get(k) for k in KEYS}


def bounded_throughput(throughput_bound: float, max_rate_scale: float | None) -> float:
    """The bound at this load: Thr* inside the stable region; past it, Thr* scaled back to the
    largest stable rates (no policy sustains more). A null scale is an unbounded region."""
    scale = 1.0 if max_rate_scale is None else min(1.0, max_rate_scale)
    return throughput_bound * scale
