"""MC-SF: memory-constrained shortest-first.

P. Jaillet, J. Jiang, K. Mellou, M. Molinaro, C. Podimata, Z. Zhou, "Online Scheduling for LLM
Inference with KV Cache Constraints", arXiv:2502.07115.

Every round all started requests run (they are never evicted while their predictions hold); then
waiting requests are scanned by predicted output length, shortest first, and one is added when the
KV of the running and added requests stays within the capacity at every future round. A request
with b tokens after this round and L rounds to go holds b + t tokens at round t < L, so the total
grows between completions and peaks just before each one: checking the rounds t = L_x - 1 of every
request x is enough. In our engine a request's b is its prompt + generated tokens (the prefill
round computes them all) and L = predicted output - generated. Each request is charged
block_size - 1 extra tokens, the most that rounding its KV up to whole blocks can add, so an
admitted batch always fits in blocks.

``on_misfit``: ``stop`` ends the scan at the first request that does not fit (our reading of the
paper's Algorithm 1, which adds the shortest requests "while" the constraint holds); ``skip``
tries the longer ones after it. A request that outlives its predicted length is expected to end
next round; if the KV still runs out, the latest admitted request is preempted (recompute).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scheduler.base import param, register
from scheduler.kvprojection import MemoryProfile, projected
from scheduler.plan import StepPlan
from scheduler.predictors import PredictorParams, ShortestPredictedFirst


@dataclass
class MCSFParams(PredictorParams):
    on_misfit: str = param("stop", "at the first waiting request that does not fit: stop the "
                                   "scan, or skip it and try longer ones", choices=("stop", "skip"))


@register
class MCSF(ShortestPredictedFirst):
    name = "mcsf"
    summary = "MC-SF: shortest predicted output first, admitted only if future peak KV fits"
    Params = MCSFParams
    predictor_stream = 0x3C5F
    # With requests waiting, the projection may admit one at any later round (running requests
    # near their predicted end leave room), so a decode-only decision then asks again at the
    # next iteration (wake_at = now); with none waiting, the batch changes only at an event.
    steady_decode = True

    def expected_output(self, req) -> int:
        """The output length a request is projected to: its prediction."""
        return self.predicted[req.request_id]

    def schedule(self, view):
        plan = StepPlan(view, math.inf, on_preempt=self.requeue_preempted)
        for req in list(plan.running):
            if not plan.is_preempted(req):
                plan.schedule_resident(req, req.remaining)
        block_size = self.spec.block_size
        profile = MemoryProfile.of(plan.running, self.expected_output, block_size,
                                   self.spec.kv_capacity_tokens)
        skip = self.params.on_misfit == "skip"
        candidates = list(self.waiting) if skip else None
        i = 0
        while True:
            if skip:
                if i >= len(candidates):
                    break
                req = candidates[i]
                i += 1
            else:
                if not self.waiting:
                    break
                req = self.waiting.peek()
            base, rounds = projected(req, self.expected_output(req), block_size)
            # Alone on an idle replica a request always runs: the engine admitted it knowing its
            # true peak fits, and an over-prediction must not block it forever.
            alone = not plan.running
            if not (alone or profile.fits(base, rounds)) or \
                    not plan.admit(req, req.remaining):
                if skip:
                    continue
                break
            self.waiting.remove(req) if skip else self.waiting.pop()
            profile.add(base, rounds)
        d = plan.decision()
        if self.waiting and d.decode and not d.prefill:
            d.wake_at = view.now
        return d
