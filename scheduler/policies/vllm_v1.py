"""vLLM V1's default scheduler: one token budget per step, running requests first, chunked prefill.

Mirrors ``vllm/v1/core/sched/scheduler.py`` (FCFS policy, no prefix caching, no speculation):
1. Running requests in running order each get min(remaining, budget) tokens; when KV blocks run
   short, the tail of the running list is preempted (recompute) and put at the front of the
   waiting queue, until the request fits or is itself the victim (then the step stops here).
2. Only if nothing was preempted: waiting requests in FCFS order are admitted, each with
   min(remaining, budget) tokens (a chunk when chunked prefill is on), while the budget, the
   sequence cap and free blocks allow; the first that does not fit stops admission. As in vLLM
   0.32 (``scheduler_reserve_full_isl``), a request is admitted only when KV for its whole prompt
   (or recompute) is free, so a long prompt is not started in chunks that later force
   preemptions.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import QueuedPolicy, param, register
from scheduler.plan import VICTIMS, StepPlan, check_whole_prompt_budget


@dataclass
class VllmV1Params:
    max_num_batched_tokens: int = param(
        8192, "token budget per step (vLLM V1's default for an OpenAI server on an 80 GB GPU)",
        minimum=1)
    max_num_seqs: int = param(256, "cap on running requests", minimum=1)
    enable_chunked_prefill: bool = param(True, "split prompts across steps to fit the budget")
    long_prefill_token_threshold: int = param(
        0, "cap on one request's prefill chunk per step (0 = no cap)", minimum=0)
    victim: str = param("latest-admitted", "which running request is preempted on a KV shortage",
                        choices=tuple(VICTIMS))
    reserve_full_prompt: bool = param(
        True, "admit a waiting request only if KV for its whole prompt (or recompute) is free, "
              "not just its first chunk (vLLM 0.32's scheduler_reserve_full_isl, on by default)")


@register
class VllmV1(QueuedPolicy):
    name = "vllm-v1"
    summary = "vLLM V1 default: token budget, running first, chunked prefill, recompute preemption"
    Params = VllmV1Params

    def bind(self, spec):
        super().bind(spec)
        p = self.params
        if not p.enable_chunked_prefill:
            check_whole_prompt_budget(self.name, p.max_num_batched_tokens, spec.max_model_len)

    def schedule(self, view):
        p = self.params
        plan = StepPlan(view, p.max_num_batched_tokens, pick_victim=VICTIMS[p.victim],
                        on_preempt=self.requeue_preempted,
                        reserve_full_prompt=p.reserve_full_prompt)
        self.schedule_running(plan)
        if not plan.preempted:
            self.admit_waiting(plan)
        return plan.decision()

    def wanted(self, req) -> int:
        """Tokens ``req`` would compute now, before the step budget: all it has left, capped by
        long_prefill_token_threshold."""
        n = req.prompt_tokens + req.generated - req.computed - req.cached   # remaining, inlined
        t = self.params.long_prefill_token_threshold
        return t if 0 < t < n else n

    def schedule_running(self, plan: StepPlan) -> None:
        plan.schedule_running(self.wanted)

    def admit_waiting(self, plan: StepPlan) -> None:
        p = self.params
        plan.admit_waiting(self.waiting, self.wanted, max_running=p.max_num_seqs,
                           whole=not p.enable_chunked_prefill)
