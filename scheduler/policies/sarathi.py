"""Sarathi-Serve: stall-free batching with chunked prefill under a fixed token budget.

Each iteration spends at most ``chunk_size`` tokens: first every running decode (one token each),
then the ongoing partial prefills, then new prefill chunks from the FCFS waiting queue (admission
keeps a KV watermark free). KV shortage preempts the latest admitted request (recompute), as in
vLLM. Agrawal et al., "Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve",
OSDI 2024.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import QueuedPolicy, param, register
from scheduler.kvbudget import watermark_blocks
from scheduler.plan import VICTIMS, StepPlan


@dataclass
class SarathiParams:
    chunk_size: int = param(512, "token budget per iteration (decodes + prefill chunks)", minimum=1)
    max_num_seqs: int = param(256, "cap on running requests", minimum=1)
    watermark: float = param(0.01, "fraction of KV blocks kept free when admitting", minimum=0.0)
    victim: str = param("latest-admitted", "which running request is preempted on a KV shortage",
                        choices=tuple(VICTIMS))


@register
class Sarathi(QueuedPolicy):
    name = "sarathi"
    summary = "Sarathi-Serve: decodes first, then prefill chunks, fixed token budget per iteration"
    Params = SarathiParams
    # Decode-only: no partial prefill got budget and no waiting chunk fitted; neither changes
    # until an event (free blocks only shrink).
    steady_decode = True
    reads_cache_of_head = True   # admits in queue order, stopping at the head

    def bind(self, spec):
        super().bind(spec)
        self.watermark_blocks = watermark_blocks(spec.num_blocks, self.params.watermark)

    def schedule(self, view):
        p = self.params
        # Sarathi-Serve admits a prefill chunk whenever its blocks fit (no whole-prompt check).
        plan = StepPlan(view, p.chunk_size, watermark_blocks=self.watermark_blocks,
                        pick_victim=VICTIMS[p.victim], on_preempt=self.requeue_preempted,
                        reserve_full_prompt=False)
        decodes = [r for r in plan.running if not r.is_prefill]
        partial = [r for r in plan.running if r.is_prefill]
        stopped = False
        for req in decodes:
            if plan.budget <= 0:
                break
            if plan.is_preempted(req):
                continue
            if not plan.schedule_resident(req, 1):
                stopped = True
                break
        if not stopped:
            for req in partial:
                if plan.budget <= 0:
                    break
                if plan.is_preempted(req):
                    continue
                if not plan.schedule_resident(req, min(req.remaining, plan.budget)):
                    break
        if not plan.preempted:
            plan.admit_waiting(self.waiting, max_running=p.max_num_seqs, keep_watermark=True)
        return plan.decision()
