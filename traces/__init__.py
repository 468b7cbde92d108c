"""Workloads: request records, arrival processes, length distributions, trace loaders."""

from traces.arrivals import Deterministic, Gamma, PiecewisePoisson, Poisson
from traces.errors import WorkloadError
from traces.lengths import (EmpiricalLengths, Fixed, IndependentLengths, RequestType, TypeMixture,
                            Uniform, parse_length, parse_type)
from traces.request import Request
from traces.workload import Workload, synthesize

__all__ = [
    "Deterministic", "EmpiricalLengths", "Fixed", "Gamma", "IndependentLengths", "PiecewisePoisson",
    "Poisson", "Request", "RequestType", "TypeMixture", "Uniform", "Workload", "WorkloadError",
    "parse_length", "parse_type", "synthesize",
]
