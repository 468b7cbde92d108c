"""Building one iteration's batch: token budget, KV blocks, and recompute preemption.

The continuous-batching policies (vLLM, Sarathi, SJF, Orca...) differ in *which* requests they
offer and in what order; the bookkeeping of one step is the same and lives here.
"""

from __future__ import annotations

from typing import Callable

from scheduler.base import PolicyError, PolicyViolation
from scheduler.kvbudget import StepKV
from scheduler.state import Decision, ReplicaView, RequestState, Status

VictimPicker = Callable[[list], RequestState]


def latest_admitted(running: list) -> RequestState:
    """vLLM's choice: the tail of the running list (the most recently admitted request)."""
    return running[-1]


def arrival_order(req: RequestState) -> tuple:
    """Sort key: FCFS by arrival, ties by request id."""
    return req.arrival_s, req.request_id


def latest_arrival(running: list) -> RequestState:
    """vLLM V0's choice: the running request that arrived last (lowest FCFS priority)."""
    return max(running, key=arrival_order)


def check_whole_prompt_budget(policy: str, budget: int, max_model_len: int) -> None:
    """A policy that never splits a prompt needs a step budget of at least ``max_model_len``:
    otherwise a long prompt, or a preempted request recomputing prompt + output, could never be
    scheduled. vLLM refuses this configuration at start-up (its SchedulerConfig check), and so
    do we, rather than reject requests mid-run."""
    if budget < max_model_len:
        raise PolicyError(
            f"policy {policy}: max_num_batched_tokens ({budget}) is smaller than max_model_len "
            f"({max_model_len}) without chunked prefill; raise the budget or lower max_model_len")


def lowest_priority(running: list) -> RequestState:
    """vLLM V1's choice under ``--scheduling-policy priority``: the largest priority value,
    then the latest arrival (the first such in running order)."""
    return max(running, key=lambda r: (r.priority, r.arrival_s))


VICTIMS: dict[str, VictimPicker] = {"latest-admitted": latest_admitted,
                                    "latest-arrival": latest_arrival,
                                    "lowest-priority": lowest_priority}


class StepPlan:
    """One step's plan. ``running`` starts as the resident requests in admission order; requests
    admitted this step are appended, preempted ones removed.

    ``on_preempt`` receives each victim, to put it back in the policy's waiting queue (the
    policy's ``requeue_preempted``). A victim waits for a later step: scheduling it again in the
    same plan raises ``PolicyViolation`` at once.

    ``reserve_full_prompt`` (on by default) admits a waiting request given only a chunk of its
    prompt just when KV for the whole prompt (or recompute) is free, as vLLM 0.32 does
    (``scheduler_reserve_full_isl``): without it, chunks of several long prompts start, fill the
    cache together and preempt one another. A policy whose rule is to admit a chunk whenever
    its blocks fit turns it off.
    """

    __slots__ = ("kv", "token_budget", "budget", "tokens", "taken", "running", "preempted",
                 "rejected", "reserve_full_prompt", "_on_preempt", "_pick_victim", "_preempted_set")

    def __init__(self, view: ReplicaView, token_budget: float, *, watermark_blocks: int = 0,
                 pick_victim: VictimPicker = latest_admitted,
                 on_preempt: Callable[[RequestState], None] | None = None,
                 reserve_full_prompt: bool = True):
        self.kv = StepKV(view, watermark_blocks)
        self.token_budget = token_budget
        self.budget = token_budget
        self.tokens: dict[RequestState, int] = {}   # scheduled tokens, in scheduling order
        self.taken: dict[RequestState, int] = {}    # blocks reserved this step per request
        self.running: list[RequestState] = list(view.resident)
        self.preempted: list[RequestState] = []
        self.rejected: list[tuple[RequestState, str]] = []
        self._preempted_set: set[int] = set()
        self.reserve_full_prompt = reserve_full_prompt
        self._on_preempt = on_preempt
        self._pick_victim = pick_victim

    def is_preempted(self, req: RequestState) -> bool:
        return id(req) in self._preempted_set

    def _reserve(self, req: RequestState, n: int, keep_watermark: bool, cached: int = 0,
                 shared_blocks: int = 0) -> bool:
        # Called once per scheduled request per step: RequestState.blocks_to_take, inlined (a
        # resident request has no prefix-cache hit: admit passes a waiting one's).
        if id(req) in self._preempted_set:
            raise self._rescheduled(req)
        kv = self.kv
        need = -(-(req.computed + cached + n) // kv.block_size) - req.kv_blocks - shared_blocks
        if need > 0:
            # The watermark guards admissions against imminent decode growth; with nothing else
            # resident there is nothing to guard, and waiving it keeps a large request from
            # stalling.
            reserve = kv.watermark if keep_watermark and self.running else 0
            if need > kv.free - reserve:
                return False
            kv.free -= need
            self.taken[req] = need
        self.tokens[req] = n
        self.budget -= n
        return True

    @staticmethod
    def _rescheduled(req: RequestState) -> PolicyViolation:
        return PolicyViolation(
            f"request {req.request_id} was preempted earlier in this step and cannot be "
            f"scheduled in it (a victim waits for a later step: skip it when "
            f"plan.is_preempted(req))")

    def schedule_resident(self, req: RequestState, n: int) -> bool:
        """Give a resident request ``n`` tokens, preempting victims while KV is short.

        Returns False when ``req`` itself had to be preempted (vLLM then stops scheduling the
        running list for this step).
        """
        while not self._reserve(req, n, keep_watermark=False):
            victim = self._pick_victim(self.running)
            self.preempt(victim)
            if victim is req:
                return False
        return True

    def preempt(self, victim: RequestState) -> None:
        if self.running and self.running[-1] is victim:
            self.running.pop()
        elif victim in self.running:
            self.running.remove(victim)
        else:
            state = "was preempted earlier in this step" if self.is_preempted(victim) else \
                f"is {victim.status.value}, not running"
            raise PolicyViolation(f"request {victim.request_id} {state}: only a running request "
                                  f"can be preempted")
        if victim in self.tokens:   # scheduled earlier in this step: undo it
            self.budget += self.tokens.pop(victim)
            self.kv.free += self.taken.pop(victim, 0)
        self.kv.release(victim)
        self.preempted.append(victim)
        self._preempted_set.add(id(victim))
        if self._on_preempt is not None:
            self._on_preempt(victim)

    def admit(self, req: RequestState, n: int, keep_watermark: bool = False) -> bool:
        """Admit a waiting request with ``n`` prompt tokens (after its prefix-cache hit) if its
        blocks fit (and, with ``reserve_full_prompt``, the blocks of its whole prompt)."""
        if req.status is not Status.WAITING:
            if self.is_preempted(req):
                raise self._rescheduled(req)
            raise PolicyViolation(
                f"request {req.request_id} is {req.status.value}: admit takes a waiting request "
                f"(schedule_resident gives a running one tokens)")
        if self.reserve_full_prompt and n < req.remaining and \
                self.kv.need(req, req.remaining) > self.kv.free:
            return False
        if not self._reserve(req, n, keep_watermark, req.cached, req.cached_shared_blocks):
            return False
        self.running.append(req)
        return True

    def schedule_running(self, tokens: Callable[[RequestState], int] | None = None) -> None:
        """Give the running requests, in running order, ``tokens(req)`` tokens each (default:
        all they have left), capped by the budget, preempting victims while KV is short; stop
        when the budget is spent or a request is itself preempted (vLLM V1's running loop)."""
        i = 0
        running = self.running
        kv, scheduled, taken, preempted = self.kv, self.tokens, self.taken, self._preempted_set
        bs = kv.block_size
        while i < len(running) and self.budget > 0:
            req = running[i]
            # RequestState.remaining, inlined (this loop runs once per running request per step)
            n = req.prompt_tokens + req.generated - req.computed - req.cached \
                if tokens is None else tokens(req)
            if n > self.budget:
                n = int(self.budget)   # finite, since n exceeds it
            # The common case, _reserve inlined: its blocks fit (a resident request has no
            # prefix-cache hit and keeps no watermark). Otherwise schedule_resident preempts.
            need = -(-(req.computed + n) // bs) - req.kv_blocks
            if need <= kv.free and id(req) not in preempted:
                if need > 0:
                    kv.free -= need
                    taken[req] = need
                scheduled[req] = n
                self.budget -= n
                i += 1
                continue
            if not self.schedule_resident(req, n):
                break
            if i >= len(running) or running[i] is not req:
                # A victim that stood before req (a lowest-priority one, not the tail) was
                # removed and req moved up: vLLM steps its index back the same way.
                i = running.index(req)
            i += 1

    def admit_waiting(self, queue, tokens: Callable[[RequestState], int] | None = None, *,
                      max_running: int | None = None, keep_watermark: bool = False,
                      whole: bool = False) -> int:
        """Admit requests from the front of ``queue`` (popping them) with ``tokens(req)`` each
        (default: all they have left), capped by the budget, while the budget, ``max_running``
        and KV allow; stop at the first that does not fit, or that was preempted this step (it
        waits for a later one). ``whole``: never split a prompt (stop at one the budget cannot
        hold). Returns the number admitted."""
        admitted = 0
        while queue and self.budget > 0 and \
                (max_running is None or len(self.running) < max_running):
            req = queue.peek()
            if id(req) in self._preempted_set:
                break
            n = req.remaining if tokens is None else tokens(req)
            if n > self.budget:
                if whole:
                    if n > self.token_budget:   # it would wait for ever: the run would stall
                        raise PolicyViolation(
                            f"request {req.request_id} needs {n} tokens in one step, more than "
                            f"the step budget {self.token_budget}: it can never be admitted "
                            f"whole (check_whole_prompt_budget refuses such a budget at bind)")
                    break
                n = int(self.budget)   # finite, since n exceeds it
            if not self.admit(req, n, keep_watermark):
                break
            queue.pop()
            admitted += 1
        return admitted

    def decision(self) -> Decision:
        d = Decision(preempt=self.preempted, reject=self.rejected)
        prefill, decode = d.prefill, d.decode
        for req, n in self.tokens.items():
            g = req.generated   # RequestState.is_prefill, inlined: this loop is hot
            if g and req.prompt_tokens + g - req.computed == 1:
                decode.append(req)
            else:
                prefill.append((req, n))
        return d
