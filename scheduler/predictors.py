"""Output-length predictors for policies that order or plan by (predicted) output length."""

from __future__ import annotations

import math

import numpy as np

from scheduler.state import RequestState

PREDICTORS = ("oracle", "noisy")


class OutputPredictor:
    """The oracle (true length) or a noisy one: round(true x exp(N(0, sigma))), at least 1, from
    a seeded stream: a common model of learned length predictors' relative error."""

    def __init__(self, kind: str, sigma: float, seed: int, stream: int):
        if kind not in PREDICTORS:
            raise ValueError(f"predictor must be one of {PREDICTORS}, got {kind!r}")
        self.kind = kind
        self.sigma = sigma
        self._rng = np.random.default_rng([seed, stream])

    def __call__(self, req: RequestState) -> int:
        if self.kind == "oracle":
            return req.output_tokens
        return max(1, round(req.output_tokens * math.exp(self._rng.normal(0.0, self.sigma))))
