"""Shortest-job-first admission by (predicted) output length.

Same step structure as vLLM V1 (token budget, running first, chunked prefill, recompute
preemption), but the waiting queue is ordered by predicted output length, ties by arrival. The
predictor is the oracle (true length) or a noisy one: predicted = round(true * exp(N(0, sigma)))
with a seeded stream, a common model of learned length predictors' relative error.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import register
from scheduler.policies.vllm_v1 import VllmV1, VllmV1Params
from scheduler.predictors import PredictorParams, ShortestPredictedFirst


@dataclass
class SJFParams(PredictorParams, VllmV1Params):
    pass


@register
class ShortestJobFirst(ShortestPredictedFirst, VllmV1):
    name = "sjf"
    summary = "Shortest predicted output first (oracle or noisy predictor), vLLM V1 step rules"
    Params = SJFParams
    predictor_stream = 0x5AF
    steady_decode = True        # vLLM V1's step rules: the same reasons hold
    reads_cache_of_head = True   # admits in queue order, stopping at the head
