"""Any servesim policy inside vLLM's V1 scheduler (``--scheduler-cls``).

Usage with a live server (``servesim serve`` writes this command line for you)::

    SERVESIM_POLICY=sjf SERVESIM_POLICY_PARAMS='predictor=oracle' \\
        vllm serve MODEL --scheduler-cls simulator.vllm.plugin.ServesimAsyncScheduler

``ServesimAsyncScheduler`` extends vLLM's ``AsyncScheduler`` (vLLM's default: async scheduling on,
two batches in flight). ``ServesimScheduler`` extends the synchronous ``Scheduler`` and must run
with ``--no-async-scheduling``: a synchronous scheduler under an async engine mis-counts the
in-flight tokens, the pitfall reported to cost large latency regressions, so it refuses to start.

How a decision is imposed, each step (vLLM keeps the last word on KV and budgets):

1. Mirror: every vLLM request has a ``RequestState`` (computed = ``num_computed_tokens``,
   generated = output tokens including in-flight placeholders, KV blocks from the KV manager,
   its priority); ``view.resident`` is vLLM's running list, which is admission order. With
   prefix caching on, each waiting request's hit is looked up as vLLM will at admission
   (``cached`` tokens, ``cached_shared_blocks`` held by live requests), so the policy budgets
   and allocates only the uncached part.
2. The policy returns a ``Decision``. Rejections finish the request (``FINISHED_IGNORED``, the
   status vLLM gives prompts it cannot serve); preemptions go through vLLM's own
   ``_preempt_request`` (recompute: KV freed, request back to the front of the waiting queue).
3. ``super().schedule()`` runs with (a) only the policy's admissions visible in the waiting
   queue, in the policy's order (the others are set aside and restored afterwards), and (b) each
   request's tokens capped at the policy's count, through the per-request hook vLLM applies to
   every chunk just before allocating KV (``_reserve_prefill_lookahead``): a request the policy
   pauses gets 0 tokens and is skipped, and a chunk is exactly the policy's size.
4. Reconcile: anything vLLM did not carry out (its KV check, full-prompt admission gate, token
   budget or sequence cap refused part of the plan) is reported back to the policy through
   ``on_requeue``, so the policy's queues always match vLLM's. ``divergent_steps`` counts steps
   where vLLM's schedule differed from the plan.

With the ``vllm-v1`` policy this reproduces the stock scheduler's schedule step for step (tested,
also with prefix caching and ``--scheduling-policy priority``). Speculative decoding is refused
at start-up: vLLM schedules 1 + k tokens for a decode with k drafts, a policy plans one.
Policy parameters named like vLLM's scheduler options (``max_num_batched_tokens``,
``max_num_seqs``, ``enable_chunked_prefill``, ``long_prefill_token_threshold``,
``reserve_full_prompt`` for ``scheduler_reserve_full_isl``, and ``scheduling_policy``) default to
the server's values, so ``vllm-v1`` sees the same limits as the server it replaces.

Configuration, read when the scheduler first needs its policy: ``SERVESIM_POLICY`` (name),
``SERVESIM_POLICY_PARAMS`` (``k=v,k=v`` or a JSON object), ``SERVESIM_POLICY_SEED``,
``SERVESIM_WORKLOAD`` (a JSON or YAML-flow object of run-config fields) and
``SERVESIM_POLICY_CONFIG`` naming a YAML/TOML/JSON run-config file (the file ``servesim run
--config`` reads: ``policy``, ``policy_params``, ``seed``, the workload, ``model``, ``gpu``,
``cost_model``...). Variables override the file. The run-config fields describe what a policy
plans with, exactly as in a simulation: the expected workload (``types``, or ``rate`` with
``prompt_len``/``output_len``, a ``trace`` or a ``lengths_file``) becomes the policy's
``ReplicaSpec.workload_hint`` and ``model``/``gpu``/``cost_model`` its cost model, both built by
``simulator.runner`` (``planning_inputs``). Fields that describe the simulated replica
(``kv_capacity``, ``block_size``...) are the server's own here and are not used. Nothing is read
when ``configure()`` was called first (vLLM in the loop does that).

vLLM is imported only when one of the classes is first requested (module ``__getattr__``), so
importing this module, and everything else in ``scheduler/``, works without vLLM installed.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scheduler.base import (Policy, PolicyError, check_victims, decide, make_policy,
                            policy_class)
from scheduler.state import ReplicaSpec, ReplicaView, RequestState, Status, WorkloadHint

ENV_POLICY = "SERVESIM_POLICY"
ENV_PARAMS = "SERVESIM_POLICY_PARAMS"
ENV_SEED = "SERVESIM_POLICY_SEED"
ENV_CONFIG = "SERVESIM_POLICY_CONFIG"
ENV_WORKLOAD = "SERVESIM_WORKLOAD"
DEFAULT_POLICY = "vllm-v1"
POLICY_KEYS = ("policy", "policy_params", "seed")
# Policy parameters that mean the same as a vLLM SchedulerConfig field of the same name.
MIRRORED_PARAMS = ("max_num_batched_tokens", "max_num_seqs", "enable_chunked_prefill",
                   "long_prefill_token_threshold", "reserve_full_prompt", "scheduling_policy")
SCHEDULER_CLASSES = ("ServesimScheduler", "ServesimAsyncScheduler")


# ------------------------------------------------------------------------------------------------
# Plug-in configuration (no vLLM needed)

@dataclass
class PluginConfig:
    policy: str = DEFAULT_POLICY
    policy_params: dict = field(default_factory=dict)
    seed: int = 0
    run: dict = field(default_factory=dict)   # the other run-config fields given (workload, cost)

    def to_env(self) -> dict[str, str]:
        """Environment variables that reproduce this config."""
        env = {ENV_POLICY: self.policy, ENV_SEED: str(self.seed)}
        if self.policy_params:
            env[ENV_PARAMS] = json.dumps(self.policy_params, sort_keys=True)
        if self.run:
            env[ENV_WORKLOAD] = json.dumps(self.run, sort_keys=True)
        return env

    def run_config(self):
        """The ``RunConfig`` these fields make (defaults for the rest), validated."""
        from simulator.config import build_config
        return build_config(self.run, {"policy": self.policy,
                                       "policy_params": self.policy_params, "seed": self.seed})

    @property
    def describes_workload(self) -> bool:
        from simulator.config import WORKLOAD_FIELDS
        return any(k in self.run for k in WORKLOAD_FIELDS)


def parse_params_text(text: str, source: str) -> dict:
    """``k=v,k=v`` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"{source}: not valid JSON: {e.msg} at column {e.colno}")
        if not isinstance(value, dict):
            raise PolicyError(f"{source}: expected a JSON object")
        return value
    from simulator.config import parse_pairs   # lazy, as the other simulator readers here
    return parse_pairs([text], source, error=PolicyError)


def _read_config_file(path: Path) -> dict:
    # Lazy: the run-config reader of the simulator (same formats, same one-line errors).
    from simulator.config import check_fields, read_mapping_file
    return check_fields(read_mapping_file(path, f"{ENV_CONFIG}:", json_ok=True),
                        f"{ENV_CONFIG} {path}")


def _read_workload_env(text: str) -> dict:
    import yaml

    from simulator.config import check_fields, parse_error_line
    try:
        value = yaml.safe_load(text)      # JSON, or YAML's flow style: {types: [p512d20:8]}
    except yaml.YAMLError as e:
        raise PolicyError(f"{ENV_WORKLOAD}: not a JSON or YAML object: {parse_error_line(e)}")
    if not isinstance(value, dict):
        raise PolicyError(f"{ENV_WORKLOAD}: expected an object of run-config fields, e.g. "
                          f"{{\"types\": [\"p512d20:8\"]}}")
    return check_fields(value, ENV_WORKLOAD)


def load_plugin_config(environ: dict | None = None) -> PluginConfig:
    """The plug-in configuration from ``SERVESIM_POLICY_CONFIG`` and the other variables
    (variables override the file; parameter mappings are merged key by key)."""
    env = os.environ if environ is None else environ
    given: dict = {}
    if env.get(ENV_CONFIG):
        given.update(_read_config_file(Path(env[ENV_CONFIG])))
    overrides: dict = {}
    if env.get(ENV_WORKLOAD):
        overrides.update(_read_workload_env(env[ENV_WORKLOAD]))
    if env.get(ENV_POLICY):
        overrides["policy"] = env[ENV_POLICY]
    if env.get(ENV_PARAMS):
        overrides["policy_params"] = parse_params_text(env[ENV_PARAMS], ENV_PARAMS)
    if env.get(ENV_SEED):
        try:
            overrides["seed"] = int(env[ENV_SEED])
        except ValueError:
            raise PolicyError(f"{ENV_SEED}: seed must be an integer, got {env[ENV_SEED]!r}")
    return plugin_config(given, overrides)


def plugin_config(given: dict, overrides: dict) -> PluginConfig:
    """The configuration made of a run-config file's checked values (``given``) and overrides
    (variables, or ``servesim serve`` flags), merged and validated by the run-config code, as
    for ``servesim run --config FILE --flags``."""
    from simulator.config import build_config
    overrides = {k: v for k, v in overrides.items() if v is not None}
    run = build_config(given, overrides)
    policy_class(run.policy)          # fail early, with the list of names, on a typo
    keys = set(given) | set(overrides)
    return PluginConfig(policy=run.policy, policy_params=run.policy_params, seed=run.seed,
                        run={k: getattr(run, k) for k in sorted(keys) if k not in POLICY_KEYS})


def build_policy(cfg: PluginConfig, server_options: dict) -> Policy:
    """The configured policy; parameters named like vLLM options default to the server's."""
    params = dict(cfg.policy_params)
    cls = policy_class(cfg.policy)
    import dataclasses
    names = {f.name for f in dataclasses.fields(cls.Params)}
    for key in MIRRORED_PARAMS:
        if key in names and key not in params and server_options.get(key) is not None:
            params[key] = server_options[key]
    return make_policy(cfg.policy, params)


def planning_inputs(cfg: PluginConfig) -> tuple[Any, WorkloadHint | None]:
    """(cost model, workload hint) a policy plans with, built from the run-config fields by the
    simulator's own code, as ``servesim run`` builds them: the hint only when a workload is
    described (never from the defaults), the cost model whenever any run field is given."""
    if not cfg.run:
        return None, None
    # Lazy: only a configuration with run fields needs the simulator's workloads and cost models.
    from simulator.runner import build_replica, build_workload
    run = cfg.run_config()
    spec = build_replica(run, build_workload(run) if cfg.describes_workload else None)
    return spec.cost_model, spec.workload_hint


# ------------------------------------------------------------------------------------------------
# The scheduling logic, mixed into vLLM's scheduler classes (vLLM names are imported lazily)

@dataclass
class AdapterStats:
    steps: int = 0
    divergent_steps: int = 0      # vLLM's schedule differed from the policy's decision
    requeued: int = 0             # requests handed back to the policy through on_requeue
    vllm_preemptions: int = 0     # preemptions vLLM made on its own (its KV check refused)
    policy_preemptions: int = 0
    rejections: int = 0


class PolicySchedulingMixin:
    """Imposes a servesim policy's decisions on vLLM's waiting queue, token counts and KV."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)   # vLLM's signature changes between versions
        self.servesim_policy: Policy | None = None
        self.servesim_spec: ReplicaSpec | None = None
        self.servesim_view: ReplicaView | None = None
        self.servesim_stats = AdapterStats()
        self.rejected_reasons: dict[str, str] = {}     # request id -> reason, for the caller
        self.clock: Callable[[], float] = time.time    # same clock as Request.arrival_time
        self.arrivals_done = False                     # vLLM in the loop sets it at the end
        self.wake_at: float | None = None              # the last decision's wake-up time
        self._states: dict[str, RequestState] = {}
        self._plan: dict[str, int] | None = None
        self._pending_rejects: list[str] = []
        self._requeued: set[str] = set()       # preempted requests now waiting
        self._rid_of: dict[int, str] = {}      # id(RequestState) -> vLLM request id
        self._admissions = 0
        self._state_ids = itertools.count()
        self._live_ids: set[int] = set()       # servesim ids of the requests now in vLLM
        # Free blocks before any request: the KV capacity the policy plans with (vLLM's block
        # pool keeps one null block out of the count).
        self._capacity_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
        self._check_speculative()
        self._check_async_mode()

    # -- configuration ---------------------------------------------------------------------------
    def _check_speculative(self) -> None:
        # vLLM schedules 1 + k tokens for a decode carrying k draft tokens (and reserves draft
        # slots in its budgets); a policy plans one token per decode, so the drafts would be
        # cut away without a word. Refused instead.
        spec = self.vllm_config.speculative_config
        if spec is not None:
            raise ValueError(
                f"{type(self).__name__} does not support speculative decoding (--speculative-config"
                f" method {spec.method!r}, {spec.num_speculative_tokens} draft tokens): servesim "
                f"policies plan one token per decode; serve without --speculative-config")

    def _check_async_mode(self) -> None:
        engine_async = bool(self.vllm_config.scheduler_config.async_scheduling)
        if engine_async != self._servesim_async:
            raise ValueError(
                f"{type(self).__name__} needs async scheduling "
                f"{'on' if self._servesim_async else 'off'}: use "
                + ("simulator.vllm.plugin.ServesimAsyncScheduler, or --no-async-scheduling "
                   "with ServesimScheduler" if engine_async else
                   "simulator.vllm.plugin.ServesimScheduler with --no-async-scheduling"))

    def server_options(self) -> dict:
        sc = self.scheduler_config
        return {"max_num_batched_tokens": self.max_num_scheduled_tokens,
                "max_num_seqs": self.max_num_running_reqs,
                "enable_chunked_prefill": bool(sc.enable_chunked_prefill),
                "long_prefill_token_threshold": int(sc.long_prefill_token_threshold),
                "reserve_full_prompt": bool(self.scheduler_reserve_full_isl),
                "scheduling_policy": str(self.policy.value)}

    def configure(self, policy: Policy, *, cost_model=None, workload_hint=None,
                  seed: int = 0) -> None:
        """Bind ``policy`` to this scheduler (before any request arrives)."""
        if self._states:
            raise PolicyError("configure the servesim policy before requests arrive")
        self.servesim_spec = ReplicaSpec(num_blocks=self._capacity_blocks,
                                         block_size=self.block_size,
                                         max_model_len=self.max_model_len,
                                         cost_model=cost_model, workload_hint=workload_hint,
                                         seed=seed)
        policy.bind(self.servesim_spec)
        self.servesim_policy = policy
        self.servesim_view = ReplicaView(self.servesim_spec)

    def _policy(self) -> Policy:
        if self.servesim_policy is None:
            cfg = load_plugin_config()
            cost_model, hint = planning_inputs(cfg)
            self.configure(build_policy(cfg, self.server_options()), cost_model=cost_model,
                           workload_hint=hint, seed=cfg.seed)
        return self.servesim_policy

    # -- requests in and out ---------------------------------------------------------------------
    def add_request(self, request) -> None:
        known = request.request_id in self.requests
        super().add_request(request)
        if known or request.request_id not in self.requests:
            return                      # a streaming continuation, not a new arrival
        policy = self._policy()
        rid = request.request_id
        st = RequestState(self._new_state_id(rid), request.arrival_time, request.num_prompt_tokens,
                          request.max_tokens)
        st.priority = request.priority
        self._states[rid] = st
        self._rid_of[id(st)] = rid
        policy.on_arrival(st)

    def request_state(self, rid: str) -> RequestState | None:
        """The policy's view of vLLM request ``rid`` (None once it has ended): during a step,
        a waiting request's ``cached`` is its hit as looked up before the step."""
        return self._states.get(rid)

    def _new_state_id(self, rid: str) -> int:
        """The policy's integer id for vLLM request ``rid``, unique among live requests.

        A numeric id keeps its number, so vLLM in the loop and the native engine see the same
        ids (ties, predictor draws); any other id (the server's ``cmpl-...``), or a number that
        is already taken, gets the next free one from a counter."""
        sid = int(rid) if rid.isdigit() else None
        while sid is None or sid in self._live_ids:
            sid = next(self._state_ids)
        self._live_ids.add(sid)
        return sid

    def _free_request(self, request, *args, **kwargs):
        self._requeued.discard(request.request_id)
        st = self._states.pop(request.request_id, None)
        if st is not None:
            self._rid_of.pop(id(st), None)
            self._live_ids.discard(st.request_id)
        if st is not None and self.servesim_policy is not None:
            status = request.status.name
            if status in ("FINISHED_STOPPED", "FINISHED_LENGTH_CAPPED"):
                st.generated = request.num_output_tokens
                st.status = Status.FINISHED
                st.kv_blocks = 0
                self.servesim_policy.on_finish(st)
            elif request.request_id not in self.rejected_reasons:   # aborted or failed
                self.servesim_policy.on_abort(st)
                st.status = Status.FINISHED
        return super()._free_request(request, *args, **kwargs)

    # -- one step --------------------------------------------------------------------------------
    def _sync_view(self) -> ReplicaView:
        view = self.servesim_view
        blocks_of = self.kv_cache_manager.coordinator.get_blocks
        resident = []
        for r in self.running:
            st = self._states.get(r.request_id)
            if st is None:
                continue
            st.computed = r.num_computed_tokens
            st.generated = r.num_output_tokens + r.num_output_placeholders
            st.kv_blocks = len(blocks_of(r.request_id)[0])
            st.cached = st.cached_shared_blocks = 0
            st.status = Status.RESIDENT
            if st.generated >= st.output_tokens:
                continue      # its last token is in flight (async): nothing left to schedule
            resident.append(st)
        # A preempted request's in-flight output (async scheduling) arrives while it waits.
        for rid in self._requeued:
            r, st = self.requests.get(rid), self._states.get(rid)
            if r is not None and st is not None:
                st.generated = r.num_output_tokens
        if self.kv_cache_manager.enable_caching:
            self._sync_prefix_hits()
        view.now = self.clock()
        view.resident = resident
        view.free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
        view.num_waiting = len(self.waiting) + len(self.kv_holding_waiting)
        view.arrivals_done = self.arrivals_done
        return view

    def _sync_prefix_hits(self) -> None:
        """Each waiting request's prefix-cache hit, as vLLM will look it up when it admits the
        request (``get_computed_blocks``: whole blocks, at most all tokens but the last). A hit
        block that live requests hold costs no free block; one only the cache holds (evictable,
        counted free) is taken from the free blocks on admission, as vLLM counts in
        ``allocate_slots``. What the step itself does to the cache is not seen (blocks that
        earlier admissions allocate or adopt, cached blocks its allocations evict); vLLM's
        check then has the last word."""
        manager = self.kv_cache_manager
        for r in self.waiting:
            st = self._states.get(r.request_id)
            if st is None:
                continue
            if r.num_computed_tokens:      # holds KV already (a remote KV load): no lookup
                st.cached = st.cached_shared_blocks = 0
                continue
            blocks, st.cached, _ = manager.get_computed_blocks(r)
            st.cached_shared_blocks = sum(1 for b in blocks.blocks[0] if b.ref_cnt > 0)

    def _request_of(self, st: RequestState) -> str | None:
        return self._rid_of.get(id(st))

    def schedule(self, *args, **kwargs):
        policy = self._policy()
        view = self._sync_view()
        decision = decide(policy, view)
        # A batch's wake_at (a steady policy's "ask again by then", MC-SF's "now") is no
        # wake-up time for an idle engine: only an empty decision's is.
        self.wake_at = decision.wake_at if decision.empty else None
        stats = self.servesim_stats
        stats.steps += 1

        for st, reason in decision.reject:
            rid = self._request_of(st)
            if rid is not None:
                st.status = Status.REJECTED
                st.reject_reason = reason
                self.rejected_reasons[rid] = reason
                self._pending_rejects.append(rid)
                stats.rejections += 1
        rejected = set(self._pending_rejects)

        stamp = time.monotonic()
        for st in decision.preempt:
            rid = self._request_of(st)
            req = self.requests.get(rid) if rid is not None else None
            if req is None or req not in self.running:
                continue
            self.running.remove(req)
            self._preempt_request(req, stamp)
            self._mark_preempted(st, req)
            stats.policy_preemptions += 1
        if decision.preempt:
            check_victims(policy, decision, view.now)

        plan: dict[str, int] = {}
        admits = []
        for st, n in decision.prefill:
            rid = self._request_of(st)
            req = self.requests.get(rid) if rid is not None else None
            if req is None or rid in rejected:
                continue
            plan[rid] = n
            if req not in self.running:
                admits.append(req)
        for st in decision.decode:
            rid = self._request_of(st)
            if rid is not None and rid in self.requests:
                plan[rid] = 1

        # Only the policy's admissions are visible, in the policy's order.
        from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue
        original = self.waiting
        visible = create_request_queue(SchedulingPolicy.FCFS)
        for req in admits:
            visible.add_request(req)
        self.waiting = visible
        self._plan = plan
        try:
            out = super().schedule(*args, **kwargs)
        finally:
            self._plan = None
            self.waiting = original
            leftover = list(visible)
            admitted_or_left = {id(r) for r in admits} | {id(r) for r in leftover}
            rest = [r for r in original if id(r) not in admitted_or_left]
            self.waiting = create_request_queue(self.policy)
            for req in leftover + rest:
                self.waiting.add_request(req)
        self._reconcile(out, plan, admits, leftover)
        return out

    def _mark_preempted(self, st: RequestState, req) -> None:
        self._requeued.add(req.request_id)
        st.status = Status.WAITING
        st.computed = 0
        st.kv_blocks = 0
        st.cached = st.cached_shared_blocks = 0   # looked up again before the next decision
        st.generated = req.num_output_tokens
        st.preemptions = req.num_preemptions

    def _reconcile(self, out, plan: dict, admits: list, leftover: list) -> None:
        scheduled = out.num_scheduled_tokens
        policy, stats = self.servesim_policy, self.servesim_stats
        if any(scheduled.get(rid, 0) != n for rid, n in plan.items()) or \
                len(scheduled) != len(plan):
            stats.divergent_steps += 1
        admitted_ids = set()
        for req in admits:
            if req.request_id in scheduled:
                st = self._states[req.request_id]
                st.status = Status.RESIDENT
                self._requeued.discard(req.request_id)
                self._admissions += 1
                st.admitted_seq = self._admissions
                admitted_ids.add(req.request_id)
        # Hand back what vLLM did not carry out, so that the policy's queue ends up in vLLM's
        # order: vLLM's own victims (prepended during the step) in front, then refused admissions.
        not_admitted = [r for r in admits if r.request_id not in admitted_ids]
        victims = [r for r in leftover if r not in not_admitted]
        for req in reversed(not_admitted):
            st = self._states[req.request_id]
            st.status = Status.WAITING
            policy.on_requeue(st)
            stats.requeued += 1
        for req in reversed(victims):
            st = self._states.get(req.request_id)
            if st is None:
                continue
            self._mark_preempted(st, req)
            policy.on_requeue(st)
            stats.requeued += 1
            stats.vllm_preemptions += 1

    def _reserve_prefill_lookahead(self, request, num_computed_tokens, num_new_tokens):
        # vLLM applies this to every request's chunk, running or waiting, just before it
        # allocates KV: the one place where a per-request token count can be imposed.
        n = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        if self._plan is not None:
            n = min(n, self._plan.get(request.request_id, 0))
        return n

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if self._pending_rejects:
            from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
            from vllm.v1.request import RequestStatus
            ids, self._pending_rejects = self._pending_rejects, []
            for req in self.finish_requests(ids, RequestStatus.FINISHED_IGNORED):
                eco = outputs.get(req.client_index)
                if eco is None:
                    eco = outputs[req.client_index] = EngineCoreOutputs()
                eco.outputs.append(EngineCoreOutput(
                    request_id=req.request_id, new_token_ids=[],
                    finish_reason=req.get_finished_reason(), events=req.take_events(),
                    trace_headers=req.trace_headers))
        return outputs


# ------------------------------------------------------------------------------------------------
# The classes vLLM loads by name, built on first access

_CLASSES: dict[str, type] = {}


def _build_classes() -> dict[str, type]:
    if not _CLASSES:
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler

        class ServesimScheduler(PolicySchedulingMixin, Scheduler):
            """vLLM's synchronous V1 scheduler driven by a servesim policy
            (run the server with --no-async-scheduling)."""
            _servesim_async = False

        class ServesimAsyncScheduler(PolicySchedulingMixin, AsyncScheduler):
            """vLLM's async V1 scheduler (the default engine mode) driven by a servesim policy."""
            _servesim_async = True

        for cls in (ServesimScheduler, ServesimAsyncScheduler):
            cls.__module__ = __name__
            _CLASSES[cls.__name__] = cls
    return _CLASSES


def __getattr__(name: str):
    if name in SCHEDULER_CLASSES:
        return _build_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scheduler_class(async_scheduling: bool) -> type:
    return _build_classes()[SCHEDULER_CLASSES[1] if async_scheduling else SCHEDULER_CLASSES[0]]


def qualname(async_scheduling: bool) -> str:
    """The ``--scheduler-cls`` value for vLLM."""
    return f"{__name__}.{SCHEDULER_CLASSES[1] if async_scheduling else SCHEDULER_CLASSES[0]}"
