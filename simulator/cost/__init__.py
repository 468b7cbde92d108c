"""Cost models: how long one iteration takes for a given batch."""

from simulator.cost.base import BatchShape, CostModel
from simulator.cost.linear import LinearCost, LinearFit, fit_linear, representative_batches

__all__ = ["BatchShape", "CostModel", "LinearCost", "LinearFit", "fit_linear",
           "representative_batches"]
