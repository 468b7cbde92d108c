"""What a policy sees and what it returns.

The engine (the simulator, or the vLLM adapter) owns every ``RequestState`` and mutates it; a
policy only reads them and answers each ``schedule`` call with a ``Decision``. Nothing here
imports SimPy or vLLM.

Token accounting follows vLLM: a request holds ``num_tokens = prompt_tokens + generated`` tokens,
of which ``computed`` have their KV in cache. Scheduling ``n`` tokens computes the next ``n``; when
``computed`` reaches ``num_tokens`` the iteration samples one new output token. So the prefill
iteration emits the first token (TTFT), each decode computes one token and emits the next, and a
request runs ``output_tokens`` iterations after its prompt is in cache. A preempted request loses
its KV (``computed = 0``) but keeps its generated tokens, and recomputes prompt + generated tokens
as one longer prefill (vLLM's recompute preemption).

With a prefix cache, a waiting request may find the KV of its first ``cached`` tokens already in
cache (blocks that a running or finished request computed): admitted, it adopts those blocks
instead of computing them, so its ``remaining`` (what budgets count) and the blocks it takes
(``StepKV.need``) are those of the uncached part only. The engine fills ``cached`` and
``cached_shared_blocks`` before each ``schedule`` call; a policy only reads them. A resident
request's ``shared_blocks`` are blocks another live request holds too (or, in the simulator, a
waiting request's hit covers): preempting it frees the rest (``StepKV.release``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, Protocol, Sequence



class CostModel(Protocol):
    """What a policy may ask of the run's cost model (simulator/cost/ implements it; the
    simulator builds the spec, so policies never import a cost model): the time of one
    iteration of a batch (a ``simulator.cost.base.BatchShape``), and its description."""

    def iteration_time(self, shape: Any) -> float: ...

    def describe(self) -> dict: ...


class Status(str, Enum):
    WAITING = "waiting"        # queued for (re)prefill, no KV held
    RESIDENT = "resident"      # holds KV on the GPU (running or paused this iteration)
    FINISHED = "finished"
    REJECTED = "rejected"


class RequestState:
    """Live state of one request. Read-only for policies."""

    __slots__ = (
        "request_id", "arrival_s", "prompt_tokens", "output_tokens", "label",
        "computed", "generated", "kv_blocks", "status", "admitted_seq", "priority",
        "cached", "cached_shared_blocks", "shared_blocks",
        "first_scheduled_s", "first_token_s", "finished_s", "preemptions", "reject_reason",
        "reject_detail",
        "_iteration",
    )

    def __init__(self, request_id: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 label: str | None = None):
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.label = label
        self.computed = 0            # tokens whose KV is in cache
        self.generated = 0           # output tokens produced so far
        self.kv_blocks = 0           # KV blocks held
        self.status = Status.WAITING
        self.admitted_seq = -1       # order of the latest admission (larger = more recent)
        self.priority = 0            # vLLM's request priority: smaller is served first
        # Prefix-cache hit of a waiting request: tokens whose KV is cached, and how many of the
        # blocks holding them other live requests hold (those cost no free block; an evictable
        # cached block counts as free and is taken). Both 0 while the request holds KV.
        self.cached = 0
        self.cached_shared_blocks = 0
        self.shared_blocks = 0       # resident: blocks it holds that other live requests hold
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.finished_s: float | None = None
        self.preemptions = 0
        self.reject_reason: str | None = None   # a code (simulator/metrics.py REJECT_CODES)
        self.reject_detail: str | None = None   # the figures behind it, for a reader
        self._iteration = -1         # engine bookkeeping: last iteration it was scheduled in

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def remaining(self) -> int:
        """Tokens to compute before the next output token is sampled (1 while decoding): a
        waiting request's prefix-cache hit is not computed again."""
        return self.prompt_tokens + self.generated - self.computed - self.cached

    def blocks_to_take(self, tokens: int, block_size: int) -> int:
        """Free KV blocks computing ``tokens`` more tokens takes (with a prefix-cache hit, the
        hit's blocks that no live request holds are taken too: vLLM's count)."""
        return -(-(self.computed + self.cached + tokens) // block_size) - self.kv_blocks - \
            self.cached_shared_blocks

    @property
    def is_prefill(self) -> bool:
        """True while the prompt (or, after preemption, prompt + generated) is being computed."""
        return self.generated == 0 or self.prompt_tokens + self.generated - self.computed > 1

    @property
    def stage(self) -> int:
        """The paper's stage s: output tokens produced so far."""
        return self.generated

    @property
    def max_kv_tokens(self) -> int:
        """KV tokens held just before completion: prompt + output - 1."""
        return self.prompt_tokens + self.output_tokens - 1

    def __repr__(self):
        return (f"RequestState(id={self.request_id}, p={self.prompt_tokens}, o={self.output_tokens},"
                f" computed={self.computed}, generated={self.generated}, {self.status.value})")


@dataclass(frozen=True)
class CostFit:
    """The fluid model's linear cost tau = d0 + d1 x (KV tokens of the batch), as fitted to the
    run's cost model (``source`` "exact" when the cost model is that line, else "fit")."""

    d0: float
    d1: float
    rmse_s: float
    max_rel_error: float
    source: str
    batches: int = 0
    extra: dict = field(default_factory=dict)


class TypeRates(Protocol):
    """A request type as the cost fit reads it (``scheduler.fluid.FluidType`` is one)."""

    prompt: float
    output: float
    rate: float


# (types the policy plans for, or None; KV capacity in tokens; max_model_len) -> the fit. The
# simulator side builds it from the run's cost model, so policies never import a cost model.
CostFitter = Callable[[Optional[Sequence[TypeRates]], Optional[float], int], CostFit]


@dataclass(frozen=True)
class WorkloadHint:
    """What a policy may know about the workload before serving it (``ReplicaSpec.workload_hint``),
    built by the simulator side (``simulator.runner.workload_hint``) or the vLLM plug-in's
    configuration:

    - ``types``: the declared request types (``--type``: ``traces.lengths.RequestType`` records
      with rates), or None;
    - ``workload``: the workload's meta record (source, generator, transforms);
    - ``arrival_rate``: mean arrival rate in requests/s, or None (a single request);
    - ``lengths``: (prompt_tokens, output_tokens) arrays of the workload's requests: the length
      *distribution* that fluid-guided policies (Nested WAIT, types for WAIT) assume known, as
      the paper computes its segments from the dataset. A policy must not use it to learn an
      individual request's output length (that is what ``RequestState.output_tokens`` is for,
      and only policies that assume known lengths read it);
    - ``cost_fit``: fits the fluid model's d0 + d1 KV line to the run's cost model, for the
      types a policy plans with (None: no cost model; give d0 and d1);
    - ``hit_rate``: the expected fraction of prompt tokens the prefix cache holds when a
      request is admitted (0: no prefix caching, or nothing shared; 1: a disaggregated decode
      replica, whose prompts arrive computed): the fluid policies shrink each prefill's
      computed part by it (docs/fluid.md). Given as ``expected_hit_rate``: the value, or a
      function computing it at the first read (a pass over every request's prefix, which only
      the policies that read it pay for).
    """

    types: tuple | None = None
    workload: dict = field(default_factory=dict)
    arrival_rate: float | None = None
    lengths: tuple[Any, Any] | None = None
    cost_fit: CostFitter | None = None
    expected_hit_rate: float | Callable[[], float] = 0.0

    @property
    def hit_rate(self) -> float:
        rate = self.expected_hit_rate
        if callable(rate):
            rate = float(rate())
            object.__setattr__(self, "expected_hit_rate", rate)    # computed once
        return rate

    @property
    def described(self) -> bool:
        """Types or a length distribution are known (the fluid model can plan)."""
        return bool(self.types) or self.lengths is not None


@dataclass(frozen=True)
class ReplicaSpec:
    """Static facts about the replica, given to a policy once before serving starts."""

    num_blocks: int
    block_size: int
    max_model_len: int
    cost_model: CostModel | None = None   # the run's cost model (for policies that plan with it)
    workload_hint: WorkloadHint | None = None   # the expected workload, when described
    seed: int = 0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)


class ReplicaView:
    """The engine's live state as a policy may read it.

    ``resident`` lists requests holding KV, in admission order (oldest first). Free KV is counted
    in blocks. The sequences are the engine's own: iterate, never mutate.
    """

    __slots__ = ("now", "resident", "free_blocks", "num_waiting", "spec", "arrivals_done",
                 "settle_cache")

    def __init__(self, spec: ReplicaSpec):
        self.spec = spec
        # Set by an engine that looks up prefix-cache state lazily: brings a resident's
        # ``shared_blocks`` up to date; called before it is read (StepKV.release).
        self.settle_cache: Callable[[RequestState], None] | None = None
        self.now = 0.0
        self.resident: Sequence[RequestState] = ()
        self.free_blocks = spec.num_blocks
        self.num_waiting = 0
        self.arrivals_done = False   # no request will arrive any more (lets threshold policies drain)


@dataclass
class Decision:
    """One iteration's batch, as a policy wants it.

    - ``prefill``: (request, tokens) pairs for requests computing prompt (or recompute) tokens; a
      request still waiting is admitted by this (it becomes resident).
    - ``decode``: resident requests that compute their one token and emit the next.
    - ``preempt``: resident requests whose KV is freed before the batch runs (recompute
      preemption). The policy itself re-queues them; the engine frees and counts.
    - ``reject``: (request, reason) for waiting requests the policy can never serve.
    - ``wake_at``: with an empty batch, the time at which to ask again even if nothing arrives
      (e.g. a threshold policy's patience timer). Otherwise the engine waits for an arrival.
      With a decode-only batch from a ``steady_decode`` policy: ask again at the first
      iteration that starts at or after this time (``view.now``: at the next iteration), even
      if no other event comes first; None: only at the next event.
    """

    prefill: list[tuple[RequestState, int]] = field(default_factory=list)
    decode: list[RequestState] = field(default_factory=list)
    preempt: list[RequestState] = field(default_factory=list)
    reject: list[tuple[RequestState, str]] = field(default_factory=list)
    wake_at: float | None = None

    @property
    def empty(self) -> bool:
        return not (self.prefill or self.decode)
