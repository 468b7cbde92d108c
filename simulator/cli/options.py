"""The run flags, shared by every command that takes a run configuration (run, fluid, capacity...)."""

from __future__ import annotations

import click

from simulator.config import (ARRIVALS, COST_MODELS, ENGINES, PREEMPTIONS, build_config,
                              load_config_file, parse_pairs)
from simulator.errors import ConfigError


def parse_slo(values) -> dict:
    aliases = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2el_ms", "e2e": "e2el_ms"}
    out = {}
    for k, v in parse_pairs(values, "--slo").items():
        key = aliases.get(k, k)
        if key not in aliases.values():
            raise ConfigError(f"--slo: unknown objective {k!r}; use ttft, tpot or e2el (ms)")
        try:
            out[key] = float(v)
        except ValueError:
            raise ConfigError(f"--slo: {k} must be a number of milliseconds, got {v!r}")
    return out


def parse_schedule(text: str | None):
    """``30:5,60:0,30:12`` -> [[30, 5], [60, 0], [30, 12]] (duration_s:rate segments)."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        try:
            d, r = part.split(":")
            out.append([float(d), float(r)])
        except ValueError:
            raise ConfigError(f"--rate-schedule: expected DURATION:RATE[,...], got {part!r}")
    return out


_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False),
                 help="YAML or TOML file with run fields; flags override it."),
    click.option("--policy", help="Batching policy (see `servesim policies`). [vllm-v1]"),
    click.option("-p", "--policy-param", "policy_param", multiple=True, metavar="KEY=VALUE",
                 help="Policy parameter, repeatable (see `servesim policies NAME`)."),
    click.option("--engine", type=click.Choice(ENGINES),
                 help="Replica engine: servesim's own, or vLLM's real scheduler in the loop "
                      "(needs the vllm extra). [native]"),
    click.option("--model", help="Model preset (see `servesim presets`). [llama-2-7b]"),
    click.option("--gpu", help="GPU preset. [a100-80gb]"),
    click.option("--cost-model", type=click.Choice(COST_MODELS), help="Iteration-time model. [roofline]"),
    click.option("--cost-param", multiple=True, metavar="KEY=VALUE",
                 help="Cost-model parameter, e.g. d0=0.02 d1=4e-7 for linear."),
    click.option("--kv-capacity", type=int, help="KV cache capacity in tokens (default: from GPU memory)."),
    click.option("--block-size", type=int, help="KV block size in tokens. [16]"),
    click.option("--gpu-memory-utilization", type=float, help="Fraction of GPU memory used. [0.9]"),
    click.option("--max-model-len", type=int, help="Longest prompt + output accepted (default: model's)."),
    click.option("--preemption", type=click.Choice(PREEMPTIONS),
                 help="A preempted request keeps its output and recomputes (vLLM), or restarts "
                      "from its prompt (the fluid paper's model). [recompute]"),
    click.option("--frontend-delay", type=float,
                 help="Seconds from a request's send to its arrival in the engine (a live "
                      "server's HTTP front end; servesim profile's sim_vs_real measures it); "
                      "latencies count from the send. [0]"),
    click.option("--arrival", type=click.Choice(ARRIVALS), help="Arrival process. [poisson]"),
    click.option("--rate", type=float, help="Mean arrival rate, requests/s. [2.5]"),
    click.option("--cv", type=float, help="Gamma arrivals: coefficient of variation of gaps. [1]"),
    click.option("--rate-schedule", help="Piecewise arrivals: DURATION:RATE,... repeating."),
    click.option("--num-requests", "-n", type=int, help="Number of requests. [1000]"),
    click.option("--duration", type=float, help="Seconds of arrivals (instead of -n)."),
    click.option("--prompt-len", help="Prompt tokens: 512 or a uniform range 128:2048. [128:2048]"),
    click.option("--output-len", help="Output tokens: 20 or a range 16:512. [16:512]"),
    click.option("--type", "types", multiple=True, metavar="p512d20:RATE",
                 help="A request type of the paper's model (prompt, output, rate); repeatable."),
    click.option("--seed", type=int, help="Seed for every random choice. [0]"),
    click.option("--slo", multiple=True, metavar="ttft=MS,tpot=MS,e2el=MS",
                 help="Service-level objectives for goodput and attainment."),
    # trace replay (README "Traces")
    click.option("--trace", type=click.Path(dir_okay=False),
                 help="Replay this trace file (CSV/JSONL/Parquet, gzip ok); -n keeps its first N."),
    click.option("--format", "trace_format", metavar="NAME",
                 help="Trace format instead of detection (see `servesim trace formats`)."),
    click.option("-T", "--trace-option", "trace_option", multiple=True, metavar="KEY=VALUE",
                 help="Format option, repeatable, e.g. -T model=GPT-4, -T jitter=3, -T prompt=COL."),
    click.option("--strict", "trace_strict", is_flag=True,
                 help="Reject unsorted timestamps and 0-token requests instead of fixing them."),
    click.option("--trace-start", type=float, help="Time window start, trace seconds."),
    click.option("--trace-end", type=float, help="Time window end, trace seconds."),
    click.option("--speedup", type=float, help="Replay the trace this many times faster."),
    click.option("--target-rate", type=float, help="Scale the trace to this mean rate (req/s)."),
    click.option("--prompt-range", metavar="LOW:HIGH", help="Keep requests with prompts in range."),
    click.option("--output-range", metavar="LOW:HIGH", help="Keep requests with outputs in range."),
    click.option("--truncate", is_flag=True,
                 help="Cut requests to max_model_len (prompt first; counted in the summary)."),
    click.option("--generate-arrivals", is_flag=True,
                 help="Keep the trace's lengths; arrivals from --arrival/--rate."),
    click.option("--lengths-from", "lengths_file", type=click.Path(dir_okay=False),
                 help="Draw (prompt, output) pairs from this file (e.g. a Vidur length file)."),
]


def run_options(f):
    """Decorate a click command with every run flag."""
    for opt in reversed(_OPTIONS):
        f = opt(f)
    return f


# Flags that describe the simulated replica and its policy rather than the workload.
REPLICA_FLAGS = ("policy", "policy_param", "engine", "model", "gpu", "cost_model", "cost_param",
                 "kv_capacity", "block_size", "gpu_memory_utilization", "max_model_len",
                 "preemption", "frontend_delay")


def workload_options(f, keep: tuple[str, ...] = ()):
    """Decorate a click command with the run flags that describe the workload (config file,
    arrivals, lengths, seed, SLOs...), and those of REPLICA_FLAGS named in ``keep``, for
    commands that drive a real server."""
    for opt in reversed(_OPTIONS):
        name = opt(lambda: None).__click_params__[-1].name
        if name not in REPLICA_FLAGS or name in keep:
            f = opt(f)
    return f


def config_from_options(opts: dict, extra: dict | None = None):
    """Build a validated RunConfig from the run flags (and an optional config file) in a
    command's ``opts``; its own options are not run flags and are ignored."""
    file_values, overrides = option_fields(opts)
    overrides.update(extra or {})
    return build_config(file_values, overrides)


def option_fields(opts: dict) -> tuple[dict, dict]:
    """(the config file's values, the run fields the flags give) of the run flags in ``opts``
    (flags not given are left out)."""
    file_values = load_config_file(opts["config_file"]) if opts.get("config_file") else {}
    overrides = {
        "policy": opts.get("policy"),
        "policy_params": parse_pairs(opts.get("policy_param"), "--policy-param") or None,
        "engine": opts.get("engine"),
        "model": opts.get("model"),
        "gpu": opts.get("gpu"),
        "cost_model": opts.get("cost_model"),
        "cost_params": parse_pairs(opts.get("cost_param"), "--cost-param") or None,
        "kv_capacity": opts.get("kv_capacity"),
        "block_size": opts.get("block_size"),
        "gpu_memory_utilization": opts.get("gpu_memory_utilization"),
        "max_model_len": opts.get("max_model_len"),
        "preemption": opts.get("preemption"),
        "frontend_delay": opts.get("frontend_delay"),
        "arrival": opts.get("arrival"),
        "rate": opts.get("rate"),
        "cv": opts.get("cv"),
        "rate_schedule": parse_schedule(opts.get("rate_schedule")),
        "num_requests": opts.get("num_requests"),
        "duration": opts.get("duration"),
        "prompt_len": opts.get("prompt_len"),
        "output_len": opts.get("output_len"),
        "types": list(opts["types"]) if opts.get("types") else None,
        "seed": opts.get("seed"),
        "slo": parse_slo(opts.get("slo")) or None,
        "trace": opts.get("trace"),
        "trace_format": opts.get("trace_format"),
        "trace_options": parse_pairs(opts.get("trace_option"), "--trace-option",
                                     split_commas=False) or None,
        "trace_strict": opts.get("trace_strict") or None,
        "trace_start": opts.get("trace_start"),
        "trace_end": opts.get("trace_end"),
        "speedup": opts.get("speedup"),
        "target_rate": opts.get("target_rate"),
        "prompt_range": opts.get("prompt_range"),
        "output_range": opts.get("output_range"),
        "truncate": opts.get("truncate") or None,
        "generate_arrivals": opts.get("generate_arrivals") or None,
        "lengths_file": opts.get("lengths_file"),
    }
    if overrides["duration"] is not None and "num_requests" in file_values:
        file_values.pop("num_requests")
    if overrides["num_requests"] is not None and "duration" in file_values:
        file_values.pop("duration")
    return file_values, {k: v for k, v in overrides.items() if v is not None}
