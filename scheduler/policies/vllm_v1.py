"""vLLM V1's default scheduler: one token budget per step, running requests first, chunked prefill.

Mirrors ``vllm/v1/core/sched/scheduler.py`` (either ``--scheduling-policy``; no speculation):
1. Running requests in running order each get min(remaining, budget) tokens; when KV blocks run
   short, the tail of the running list is preempted (recompute) and put at the front of the
   waiting queue, until the request fits or is itself the victim (then the step stops here).
2. Only if nothing was preempted: waiting requests in FCFS order are admitted, each with
   min(remaining, budget) tokens (a chunk when chunked prefill is on), while the budget, the
   sequence cap and free blocks allow; the first that does not fit stops admission. As in vLLM
   0.32 (``scheduler_reserve_full_isl``), a request is admitted only when KV for its whole prompt
   (or recompute) is free, so a long prompt is not started in chunks that later force
   preemptions.

``scheduling_policy`` is vLLM's: ``fcfs`` queues by arrival (a preempted request goes back to the
front) and preempts the tail of the running list; ``priority`` queues by (priority, arrival, id)
(``vllm/v1/core/sched/request_queue.py``; a preempted request competes on its key again) and
preempts the running request with the largest (priority, arrival). A prefix-cache hit is
adopted, not computed: budgets and the full-prompt gate count the uncached tokens
(``RequestState.remaining``) and the blocks vLLM would take (``RequestState.blocks_to_take``).
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import QueuedPolicy, param, register
from scheduler.plan import VICTIMS, StepPlan, check_whole_prompt_budget
from scheduler.queues import PriorityQueue

SCHEDULING_POLICIES = ("fcfs", "priority")
# vLLM's victim for each scheduling policy (vllm/v1/core/sched/scheduler.py, schedule()).
VLLM_VICTIM = {"fcfs": "latest-admitted", "priority": "lowest-priority"}


@dataclass
class VllmV1Params:
    max_num_batched_tokens: int = param(
        8192, "token budget per step (vLLM V1's default for an OpenAI server on an 80 GB GPU)",
        minimum=1)
    max_num_seqs: int = param(256, "cap on running requests", minimum=1)
    enable_chunked_prefill: bool = param(True, "split prompts across steps to fit the budget")
    long_prefill_token_threshold: int = param(
        0, "cap on one request's prefill chunk per step (0 = no cap)", minimum=0)
    scheduling_policy: str = param(
        "fcfs", "vLLM's --scheduling-policy: waiting order by arrival (fcfs) or by request "
                "priority, smaller first, then arrival (priority)", choices=SCHEDULING_POLICIES)
    victim: str = param("auto", "which running request is preempted on a KV shortage (auto: "
                                "vLLM's for the scheduling policy, latest-admitted under fcfs, "
                                "lowest-priority under priority)",
                        choices=("auto",) + tuple(VICTIMS))
    reserve_full_prompt: bool = param(
        True, "admit a waiting request only if KV for its whole prompt (or recompute) is free, "
              "not just its first chunk (vLLM 0.32's scheduler_reserve_full_isl, on by default)")


@register
class VllmV1(QueuedPolicy):
    name = "vllm-v1"
    summary = "vLLM V1 default: token budget, running first, chunked prefill, recompute preemption"
    Params = VllmV1Params
    # A decode-only step admitted nothing: the queue, the budget, the sequence cap and the KV
    # gate (free blocks only shrink until the next completion) refuse the same way until an
    # event; the running list keeps its order.
    steady_decode = True
    reads_cache_of_head = True   # admits in queue order, stopping at the head

    def bind(self, spec):
        super().bind(spec)
        p = self.params
        if not p.enable_chunked_prefill:
            check_whole_prompt_budget(self.name, p.max_num_batched_tokens, spec.max_model_len)
        self.pick_victim = VICTIMS[VLLM_VICTIM[p.scheduling_policy] if p.victim == "auto"
                                   else p.victim]

    def refusal_outlasts_hit_loss(self) -> bool:
        # With the full-prompt gate the head is admitted exactly when the blocks of its whole
        # prompt fit: ceil(tokens / block_size) - cached_shared_blocks <= free, whatever its
        # hit (the chunk's own blocks are fewer). Without chunked prefill and without a chunk
        # cap it is admitted whole, the same blocks, and a shorter hit only makes its prompt
        # exceed the budget sooner. Otherwise (chunked, or capped by
        # long_prefill_token_threshold, without the gate) its first chunk needs
        # ceil((cached + chunk) / block_size) - cached_shared_blocks blocks, fewer with a
        # shorter hit, while the free count a decision sees can stay the same (the eviction
        # took a block the previous decision had already counted as taken): it could fit then.
        p = self.params
        return p.reserve_full_prompt or (not p.enable_chunked_prefill
                                         and not p.long_prefill_token_threshold)

    def make_queue(self):
        if self.params.scheduling_policy == "priority":
            return PriorityQueue(key=lambda r: (r.priority, r.arrival_s, r.request_id))
        return super().make_queue()

    def schedule(self, view):
        p = self.params
        plan = StepPlan(view, p.max_num_batched_tokens, pick_victim=self.pick_victim,
                        on_preempt=self.requeue_preempted,
                        reserve_full_prompt=p.reserve_full_prompt)
        self.schedule_running(plan)
        if not plan.preempted:
            self.admit_waiting(plan)
        return plan.decision()

    def wanted(self, req) -> int:
        """Tokens ``req`` would compute now, before the step budget: all it has left (its
        uncached part), capped by long_prefill_token_threshold."""
        n = req.prompt_tokens + req.generated - req.computed - req.cached   # remaining, inlined
        t = self.params.long_prefill_token_threshold
        return t if 0 < t < n else n

    def schedule_running(self, plan: StepPlan) -> None:
        # Without a chunk cap a request wants all it has left: the plan's default, no call.
        plan.schedule_running(self.wanted if self.params.long_prefill_token_threshold else None)

    def admit_waiting(self, plan: StepPlan) -> None:
        p = self.params
        plan.admit_waiting(self.waiting, self.wanted, max_running=p.max_num_seqs,
                           whole=not p.enable_chunked_prefill)
