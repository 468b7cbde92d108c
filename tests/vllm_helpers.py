"""Driving vLLM's real V1 scheduler the way its engine core does (schedule, fabricated model
output, update_from_output), for the tests of the servesim adapter."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.base import QueuedPolicy
from scheduler.plan import StepPlan
from scheduler.state import ReplicaSpec
from simulator.hardware import model_spec
from simulator.vllm.loop import TOKEN_ID, model_output, vllm_request

MODEL = model_spec("llama-2-7b")
OPTIONS = {"max_num_seqs": 16, "max_num_batched_tokens": 256, "enable_chunked_prefill": True,
           "long_prefill_token_threshold": 0}


class RejectLong(QueuedPolicy):
    """FCFS, but rejects prompts over 64 tokens (a policy's own rejection). Not registered:
    tests pass the class to make_policy, so no registry entry leaks into other test modules."""
    name = "test-reject-long"

    def schedule(self, view):
        plan = StepPlan(view, float("inf"))
        for req in plan.running:
            plan.schedule_resident(req, req.remaining)
        while self.waiting:
            req = self.waiting.peek()
            if req.prompt_tokens > 64:
                plan.rejected.append((self.waiting.pop(), "prompt exceeds 64 tokens"))
            elif plan.admit(req, req.remaining):
                self.waiting.pop()
            else:
                break
        return plan.decision()


def spec(num_blocks=60, block_size=16, max_model_len=4096):
    return ReplicaSpec(num_blocks=num_blocks, block_size=block_size, max_model_len=max_model_len)


@dataclass
class Step:
    tokens: dict
    preempted: set
    new: list


def drive(sched, requests, max_steps=5000, check=None, to_vllm=vllm_request):
    """Add request i at step floor(arrival); run until all finish. Returns the step records.
    The adapter's clock is the step number (the arrival times' unit); as in a live server,
    ``arrivals_done`` is never set. ``to_vllm`` makes each vLLM request."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    steps = []
    capacity = sched.kv_cache_manager.block_pool.num_gpu_blocks - 1
    now = [0.0]
    sched.clock = lambda: now[0]
    for step in range(max_steps):
        now[0] = float(step)
        while pending and pending[0].arrival_s <= step:
            sched.add_request(to_vllm(pending.pop(0)))
        if not pending and not sched.has_unfinished_requests():
            return steps
        out = sched.schedule()
        # Distinct blocks: with prefix caching, requests share the blocks of a common prefix.
        held = len({b.block_id for r in sched.requests.values()
                    for b in sched.kv_cache_manager.coordinator.get_blocks(r.request_id)[0]})
        assert held <= capacity, f"KV over-allocated at step {step}: {held} > {capacity}"
        for r in sched.running:     # every computed token has its KV slot
            blocks = len(sched.kv_cache_manager.coordinator.get_blocks(r.request_id)[0])
            assert blocks * 16 >= r.num_computed_tokens
        if check is not None:
            check(step, out)
        steps.append(Step(dict(out.num_scheduled_tokens), set(out.preempted_req_ids),
                          [r.req_id for r in out.scheduled_new_reqs]))
        sched.update_from_output(out, model_output(out, sched.requests))
    raise AssertionError(f"requests still unfinished after {max_steps} steps")




def drive_pipelined(sched, requests, max_steps=3000, to_vllm=vllm_request):
    """As ``drive``, with two batches in flight (async scheduling, vLLM's default engine mode):
    a step's output is delivered after the next step is scheduled. Returns each step's
    scheduled tokens."""
    pending, steps, inflight = sorted(requests, key=lambda r: r.arrival_s), [], []
    for step in range(max_steps):
        while pending and pending[0].arrival_s <= step:
            sched.add_request(to_vllm(pending.pop(0)))
        if not pending and not sched.has_unfinished_requests() and not inflight:
            return steps
        out = sched.schedule()
        steps.append(dict(out.num_scheduled_tokens))
        # Outputs are sampled when scheduled (placeholders), delivered one step later.
        inflight.append((out, model_output_async(sched, out)))
        while len(inflight) == 2 or (inflight and not out.num_scheduled_tokens):
            sched.update_from_output(*inflight.pop(0))
    raise AssertionError(f"requests still unfinished after {max_steps} steps")


def model_output_async(sched, out):
    from vllm.v1.outputs import ModelRunnerOutput
    ids = list(out.num_scheduled_tokens)
    # A request samples when this chunk completes its known tokens (placeholders count as known).
    sampled = [[TOKEN_ID] if sched.requests[r].num_computed_tokens >= sched.requests[r].num_tokens
               else [] for r in ids]
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                             sampled_token_ids=sampled, logprobs=None, prompt_logprobs_dict={},
                             pooler_output=[])
