"""Workloads: request records, arrival processes, length distributions, trace loaders.

The names below are imported on first use (traces/lazy.py), so importing one light module of
this package (``traces.errors``, the error hierarchy every room imports) loads neither NumPy
nor pandas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from traces.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "traces.arrivals": ("Deterministic", "Gamma", "PiecewisePoisson", "Poisson"),
    "traces.errors": ("WorkloadError",),
    "traces.lengths": ("EmpiricalLengths", "Fixed", "IndependentLengths", "RequestType",
                       "TypeMixture", "Uniform", "parse_length", "parse_type"),
    "traces.request": ("Request",),
    "traces.workload": ("Workload", "synthesize"),
})

if TYPE_CHECKING:
    from traces.arrivals import Deterministic, Gamma, PiecewisePoisson, Poisson
    from traces.errors import WorkloadError
    from traces.lengths import (EmpiricalLengths, Fixed, IndependentLengths, RequestType,
                                TypeMixture, Uniform, parse_length, parse_type)
    from traces.request import Request
    from traces.workload import Workload, synthesize
