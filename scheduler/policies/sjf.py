"""Shortest-job-first admission by (predicted) output length.

Same step structure as vLLM V1 (token budget, running first, chunked prefill, recompute
preemption), but the waiting queue is ordered by predicted output length, ties by arrival. The
predictor is the oracle (true length) or a noisy one: predicted = round(true * exp(N(0, sigma)))
with a seeded stream, a common model of learned length predictors' relative error.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import param, register
from scheduler.policies.vllm_v1 import VllmV1, VllmV1Params
from scheduler.predictors import PREDICTORS, OutputPredictor
from scheduler.queues import PriorityQueue


@dataclass
class SJFParams(VllmV1Params):
    predictor: str = param("oracle", "output-length predictor", choices=PREDICTORS)
    noise_sigma: float = param(0.5, "log-normal sigma of the noisy predictor's relative error",
                               minimum=0.0)


@register
class ShortestJobFirst(VllmV1):
    name = "sjf"
    summary = "Shortest predicted output first (oracle or noisy predictor), vLLM V1 step rules"
    Params = SJFParams

    def bind(self, spec):
        self.predicted: dict[int, int] = {}
        self.predict = OutputPredictor(self.params.predictor, self.params.noise_sigma, spec.seed,
                                       0x5AF)
        super().bind(spec)

    def make_queue(self):
        return PriorityQueue(key=lambda r: (self.predicted[r.request_id], r.arrival_s,
                                            r.request_id))

    def on_arrival(self, req):
        self.predicted[req.request_id] = self.predict(req)
        super().on_arrival(req)

    def on_finish(self, req):
        self.predicted.pop(req.request_id, None)
