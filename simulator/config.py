"""The run configuration: every field of ``servesim run``, from flags or a YAML/TOML file.

A config file holds the same fields as the flags (underscores or dashes); flags given on the
command line override the file. Unknown keys and wrong types are rejected with one line naming
the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.errors import ConfigError

ARRIVALS = ("poisson", "gamma", "deterministic", "piecewise")
COST_MODELS = ("linear", "roofline", "profile")
ENGINES = ("native", "vllm")     # vllm: vLLM's real scheduler in the loop (the vllm extra)
PREEMPTIONS = ("recompute", "restart")


@dataclass
class RunConfig:
    # policy
    policy: str = "vllm-v1"
    policy_params: dict = field(default_factory=dict)
    engine: str = "native"
    # replica
    model: str = "llama-2-7b"
    gpu: str = "a100-80gb"
    cost_model: str = "roofline"
    cost_params: dict = field(default_factory=dict)
    kv_capacity: int | None = None          # tokens; default derived from GPU memory
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None        # default: the model's
    preemption: str = "recompute"           # vLLM's recompute, or "restart" (the paper's model)
    frontend_delay: float = 0.0             # seconds from a request's send to the engine
    # workload
    arrival: str = "poisson"
    rate: float = 2.5                       # requests/s (a moderate load for the default)
    cv: float = 1.0                         # gamma arrivals: coefficient of variation of gaps
    rate_schedule: list | None = None       # piecewise: [[duration_s, rate], ...]
    num_requests: int | None = None
    duration: float | None = None           # seconds of arrivals (instead of num_requests)
    prompt_len: str = "128:2048"            # fixed "512" or uniform "low:high"
    output_len: str = "16:512"
    types: list | None = None               # ["p512d20:8.4", ...]: the paper's multi-type model
    seed: int = 0
    # trace replay (README "Traces"); with a trace, num_requests keeps its first N requests
    trace: str | None = None                # trace file; its format is detected unless given
    trace_format: str | None = None         # --format
    trace_options: dict = field(default_factory=dict)   # format options, e.g. {model: GPT-4}
    trace_strict: bool = False              # --strict: unsorted or 0-token requests are errors
    trace_start: float | None = None        # time window [start, end) in trace seconds
    trace_end: float | None = None
    speedup: float | None = None            # rate scaling: compress time by this factor
    target_rate: float | None = None        # ... or scale to this mean rate (req/s)
    prompt_range: str | None = None         # keep prompts in LOW:HIGH tokens
    output_range: str | None = None         # keep outputs in LOW:HIGH tokens
    truncate: bool = False                  # fit requests into max_model_len (counted)
    generate_arrivals: bool = False         # trace lengths, arrivals from the arrival flags
    lengths_file: str | None = None         # sample (prompt, output) pairs from this file
    # outputs
    slo: dict = field(default_factory=dict)  # {"ttft_ms": 500, "tpot_ms": 50, "e2el_ms": ...}
    timeline: bool = True
    out: str | None = None

    DEFAULT_NUM_REQUESTS: typing.ClassVar[int] = 1000

    def validate(self) -> "RunConfig":
        _check_choice("arrival", self.arrival, ARRIVALS)
        _check_choice("cost_model", self.cost_model, COST_MODELS)
        _check_choice("engine", self.engine, ENGINES)
        _check_choice("preemption", self.preemption, PREEMPTIONS)
        if self.engine == "vllm" and self.preemption != "recompute":
            raise ConfigError("preemption restart needs engine native (vLLM always recomputes)")
        _check_positive("rate", self.rate)
        _check_positive("cv", self.cv)
        _check_positive("block_size", self.block_size)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got "
                              f"{self.gpu_memory_utilization!r}")
        if isinstance(self.frontend_delay, bool) or not isinstance(
                self.frontend_delay, (int, float)) or not math.isfinite(self.frontend_delay) \
                or self.frontend_delay < 0:
            raise ConfigError(f"frontend_delay must be a number of seconds >= 0, got "
                              f"{self.frontend_delay!r}")
        for name in ("kv_capacity", "max_model_len", "num_requests", "duration"):
            v = getattr(self, name)
            if v is not None:
                _check_positive(name, v)
        if self.num_requests is not None and self.duration is not None:
            raise ConfigError("give num_requests or duration, not both")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for key, v in self.slo.items():
            if key not in ("ttft_ms", "tpot_ms", "e2el_ms"):
                raise ConfigError(f"slo: unknown objective {key!r}; allowed: ttft_ms, tpot_ms, "
                                  f"e2el_ms")
            _check_positive(f"slo.{key}", v)
        if self.arrival == "piecewise" and not self.rate_schedule:
            raise ConfigError("arrival piecewise needs rate_schedule: [[duration_s, rate], ...]")
        self._validate_trace()
        return self

    def _validate_trace(self) -> None:
        from traces.transforms import parse_range
        for name in ("speedup", "target_rate", "trace_end"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if self.trace_start is not None and not (math.isfinite(self.trace_start)
                                                 and self.trace_start >= 0):
            raise ConfigError(f"trace_start must be >= 0 seconds, got {self.trace_start!r}")
        if self.trace_start is not None and self.trace_end is not None and \
                self.trace_end <= self.trace_start:
            raise ConfigError(f"trace_end ({self.trace_end}) must be after trace_start "
                              f"({self.trace_start})")
        if self.speedup is not None and self.target_rate is not None:
            raise ConfigError("give speedup or target_rate, not both")
        parse_range(self.prompt_range, "prompt_range")
        parse_range(self.output_range, "output_range")
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

    @property
    def requests_or_default(self) -> int | None:
        if self.num_requests is None and self.duration is None:
            return self.DEFAULT_NUM_REQUESTS
        return self.num_requests

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
# The fields that describe the workload (arrivals and lengths); the others describe the policy,
# the replica and the outputs. The vLLM plug-in builds a workload hint only from these.
WORKLOAD_FIELDS = ("arrival", "rate", "cv", "rate_schedule", "num_requests", "duration",
                   "prompt_len", "output_len", "types", "trace", "trace_format", "trace_options",
                   "trace_strict", "trace_start", "trace_end", "speedup", "target_rate",
                   "prompt_range", "output_range", "truncate", "generate_arrivals",
                   "lengths_file")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of: {', '.join(choices)}; got {value!r}")


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a value from a config file against the field's declared type."""
    tp = typing.get_type_hints(RunConfig)[name]
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {name} may not be empty")
    origin = typing.get_origin(base) or base
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, (str, int)) and not isinstance(v, bool),
        dict: lambda v: isinstance(v, dict),
        list: lambda v: isinstance(v, list),
    }[origin](value)
    if not ok:
        kind = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
                dict: "a table/mapping", list: "a list"}[origin]
        raise ConfigError(f"{source}: {name} must be {kind}, got {value!r}")
    if origin is float:
        return float(value)
    if origin is str:
        return str(value)
    return value


def load_config_file(path: str | Path) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) run config into checked field values."""
    p = Path(path)
    return check_fields(read_mapping_file(p, "config file"), f"config file {p}")


def parse_pairs(values, flag: str, split_commas: bool = True, error: type = ConfigError) -> dict:
    """``KEY=VALUE`` items (repeated, or comma-separated unless ``split_commas`` is False:
    values that are lists themselves) into a dict of strings. Shared by the command line and
    the vLLM plug-in's environment (which reports with ``error=PolicyError``)."""
    out = {}
    for item in values or ():
        for part in (str(item).split(",") if split_commas else [str(item)]):
            if not part.strip():
                continue
            if "=" not in part:
                raise error(f"{flag}: expected KEY=VALUE, got {part.strip()!r}")
            k, v = part.split("=", 1)
            out[k.strip().replace("-", "_")] = v.strip()
    return out


def read_mapping_file(p: Path, what: str, json_ok: bool = False) -> dict:
    """A YAML or TOML (or, with ``json_ok``, JSON) file whose top level is a mapping (``what``
    names it in errors)."""
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:   # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml
            raw = yaml.safe_load(text) or {}
        elif json_ok and p.suffix == ".json":
            import json
            raw = json.loads(text)
        else:
            kinds = ".yaml, .yml, .toml" + (" or .json" if json_ok else "")
            raise ConfigError(f"{what} {p}: use a {kinds} file")
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{what} {p}: cannot parse: {parse_error_line(e)}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {p}: expected a mapping of field: value at the top level")
    return raw


def parse_error_line(e: Exception) -> str:
    """One line from a YAML or TOML parse error, with its line number."""
    mark = getattr(e, "problem_mark", None)          # yaml.MarkedYAMLError
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}"
    text = str(e).strip()                            # tomllib: "... (at line 3, column 7)"
    return text.splitlines()[0] if text else type(e).__name__


def check_fields(raw: dict, source: str) -> dict:
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(FIELDS)}")
        out[name] = _coerce(name, value, source)
    return out


def build_config(file_values: dict | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the config file, then explicit flags (``None`` means not given)."""
    values = dict(file_values or {})
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(values.get(k), dict):
            values[k] = {**values[k], **v}
        else:
            values[k] = v
    return RunConfig(**values).validate()
