"""The run configuration: every field of ``servesim run``, from flags or a YAML/TOML file.

Each field is declared once, below, with its type, default, help, flag and bounds
(simulator/fields.py); the flags, the config-file keys, the sweep's fields and the help text
derive from the declaration, and every value passes the same check whatever its source. A config
file holds the same fields as the flags (underscores or dashes); flags given on the command line
override the file. Unknown keys, wrong types, numbers out of range and fields that would do
nothing are refused with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from pathlib import Path

from simulator.errors import ConfigError, UserError
from simulator.fields import INT64_MAX, Declared, check_number, declared_fields, run_field
from simulator.hardware import MAX_PARALLEL

ARRIVALS = ("poisson", "gamma", "deterministic", "piecewise")
COST_MODELS = ("linear", "roofline", "profile")
ENGINES = ("native", "vllm")     # vllm: vLLM's real scheduler in the loop (the vllm extra)
PREEMPTIONS = ("recompute", "restart")

# ---------------------------------------------------------------------------------------------
# Bounds on numbers, and why
#
# Simulated time is a float64 count of seconds. At 1e9 s (32 years) its spacing is 1.2e-7 s,
# still a hundred times finer than the shortest iteration a cost model prices (tens of
# microseconds), so adding a step to an arrival time keeps the step. Far beyond it the sum
# absorbs the step: arrivals 1e300 s apart (--rate 1e-300) make every latency exactly 0.0. So the
# arrivals a run generates must fit in MAX_SIM_SECONDS.
MAX_SIM_SECONDS = 1e9
# Every request is an object in the engine and a row in the tables, simulated at thousands per
# wall second: past ten million a run is a typo, not an experiment, and would exhaust memory (a
# duration times a rate counts too) long before it reported anything.
MAX_REQUESTS = 10_000_000
# A fast replica serves thousands of requests per second; a million is far past any of them.
MAX_RATE = 1e6
# Token counts: vLLM stores them as int32.
MAX_TOKENS = 2**31 - 1
# Piecewise arrivals lay the schedule out once per cycle over the whole run (four float arrays
# per segment): a schedule whose cycle is tiny against the run (1e-9:8 repeats 1.25e11 times for
# 1,000 requests) would allocate hundreds of GiB.
MAX_SCHEDULE_SEGMENTS = 1_000_000
# Gamma arrivals with cv above 10 (shape below 0.01): numpy's gamma sampler returns exactly 0
# for a growing share of the gaps (about half at cv 31.6) and the mean rate drifts; below 1e-3
# they are deterministic arrivals (use those).
CV_RANGE = (1e-3, 10.0)
# A cluster is simulated replica by replica on one clock: thousands are far past any deployment
# a single simulation can say something about.
MAX_REPLICAS = 4096
# Latency objectives in milliseconds: a year is past any objective.
MAX_SLO_MS = 3.2e10
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")
SLO_ALIASES = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2el_ms", "e2e": "e2el_ms"}


# ---------------------------------------------------------------------------------------------
# Checks of one field's value (``where`` names it: a flag, a config file key, a sweep axis)


def _check_length(value: str, where: str) -> str:
    from traces.lengths import parse_length
    _check_tokens(parse_length(value, where).max, where)
    return value


def _check_range(value: str, where: str) -> str:
    from traces.transforms import parse_range
    for bound in parse_range(value, where) or ():
        if bound is not None:
            _check_tokens(bound, where)
    return value


def _check_tokens(n: int, where: str) -> None:
    if n > MAX_TOKENS:
        raise ConfigError(f"{where}: token counts must be at most {MAX_TOKENS:,}, got {n:,}")


def _check_types(value: list, where: str) -> list:
    if not value:
        raise ConfigError(f"{where} must list at least one type, like p512d20:8")
    parse_types(value, where)
    return value


def _check_schedule(value: list, where: str) -> list:
    if not value:
        raise ConfigError(f"{where} must list at least one [duration_s, rate] segment")
    for i, seg in enumerate(value):
        if not isinstance(seg, (list, tuple)) or len(seg) != 2:
            raise ConfigError(f"{where} must be a list of [duration_s, rate] pairs, got {seg!r}")
        check_number(seg[0], f"{where} segment {i + 1} duration", float, 0, MAX_SIM_SECONDS,
                     low_open=True)
        check_number(seg[1], f"{where} segment {i + 1} rate", float, 0, MAX_RATE)
    if not any(r > 0 for _, r in value):
        raise ConfigError(f"{where} needs at least one segment with a positive rate")
    return value


# Fields a replica group may set: what describes one replica and its policy. The served model
# and the engine are the cluster's (and ``stepwise``, how its replicas run); a front-end
# delay is not modelled in a cluster.
GROUP_EXCLUDED = ("model", "engine", "stepwise", "frontend_delay")


def _check_groups(value: list, where: str) -> list:
    if not value:
        raise ConfigError(f"{where} must list at least one group, like {{count: 2, gpu: h100}}")
    out = []
    for i, group in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(group, dict):
            raise ConfigError(f"{at} must be a mapping like {{count: 2, gpu: h100}}, got "
                              f"{group!r}")
        fields = {str(k).replace("-", "_"): v for k, v in group.items()}
        count = fields.pop("count", None)
        check_number(count, f"{at}.count", int, 1, MAX_REPLICAS)
        checked = {}
        for name, v in fields.items():
            f = FIELDS.get(name)
            if f is None or f.group not in ("policy", "replica") or name in GROUP_EXCLUDED:
                allowed = ", ".join(n for n, d in FIELDS.items() if d.group in
                                    ("policy", "replica") and n not in GROUP_EXCLUDED)
                raise ConfigError(f"{at}: {name!r} is not a replica field; allowed: count, "
                                  f"{allowed}")
            checked[name] = f.coerce(v, f"{at}.{name}")
        out.append({"count": count, **checked})
    return out


def _check_slo(value: dict, where: str) -> dict:
    out = {}
    for key, v in value.items():
        if key not in SLO_KEYS:
            raise ConfigError(f"{where}: unknown objective {key!r}; allowed: {', '.join(SLO_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                not 0 < v <= MAX_SLO_MS:
            raise ConfigError(f"{where}.{key} must be a positive number of milliseconds up to "
                              f"{MAX_SLO_MS:g}, got {v!r}")
        out[key] = v
    return out


def _check_scalars(value: dict, where: str) -> dict:
    """Policy, cost and format options: scalar values (a policy's tuple parameter may be a list)."""
    for key, v in value.items():
        if isinstance(v, dict):
            raise ConfigError(f"{where}.{key} must be a value, not a mapping")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            check_number(v, f"{where}.{key}")
    return value


# ---------------------------------------------------------------------------------------------
# Values of a flag -> the field's value


def parse_slo(values, flag: str = "--slo") -> dict:
    """``ttft=500,tpot=50`` (repeatable) -> {"ttft_ms": 500.0, ...}; an objective given twice
    (also as ttft and ttft_ms) is an error."""
    out: dict = {}
    for k, v in parse_pairs(values, flag).items():
        key = SLO_ALIASES.get(k, k)
        if key not in SLO_KEYS:
            raise ConfigError(f"{flag}: unknown objective {k!r}; use ttft, tpot or e2el (ms)")
        if key in out:
            raise ConfigError(f"{flag}: {key} given twice; give each objective once")
        try:
            out[key] = float(v)
        except ValueError:
            raise ConfigError(f"{flag}: {k} must be a number of milliseconds, got {v!r}")
    return out


def parse_schedule(text: str | None, flag: str = "--rate-schedule"):
    """``30:5,60:0,30:12`` -> [[30, 5], [60, 0], [30, 12]] (duration_s:rate segments)."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        try:
            d, r = part.split(":")
            out.append([float(d), float(r)])
        except ValueError:
            raise ConfigError(f"{flag}: expected DURATION:RATE[,...], got {part!r}")
    return out


def _pairs(values, flag):
    return parse_pairs(values, flag)


def _pairs_whole(values, flag):     # format options: a value may hold commas (a column list)
    return parse_pairs(values, flag, split_commas=False)


def _as_list(values, flag):
    return list(values)


# ---------------------------------------------------------------------------------------------
# The run fields


@dataclass
class RunConfig:
    # policy
    policy: str = run_field("vllm-v1", "Batching policy (see `servesim policies`).",
                            group="policy")
    policy_params: dict = run_field(
        help="Policy parameter, repeatable (see `servesim policies NAME`).", group="policy",
        default_factory=dict, flags=("-p", "--policy-param"), dest="policy_param",
        metavar="KEY=VALUE", from_cli=_pairs, check=_check_scalars)
    engine: str = run_field(
        "native", "Replica engine: servesim's own, or vLLM's real scheduler in the loop (needs "
        "the vllm extra).", group="policy", choices=ENGINES)
    stepwise: bool = run_field(
        False, "Native engine: run every iteration on its own, the reference, instead of a "
        "stretch of identical decode iterations in one step (same tables, slower).",
        group="policy")
    # replica
    model: str = run_field("llama-2-7b", "Model preset (see `servesim presets`), or a Hugging "
                           "Face config.json or its folder (docs/cost-models.md).",
                           group="replica")
    gpu: str = run_field("a100-80gb", "GPU preset.", group="replica")
    cost_model: str = run_field("roofline", "Iteration-time model.", group="replica",
                                choices=COST_MODELS)
    cost_params: dict = run_field(
        help="Cost-model parameter, e.g. d0=0.02 d1=4e-7 for linear.", group="replica",
        default_factory=dict, flags=("--cost-param",), dest="cost_param", metavar="KEY=VALUE",
        from_cli=_pairs, check=_check_scalars)
    kv_capacity: int | None = run_field(
        None, "KV cache capacity in tokens (default: from GPU memory).", group="replica",
        low=0, low_open=True, high=10**12)
    block_size: int = run_field(16, "KV block size in tokens.", group="replica", low=1,
                                high=65_536)
    gpu_memory_utilization: float = run_field(0.9, "Fraction of GPU memory used.",
                                              group="replica", low=0, low_open=True, high=1)
    max_model_len: int | None = run_field(
        None, "Longest prompt + output accepted (default: the model's context).",
        group="replica", low=1, high=MAX_TOKENS)
    allow_long_max_model_len: bool = run_field(
        False, "Allow max_model_len beyond the model's context (as vLLM's "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN).", group="replica")
    prefix_caching: bool | None = run_field(
        None, "Automatic prefix caching, as vLLM's (default: on when the workload's requests "
        "share prefixes: a trace's hash_ids or prompt text, a system prompt, sessions; "
        "docs/prefix-caching.md).",
        group="replica", flags=("--prefix-caching", "--no-prefix-caching"))
    preemption: str = run_field(
        "recompute", "A preempted request keeps its output and recomputes (vLLM), or restarts "
        "from its prompt (the fluid paper's model).", group="replica", choices=PREEMPTIONS)
    frontend_delay: float = run_field(
        0.0, "Seconds from a request's send to its arrival in the engine (a live server's HTTP "
        "front end; experiments/sim_vs_real.py measures it); latencies count from the send.",
        group="replica", low=0, high=60)
    # parallelism within a replica (docs/cost-models.md)
    tp: int = run_field(
        1, "Tensor-parallel degree: GPUs every layer is split over (an all-reduce per attention "
        "and MLP over the GPU's link).", group="replica", low=1, high=MAX_PARALLEL)
    pp: int = run_field(
        1, "Pipeline-parallel stages: the layers split over this many GPUs (times tp), pp "
        "micro-batches in flight.", group="replica", low=1, high=MAX_PARALLEL)
    # cluster (docs/clusters.md)
    replicas: int = run_field(1, "Replicas, identical, behind one router.", group="cluster",
                              low=1, high=MAX_REPLICAS)
    router: str = run_field("round-robin", "Which replica an arrival goes to (see `servesim "
                            "routers`); with replicas > 1.", group="cluster")
    router_params: dict = run_field(
        help="Router parameter, repeatable, e.g. -R d=3 for power-of-d.", group="cluster",
        default_factory=dict, flags=("-R", "--router-param"), dest="router_param",
        metavar="KEY=VALUE", from_cli=_pairs, check=_check_scalars)
    groups: list | None = run_field(
        None, "Replica groups that differ (a config-file list of {count: N, gpu: ..., policy: "
        "..., ...}: replica and policy fields); replicas is their total count.",
        group="cluster", flags=(), check=lambda v, where: _check_groups(v, where))
    admission_rate: float | None = run_field(
        None, "Admission at the front: a token bucket letting in this many requests/s on "
        "average.", group="cluster", low=0, low_open=True, high=MAX_RATE)
    admission_burst: int = run_field(1, "Admission: the token bucket's size (requests let in at "
                                     "once).", group="cluster", low=1, high=MAX_REQUESTS)
    max_queue: int | None = run_field(
        None, "Admission: refuse arrivals while this many requests wait across the replicas.",
        group="cluster", low=0, high=MAX_REQUESTS)
    # prefill/decode disaggregation (docs/clusters.md)
    prefill_replicas: int | None = run_field(
        None, "Disaggregated serving: replicas that compute prompts and first tokens (with "
        "decode_replicas).", group="cluster", low=1, high=MAX_REPLICAS)
    decode_replicas: int | None = run_field(
        None, "Disaggregated serving: replicas that decode the rest, each request's prompt KV "
        "sent to them (with prefill_replicas).", group="cluster", low=1, high=MAX_REPLICAS)
    decode_router: str | None = run_field(
        None, "Disaggregated: the decode pool's router (default: router and router_params, "
        "as the prefill pool's).", group="cluster")
    decode_router_params: dict = run_field(
        help="Disaggregated: decode_router's parameter, repeatable.", group="cluster",
        default_factory=dict, flags=("--decode-router-param",), dest="decode_router_param",
        metavar="KEY=VALUE", from_cli=_pairs, check=_check_scalars)
    kv_link_gbps: float = run_field(
        200.0, "Disaggregated: bandwidth of each prefill replica's KV link, Gbit/s (200: one "
        "HDR InfiniBand port).", group="cluster", low=0, low_open=True, high=1e6)
    kv_link_latency_ms: float = run_field(
        0.0, "Disaggregated: fixed latency of one KV transfer, ms.", group="cluster", low=0,
        high=6e4)
    # workload
    arrival: str = run_field("poisson", "Arrival process.", group="workload", choices=ARRIVALS)
    rate: float = run_field(2.5, "Mean arrival rate, requests/s.", group="workload", low=0,
                            low_open=True, high=MAX_RATE)
    cv: float = run_field(1.0, "Gamma arrivals: coefficient of variation of the gaps.",
                          group="workload", low=CV_RANGE[0], high=CV_RANGE[1])
    rate_schedule: list | None = run_field(
        None, "Piecewise arrivals: DURATION:RATE,... repeating.", group="workload",
        from_cli=parse_schedule, check=_check_schedule, metavar="DURATION:RATE,...",
        repeatable=False)
    num_requests: int | None = run_field(
        None, "Number of requests (default 1000; with a trace: its first N).", group="workload",
        flags=("-n", "--num-requests"), low=1, high=MAX_REQUESTS)
    duration: float | None = run_field(None, "Seconds of arrivals (instead of -n).",
                                       group="workload", low=0, low_open=True,
                                       high=MAX_SIM_SECONDS)
    prompt_len: str = run_field("128:2048", "Prompt tokens: 512 or a uniform range 128:2048.",
                                group="workload", check=_check_length)
    output_len: str = run_field("16:512", "Output tokens: 20 or a range 16:512.",
                                group="workload", check=_check_length)
    types: list | None = run_field(
        None, "A request type of the paper's model (prompt, output, rate); repeatable.",
        group="workload", flags=("--type",), metavar="p512d20:RATE", from_cli=_as_list,
        check=_check_types)
    system_prompt_len: int = run_field(
        0, "Tokens of a shared system prompt ahead of each prompt that carries it (0: none; "
        "synthetic workloads).", group="workload", low=0, high=MAX_TOKENS)
    system_prompt_share: float = run_field(
        1.0, "Fraction of requests (with sessions: of sessions) that carry the system prompt "
        "(seeded).", group="workload",
        low=0, high=1)
    session_turns: int = run_field(
        1, "Turns per multi-turn session: turn k's prompt is the previous prompt + answer + a "
        "new message (1: no sessions; synthetic workloads).", group="workload", low=1,
        high=10_000)
    think_time: float = run_field(
        0.0, "Sessions: mean think time, seconds (exponential, seeded) between a turn's answer "
        "and the next turn's arrival (closed loop).", group="workload", low=0,
        high=MAX_SIM_SECONDS)
    seed: int = run_field(0, "Seed for every random choice.", group="run", low=0,
                          high=INT64_MAX)
    # trace replay (docs/traces.md); with a trace, num_requests keeps its first N requests
    trace: str | None = run_field(
        None, "Replay this trace file (CSV/JSONL/Parquet, gzip ok); -n keeps its first N.",
        group="trace", metavar="FILE")
    trace_format: str | None = run_field(
        None, "Trace format instead of detection (see `servesim trace formats`).",
        group="trace", flags=("--format",), metavar="NAME")
    trace_options: dict = run_field(
        help="Format option, repeatable, e.g. -T model=GPT-4, -T jitter=3, -T prompt=COL.",
        group="trace", default_factory=dict, flags=("-T", "--trace-option"),
        dest="trace_option", metavar="KEY=VALUE", from_cli=_pairs_whole, check=_check_scalars)
    trace_strict: bool = run_field(
        False, "Reject unsorted timestamps and 0-token requests instead of fixing them.",
        group="trace", flags=("--strict",))
    trace_start: float | None = run_field(None, "Time window start, trace seconds.",
                                          group="trace", low=0, high=MAX_SIM_SECONDS)
    trace_end: float | None = run_field(None, "Time window end, trace seconds.", group="trace",
                                        low=0, low_open=True, high=MAX_SIM_SECONDS)
    speedup: float | None = run_field(None, "Replay the trace this many times faster.",
                                      group="trace", low=1e-6, high=1e6)
    target_rate: float | None = run_field(None, "Scale the trace to this mean rate (req/s).",
                                          group="trace", low=0, low_open=True, high=MAX_RATE)
    prompt_range: str | None = run_field(None, "Keep requests with prompts in range.",
                                         group="trace", metavar="LOW:HIGH", check=_check_range)
    output_range: str | None = run_field(None, "Keep requests with outputs in range.",
                                         group="trace", metavar="LOW:HIGH", check=_check_range)
    truncate: bool = run_field(
        False, "Cut requests to max_model_len (prompt first; counted in the summary).",
        group="trace")
    generate_arrivals: bool = run_field(
        False, "Keep the trace's lengths; arrivals from --arrival/--rate.", group="trace")
    lengths_file: str | None = run_field(
        None, "Draw (prompt, output) pairs from this file (e.g. a Vidur length file).",
        group="trace", flags=("--lengths-from",), metavar="FILE")
    # outputs
    slo: dict = run_field(
        help="Service-level objectives for goodput and attainment.", group="output",
        default_factory=dict, metavar="ttft=MS,tpot=MS,e2el=MS", from_cli=parse_slo,
        check=_check_slo)
    timeline: bool = run_field(True, "Record the per-iteration timeline.", group="output",
                               flags=())
    out: str | None = run_field(None, "Folder for the run's outputs.", group="output", flags=())

    DEFAULT_NUM_REQUESTS: typing.ClassVar[int] = 1000

    def validate(self) -> "RunConfig":
        """Check each field against its declaration, then the fields together."""
        for name, f in FIELDS.items():
            setattr(self, name, f.coerce(getattr(self, name)))
        if self.engine == "vllm" and self.preemption != "recompute":
            raise ConfigError("preemption restart needs engine native (vLLM always recomputes)")
        if self.num_requests is not None and self.duration is not None:
            raise ConfigError("give num_requests or duration, not both")
        synthetic_only = [name for name, given in (("system_prompt_len", self.system_prompt_len),
                                                   ("session_turns", self.session_turns > 1))
                          if given]
        if self.trace and synthetic_only:
            raise ConfigError(f"{synthetic_only[0]} shapes synthetic workloads, not a trace "
                              f"replay (a trace's requests carry their own prefix identity, if "
                              f"any: hash_ids or prompt text)")
        if self.session_turns > 1 and self.duration is not None:
            raise ConfigError("session_turns needs num_requests (sessions of turns), not duration")
        if self.session_turns > 1 and self.duration is None and \
                self.requests_or_default < self.session_turns:
            raise ConfigError(f"session_turns {self.session_turns} needs num_requests >= "
                              f"{self.session_turns} (one session's turns), got "
                              f"{self.requests_or_default}")
        if self.session_turns > 1 and (self.prompt_range or self.output_range):
            raise ConfigError("prompt_range and output_range keep single requests; with "
                              "session_turns they would drop turns from inside a session: "
                              "bound the messages with prompt_len and output_len instead")
        if self.session_turns > 1 and self.types:
            raise ConfigError("session_turns draws messages from prompt_len/output_len, not "
                              "from types")
        if self.arrival == "piecewise" and not self.rate_schedule:
            raise ConfigError("arrival piecewise needs rate_schedule: [[duration_s, rate], ...]")
        self._validate_trace()
        self._validate_horizon()
        self._validate_model_len()
        self._validate_parallel()
        self._validate_policy()
        self._validate_cluster()
        return self

    @property
    def admission(self) -> bool:
        """Admission control at the front is on."""
        return self.admission_rate is not None or self.max_queue is not None

    @property
    def disaggregated(self) -> bool:
        """A prefill pool and a decode pool (simulator/disagg.py)."""
        return self.prefill_replicas is not None or self.decode_replicas is not None

    @property
    def clustered(self) -> bool:
        """The run goes through the cluster (simulator/cluster.py): replicas, or admission."""
        return self.replicas > 1 or self.admission

    def group_configs(self) -> list[tuple[int, "RunConfig"]]:
        """(count, the run config of one replica of the group) for each replica group; without
        groups, one group of ``replicas`` replicas of this config."""
        if not self.groups:
            return [(self.replicas, self)]
        base = {**self.to_dict(), "groups": None, "replicas": 1, "router_params": {},
                "admission_rate": None, "max_queue": None}
        out = []
        for i, group in enumerate(self.groups):
            fields = {k: v for k, v in group.items() if k != "count"}
            if "policy" in fields and "policy_params" not in fields:
                fields["policy_params"] = {}     # another policy: the base's params are not its
            try:
                out.append((group["count"], RunConfig(**{**base, **fields}).validate()))
            except UserError as e:     # a field's value, or the group's policy parameters
                raise ConfigError(f"groups[{i}]: {e}") from None
        return out

    def _validate_cluster(self) -> None:
        from scheduler.base import PolicyError
        from scheduler.routers import make_router
        if self.groups:
            total = sum(g["count"] for g in self.groups)
            if self.replicas not in (1, total):
                raise ConfigError(f"replicas {self.replicas} differs from the groups' total "
                                  f"count {total}: give one of them")
            self.replicas = total
            self.group_configs()         # each group's fields together, as a replica's
        if self.replicas > 1 and self.engine != "native":
            raise ConfigError(f"replicas {self.replicas} needs engine native (a vLLM engine is "
                              f"one replica)")
        if self.clustered and self.frontend_delay > 0:
            raise ConfigError("frontend_delay applies to one replica without admission control "
                              "(a cluster's router front end is not modelled as a delay)")
        if self.admission and self.engine != "native":
            raise ConfigError("admission control (admission_rate, max_queue) needs engine "
                              "native")
        if self.disaggregated:
            self._validate_disaggregated()
        try:
            router = make_router(self.router, self.router_params)
            if self.replicas > 1:     # (one replica routes nothing: a sweep may reach it)
                router.bind(self.replicas, self.seed)   # refuses parameters unfit for the count
        except PolicyError as e:
            raise ConfigError(str(e)) from None
        if self.disaggregated:        # each pool's router, for its pool's size
            sizes = (self.prefill_replicas, self.decode_replicas)
            for pool, (name, params), n in zip(("prefill", "decode"), self.pool_routers, sizes):
                try:
                    make_router(name, params).bind(n, self.seed)
                except PolicyError as e:
                    raise ConfigError(f"{pool} pool: {e}") from None
        self.router_params = _canonical_params(router.params, self.router_params)
        if self.decode_router is not None:
            try:
                decode = make_router(self.decode_router, self.decode_router_params)
            except PolicyError as e:
                raise ConfigError(str(e)) from None
            self.decode_router_params = _canonical_params(decode.params,
                                                          self.decode_router_params)

    @property
    def pool_routers(self) -> tuple[tuple[str, dict], tuple[str, dict]]:
        """Disaggregated: the prefill pool's and the decode pool's router and parameters."""
        decode = (self.decode_router, self.decode_router_params) if self.decode_router \
            else (self.router, self.router_params)
        return (self.router, self.router_params), decode

    def _validate_disaggregated(self) -> None:
        for given, other in (("prefill_replicas", "decode_replicas"),
                             ("decode_replicas", "prefill_replicas")):
            if getattr(self, other) is None:
                raise ConfigError(f"{FIELDS[given].label} needs {FIELDS[other].label} too: "
                                  f"disaggregated serving has both pools")
        if self.replicas > 1 or self.groups:
            raise ConfigError("give replicas (or groups) or prefill_replicas and "
                              "decode_replicas, not both: they are two shapes of cluster")
        clash = [name for name, on in (("admission_rate", self.admission_rate is not None),
                                       ("max_queue", self.max_queue is not None),
                                       ("frontend_delay", self.frontend_delay > 0)) if on]
        if clash:
            raise ConfigError(f"{FIELDS[clash[0]].label} is not modelled with disaggregated "
                              f"serving (prefill_replicas, decode_replicas): drop one of them")
        if self.engine != "native":
            raise ConfigError("disaggregated serving (prefill_replicas, decode_replicas) needs "
                              "engine native")

    def _validate_trace(self) -> None:
        if self.trace_start is not None and self.trace_end is not None and \
                self.trace_end <= self.trace_start:
            raise ConfigError(f"trace_end ({self.trace_end:g}) must be after trace_start "
                              f"({self.trace_start:g})")
        if self.speedup is not None and self.target_rate is not None:
            raise ConfigError("give speedup or target_rate, not both")
        if self.types and (self.trace or self.lengths_file):
            raise ConfigError("types define their own lengths and rates: not with a trace or "
                              "a lengths file")
        if self.trace:
            if self.duration is not None:
                raise ConfigError("with a trace, bound the replay with trace_end (--trace-end) "
                                  "or num_requests (-n), not duration")
            if self.generate_arrivals and (self.speedup or self.target_rate):
                raise ConfigError("generate_arrivals takes its rate from the arrival flags; "
                                  "speedup and target_rate apply to the trace's own arrivals")
            return
        # Without a trace, format and options describe the lengths file, if any.
        for name in ("trace_format", "trace_options") if not self.lengths_file else ():
            if getattr(self, name):
                raise ConfigError(f"{name} applies to a trace or lengths file: give trace "
                                  f"(--trace FILE) or lengths_file (--lengths-from FILE)")
        for name in ("trace_start", "trace_end", "speedup", "target_rate"):
            if getattr(self, name) is not None:
                raise ConfigError(f"{name} applies to a trace: give trace (--trace FILE)")
        for name in ("trace_strict", "generate_arrivals"):
            if getattr(self, name):
                raise ConfigError(f"{name} applies to a trace: give trace (--trace FILE)")

    def arrival_rate(self) -> float:
        """The mean rate of the arrivals this config generates (types: their total rate)."""
        if self.arrival == "piecewise":     # validate() has checked the schedule by now
            schedule = self.rate_schedule
            return sum(d * r for d, r in schedule) / sum(d for d, _ in schedule)
        types = request_types(self)
        return sum(t.rate for t in types) if types else self.rate

    def _validate_horizon(self) -> None:
        """Generated arrivals must fit in MAX_SIM_SECONDS and MAX_REQUESTS (see there)."""
        if self.trace and not self.generate_arrivals:
            return                     # a trace's own times: checked by its loader
        rate = self.arrival_rate()
        if self.duration is not None:
            span = self.duration
            expected = self.duration * rate
            if expected > MAX_REQUESTS:
                raise ConfigError(f"duration {self.duration:g} s at {rate:g} req/s makes about "
                                  f"{expected:.3g} requests, more than {MAX_REQUESTS:,}; "
                                  f"shorten the duration or lower the rate")
            if expected < 1:    # a run of no requests reports nothing, successfully
                raise ConfigError(f"duration {self.duration:g} s at {rate:g} req/s makes about "
                                  f"{expected:.3g} requests, less than one; lengthen the "
                                  f"duration or raise the rate")
        elif self.num_requests is None and self.trace:
            return                     # as many as the trace has: not known before loading
        else:
            n = self.requests_or_default
            span = n / rate
            if span > MAX_SIM_SECONDS:
                raise ConfigError(
                    f"rate {rate:g} req/s with num_requests {n:,}: the arrivals span about "
                    f"{span:.3g} s of simulated time, beyond {MAX_SIM_SECONDS:g} s where float64 "
                    f"time no longer resolves one iteration (latencies would read 0); raise the "
                    f"rate or lower num_requests")
        if self.arrival == "piecewise":
            schedule = self.rate_schedule
            period = sum(d for d, _ in schedule)
            laid_out = (span / period + 2) * len(schedule)
            if laid_out > MAX_SCHEDULE_SEGMENTS:
                raise ConfigError(
                    f"rate_schedule: its {period:g} s cycle repeats about {span / period:.3g} "
                    f"times over the run ({laid_out:.3g} segments laid out, more than "
                    f"{MAX_SCHEDULE_SEGMENTS:,}); lengthen the segments")

    def _validate_model_len(self) -> None:
        if self.max_model_len is None:
            if self.allow_long_max_model_len:
                raise ConfigError("allow_long_max_model_len applies to a max_model_len beyond "
                                  "the model's context: give max_model_len (--max-model-len)")
            return
        from simulator.hardware import model_spec
        context = model_spec(self.model).max_model_len
        if self.max_model_len > context and not self.allow_long_max_model_len:
            raise ConfigError(f"max_model_len {self.max_model_len:,} is beyond {self.model}'s "
                              f"context of {context:,} tokens; add allow_long_max_model_len "
                              f"(--allow-long-max-model-len) to simulate it anyway")

    def _validate_parallel(self) -> None:
        if self.tp * self.pp > 1:
            from simulator.hardware import Parallelism, model_spec
            Parallelism(self.tp, self.pp).check(model_spec(self.model))

    def parallelism(self):
        """The replica's ``Parallelism`` (tp x pp GPUs)."""
        from simulator.hardware import Parallelism
        return Parallelism(self.tp, self.pp)

    def _validate_policy(self) -> None:
        """The policy's parameters, typed by its Params (a flag's "512" becomes 512)."""
        from scheduler.base import make_policy
        params = make_policy(self.policy, self.policy_params).params
        typed = {}
        for key in self.policy_params:
            name = key.replace("-", "_")
            value = getattr(params, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                check_number(value, f"policy {self.policy}: parameter {name}")
            typed[name] = list(value) if isinstance(value, tuple) else value
        self.policy_params = typed

    def unused_workload_settings(self) -> list[str]:
        """Workload settings this config gives that shape nothing (said as warnings, not
        refused: a sweep may vary one without the other)."""
        out = []
        if self.think_time and self.session_turns == 1:
            out.append(f"think_time {self.think_time:g} s is unused: it spaces the turns of "
                       f"sessions (session_turns > 1)")
        if self.system_prompt_share != 1.0 and not self.system_prompt_len:
            out.append(f"system_prompt_share {self.system_prompt_share:g} is unused without "
                       f"system_prompt_len")
        n, k = self.requests_or_default, self.session_turns
        if k > 1 and n is not None and n % k:
            out.append(f"num_requests {n:,} makes {n // k:,} sessions of {k} turns: "
                       f"{n // k * k:,} requests")
        return out

    @property
    def requests_or_default(self) -> int | None:
        if self.num_requests is None and self.duration is None:
            return self.DEFAULT_NUM_REQUESTS
        return self.num_requests

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS: dict[str, Declared] = declared_fields(RunConfig)
# The fields that describe the workload (arrivals and lengths, or a trace); the others describe
# the policy, the replica, the seed and the outputs. The vLLM plug-in builds a workload hint only
# from these.
WORKLOAD_FIELDS = tuple(n for n, f in FIELDS.items() if f.group in ("workload", "trace"))
# Run fields that hold mappings: a sweep axis may set one key of them (policy_params.chunk_size).
MAPPING_FIELDS = tuple(n for n, f in FIELDS.items() if f.kind is dict)
# Run fields naming input files.
FILE_FIELDS = ("trace", "lengths_file")


def parse_types(types: list, where: str = "types"):
    """``types`` entries (``p512d20:8.4`` strings or {prompt, output, rate} mappings) as
    RequestType records, each checked."""
    from traces.errors import WorkloadError
    from traces.lengths import RequestType, parse_type
    out = []
    for t in types:
        try:
            if isinstance(t, dict):
                try:
                    rt = RequestType(str(t.get("name") or f"p{t['prompt']}d{t['output']}"),
                                     int(t["prompt"]), int(t["output"]), float(t["rate"]))
                except (KeyError, TypeError, ValueError, OverflowError):
                    raise ConfigError(f"{where}: each entry needs prompt, output and rate; "
                                      f"got {t!r}")
            else:
                rt = parse_type(str(t))
        except WorkloadError as e:
            raise ConfigError(f"{where}: {e}") from None
        check_number(rt.rate, f"{where}: type {rt.name} rate", float, 0, MAX_RATE, low_open=True)
        _check_tokens(max(rt.prompt_tokens, rt.output_tokens), f"{where}: type {rt.name}")
        out.append(rt)
    return tuple(out)


def _canonical_params(params, given: dict) -> dict:
    """The given router parameters by their field names, as the router converted them."""
    return {k.replace("-", "_"): getattr(params, k.replace("-", "_")) for k in given}


def request_types(cfg: RunConfig):
    """The request types of a config (``--type``), or None."""
    return parse_types(cfg.types) if cfg.types else None


def check_given(cfg: RunConfig, given: set[str]) -> None:
    """Refuse fields given explicitly (by a flag, a config file or code) that the rest of the
    configuration would silently ignore."""
    def refuse(name: str, why: str) -> None:
        raise ConfigError(f"{FIELDS[name].label} {why}")

    if cfg.types:
        for name in ("prompt_len", "output_len", "rate"):
            if name in given:
                refuse(name, "does nothing with types (--type): each type fixes its own prompt, "
                             "output and rate; drop one of them")
    if "admission_burst" in given and cfg.admission_rate is None:
        refuse("admission_burst", "sizes the token bucket of admission_rate "
                                  "(--admission-rate): give it")
    if cfg.replicas == 1 and not cfg.groups and not cfg.disaggregated:
        for name in ("router", "router_params"):
            if name in given:
                refuse(name, "does nothing with one replica: give replicas (--replicas N)")
    if not cfg.disaggregated:
        for name in ("decode_router", "decode_router_params", "kv_link_gbps",
                     "kv_link_latency_ms"):
            if name in given:
                refuse(name, "applies to disaggregated serving: give prefill_replicas and "
                             "decode_replicas (--prefill-replicas P --decode-replicas D)")
    if "decode_router_params" in given and cfg.decode_router is None:
        refuse("decode_router_params", "sets decode_router's parameters: give it "
                                       "(--decode-router NAME), or router_params for both pools")
    if "rate_schedule" in given and cfg.arrival != "piecewise":
        refuse("rate_schedule", f"applies to piecewise arrivals (--arrival piecewise), not "
                                f"{cfg.arrival}")
    if "rate" in given and cfg.arrival == "piecewise" and not cfg.trace:
        refuse("rate", "does nothing with piecewise arrivals: their rates come from "
                       "rate_schedule (--rate-schedule)")
    if "cv" in given and cfg.arrival != "gamma":
        refuse("cv", f"applies to gamma arrivals (--arrival gamma), not {cfg.arrival}")
    if (cfg.trace or cfg.lengths_file) and not cfg.types:
        source = "trace" if cfg.trace else "lengths file"
        for name in ("prompt_len", "output_len"):
            if name in given:
                refuse(name, f"does nothing with a {source}: lengths come from the file (filter "
                             f"them with prompt_range/output_range)")


def load_config_file(path: str | Path) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) run config into checked field values."""
    p = Path(path)
    return check_fields(read_mapping_file(p, "config file"), f"config file {p}")


def parse_pairs(values, flag: str, split_commas: bool = True, error: type = ConfigError) -> dict:
    """``KEY=VALUE`` items (repeated, or comma-separated unless ``split_commas`` is False:
    values that are lists themselves) into a dict of strings; a key given twice is an error
    (which one should win?). Shared by the command line and the vLLM plug-in's environment
    (which reports with ``error=PolicyError``)."""
    out = {}
    for item in values or ():
        for part in (str(item).split(",") if split_commas else [str(item)]):
            if not part.strip():
                continue
            if "=" not in part:
                raise error(f"{flag}: expected KEY=VALUE, got {part.strip()!r}")
            k, v = part.split("=", 1)
            key = k.strip().replace("-", "_")
            if not key:
                raise error(f"{flag}: expected KEY=VALUE, got {part.strip()!r}")
            if key in out:
                raise error(f"{flag}: {key} given twice ({out[key]!r} and {v.strip()!r}); "
                            f"give it once")
            out[key] = v.strip()
    return out


MAX_CONFIG_BYTES = 1 << 20      # a hand-written config is a few KiB
MAX_CONFIG_DEPTH = 16           # the deepest field, a sweep axis of rate schedules, nests 6
MAX_CONFIG_VALUES = 100_000     # counted with repeats: YAML aliases that expand are refused


def read_mapping_file(p: Path, what: str, json_ok: bool = False) -> dict:
    """A YAML or TOML (or, with ``json_ok``, JSON) file whose top level is a mapping (``what``
    names it in errors). The file must be UTF-8 text of at most ``MAX_CONFIG_BYTES``; a key
    given twice in one mapping is refused, as is nesting deeper than ``MAX_CONFIG_DEPTH``."""
    from traces.files import read_text
    p = Path(p)
    kinds = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", **({".json": "json"} if json_ok
                                                                   else {})}
    text = read_text(p, ConfigError, what, MAX_CONFIG_BYTES)
    if p.suffix not in kinds:
        raise ConfigError(f"{what} {p}: use a {', '.join(kinds)} file")
    return parse_mapping_text(text, f"{what} {p}", kinds[p.suffix])


def parse_mapping_text(text: str, source: str, kind: str = "yaml") -> dict:
    """A mapping from YAML (which reads JSON too), TOML or JSON text, with the checks of
    ``read_mapping_file``; errors are one line starting with ``source``."""
    try:
        if kind == "toml":
            try:
                import tomllib
            except ModuleNotFoundError:   # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)     # refuses a key given twice itself
        elif kind == "json":
            import json
            raw = json.loads(text, object_pairs_hook=_unique_json_keys)
        else:
            import yaml
            raw = yaml.load(text, Loader=_unique_key_loader()) or {}
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply (more than {MAX_CONFIG_DEPTH} levels)")
    except Exception as e:
        raise ConfigError(f"{source}: cannot parse: {parse_error_line(e)}")
    _check_size(raw, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of field: value at the top level")
    return raw


def _unique_json_keys(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {key!r} given twice in one object")
    return out


@functools.cache
def _unique_key_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently). Keys merged in with ``<<`` may be overridden, as YAML defines."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:                 # an unhashable key: the base class says so
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _check_size(raw, source: str) -> None:
    """Refuse nesting deeper than MAX_CONFIG_DEPTH or more than MAX_CONFIG_VALUES values."""
    stack, count = [(raw, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: more than {MAX_CONFIG_VALUES:,} values (YAML aliases "
                              f"that expand?)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_error_line(e: Exception) -> str:
    """One line from a YAML, TOML or JSON parse error, with its line number."""
    from traces.files import cut
    mark = getattr(e, "problem_mark", None)          # yaml.MarkedYAMLError
    if mark is not None:
        return cut(f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}")
    text = str(e).strip()                            # tomllib: "... (at line 3, column 7)"
    return cut(text.splitlines()[0]) if text else type(e).__name__


def check_fields(raw: dict, source: str) -> dict:
    """A mapping of run fields (a config file's, a sweep's base or axis value) checked against
    the declarations: unknown keys and bad values fail in one line naming ``source``."""
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(FIELDS)}")
        if name in out:
            raise ConfigError(f"{source}: {name} given twice (as {key!r} and another spelling)")
        out[name] = FIELDS[name].coerce(value, f"{source}: {name}")
    return out


def build_config(file_values: dict | None = None, overrides: dict | None = None,
                 refuse_unused: bool = True) -> RunConfig:
    """Defaults, then the config file, then explicit flags (``None`` means not given). Every
    value is checked against its declaration; with ``refuse_unused`` a field given explicitly
    that the others make inert is refused (a sweep turns this off: there a base field may apply
    to some points only)."""
    values = dict(file_values or {})
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in FIELDS:
            raise ConfigError(f"unknown run field {k!r}; allowed: {', '.join(FIELDS)}")
        v = FIELDS[k].coerce(v)
        if isinstance(v, dict) and isinstance(values.get(k), dict):
            values[k] = {**values[k], **v}
        else:
            values[k] = v
    cfg = RunConfig(**values)
    if refuse_unused:
        for name, f in FIELDS.items():     # choices first: the rules below read them
            if f.info.choices:
                f.coerce(getattr(cfg, name))
        check_given(cfg, set(values))
    return cfg.validate()


def fields_markdown() -> str:
    """The table of run fields in docs/run-config.md, generated from the declarations (print it
    with ``python -m simulator.config``; a test keeps the doc in step)."""
    rows = ["| field | flag | accepts | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in FIELDS.values():
        flags = ", ".join(f"`{x}`" for x in f.flags) or "-"
        default = str(f.default).lower() if f.kind is bool else f.describe_default()
        rows.append(f"| `{f.name}` | {flags} | {f.describe_type()} | "
                    f"{f'`{default}`' if default is not None else '-'} | "
                    f"{f.info.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(fields_markdown(), end="")
