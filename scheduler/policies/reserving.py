"""Policies that reserve a request's maximum KV at admission and so never preempt.

``orca`` batches at iteration level (new prompts join running decodes, whole prompts, no
chunking); ``static`` batches at request level (a batch runs until all its members finish, then
the next one forms), as FasterTransformer-style servers do. Both reserve prompt + output tokens
of KV per admitted request, which wastes memory but makes preemption impossible.
Yu et al., "Orca: A Distributed Serving System for Transformer-Based Generative Models", OSDI 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import QueuedPolicy, param, register
from scheduler.plan import StepPlan


@dataclass
class ReservingParams:
    max_num_seqs: int = param(256, "cap on requests in the batch", minimum=1)
    max_num_batched_tokens: int | None = param(
        None, "token cap per iteration (default: none; a prompt always runs whole)")


class _Reserving(QueuedPolicy):
    Params = ReservingParams

    @property
    def token_budget(self) -> float:
        return self.params.max_num_batched_tokens or float("inf")

    def reservation(self, req) -> int:
        return self.spec.blocks_for(req.prompt_tokens + req.output_tokens - 1)

    def run_resident(self, plan: StepPlan) -> None:
        for req in plan.running:
            # Reservations cover every resident request's peak, so this never preempts.
            plan.schedule_resident(req, req.remaining)

    def admit_fcfs(self, plan: StepPlan, reserved: int) -> None:
        p = self.params
        waiting = self.waiting
        while waiting and len(plan.running) < p.max_num_seqs:
            req = waiting.peek()
            need = self.reservation(req)
            if reserved + need > self.spec.num_blocks:
                break
            if req.remaining > plan.budget and plan.tokens:   # alone, any prompt may run whole
                break
            if not plan.admit(req, req.remaining):
                break
            reserved += need
            waiting.pop()


@register
class Orca(_Reserving):
    name = "orca"
    summary = "Orca: iteration-level batching, whole prompts, max-length KV reservation, no preemption"
    # Reservations and the queue change only at arrivals and completions.
    steady_decode = True
    reads_cache_of_head = True   # admits in queue order, stopping at the head

    def schedule(self, view):
        plan = StepPlan(view, self.token_budget)
        self.run_resident(plan)
        reserved = sum(self.reservation(r) for r in view.resident)
        self.admit_fcfs(plan, reserved)
        return plan.decision()


@register
class Static(_Reserving):
    name = "static"
    summary = "Static (request-level) batching: a batch runs until all members finish"
    steady_decode = True        # the batch changes only when its last member finishes
    reads_cache_of_head = True   # admits in queue order, stopping at the head

    def schedule(self, view):
        plan = StepPlan(view, self.token_budget)
        if view.resident:
            self.run_resident(plan)
        else:
            self.admit_fcfs(plan, 0)
        return plan.decision()
