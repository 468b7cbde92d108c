"""Output-length predictors for policies that order or plan by (predicted) output length."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from scheduler.base import QueuedPolicy, param
from scheduler.queues import PriorityQueue
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


@dataclass
class PredictorParams:
    predictor: str = param("oracle", "output-length predictor", choices=PREDICTORS)
    noise_sigma: float = param(0.5, "log-normal sigma of the noisy predictor's relative error",
                               minimum=0.0)


class ShortestPredictedFirst(QueuedPolicy):
    """A policy whose waiting queue is ordered by predicted output length, ties by arrival (SJF,
    MC-SF; ``Params`` extend ``PredictorParams``). A request's prediction is drawn once, at
    arrival, and kept until it finishes: a requeued request competes with the prediction it had
    (a new draw would change its place and shift the noisy predictor's stream for every later
    arrival)."""

    predictor_stream: ClassVar[int]     # the policy's own random stream for the noisy predictor

    def bind(self, spec):
        self.predicted: dict[int, int] = {}
        self.predict = OutputPredictor(self.params.predictor, self.params.noise_sigma, spec.seed,
                                       self.predictor_stream)
        super().bind(spec)

    def make_queue(self):
        return PriorityQueue(key=lambda r: (self.predicted[r.request_id], r.arrival_s,
                                            r.request_id))

    def on_arrival(self, req):
        self.predicted[req.request_id] = self.predict(req)
        super().on_arrival(req)

    def on_finish(self, req):
        self.predicted.pop(req.request_id, None)
        super().on_finish(req)
