"""vLLM's original (V0) default scheduler: prefill-prioritised FCFS, whole-prompt prefills.

A step first admits waiting requests in FCFS order with their whole prompt while the token
budget, the sequence cap and free blocks minus a watermark allow, stopping at the first that does
not fit. Only when no prefill was scheduled do the running requests decode; a decode that cannot
get a block preempts the latest-arrived running request (recompute: KV freed, request put at the
front of the waiting queue).
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import QueuedPolicy, param, register
from scheduler.kvbudget import watermark_blocks
from scheduler.plan import VICTIMS, StepPlan, arrival_order, check_whole_prompt_budget


@dataclass
class VllmV0Params:
    max_num_batched_tokens: int | None = param(
        None, "prefill token budget per step (default: max(max_model_len, 2048), vLLM V0's)")
    max_num_seqs: int = param(256, "cap on running requests", minimum=1)
    watermark: float = param(0.01, "fraction of KV blocks kept free when admitting", minimum=0.0)
    victim: str = param("latest-arrival", "which running request is preempted on a KV shortage",
                        choices=tuple(VICTIMS))


@register
class VllmV0(QueuedPolicy):
    name = "vllm"
    summary = "vLLM V0 default: prefill-prioritised FCFS, whole prompts, recompute preemption"
    Params = VllmV0Params
    # Nothing admitted: the queue, budget, sequence cap and watermark gate refuse the same way
    # until an event (free blocks only shrink); decodes keep their arrival order.
    steady_decode = True
    reads_cache_of_head = True   # admits in queue order, stopping at the head

    def bind(self, spec):
        super().bind(spec)
        p = self.params
        self.budget = p.max_num_batched_tokens or max(spec.max_model_len, 2048)
        check_whole_prompt_budget(self.name, self.budget, spec.max_model_len)
        self.watermark_blocks = watermark_blocks(spec.num_blocks, p.watermark)

    def schedule(self, view):
        p = self.params
        plan = StepPlan(view, self.budget, watermark_blocks=self.watermark_blocks,
                        pick_victim=VICTIMS[p.victim], on_preempt=self.requeue_preempted)
        plan.admit_waiting(self.waiting, max_running=p.max_num_seqs, keep_watermark=True,
                           whole=True)
        if plan.tokens:
            return plan.decision()
        # Decodes go in arrival order (V0 sorts the running queue by its FCFS priority), so the
        # latest-arrived victim is always a request not yet scheduled this step, or the request
        # itself, as in V0 where victims are popped from the tail of the unprocessed queue.
        for req in sorted(plan.running, key=arrival_order):
            if plan.budget <= 0:
                break
            if plan.is_preempted(req):
                continue
            if not plan.schedule_resident(req, 1):
                break
        return plan.decision()

