"""The workload of a run that replays a trace or samples lengths from a file: the run
configuration's trace fields applied, in a fixed order, to the loaded trace.

Order: load (format filters, jitter) -> time window -> length filters -> first N -> arrivals
(the trace's, rate-scaled; or generated for the trace's lengths) -> lengths from another file
-> truncation to the model's maximum length. Windows are in the trace's own seconds; N counts
the requests that passed the filters; the rate is scaled on the requests actually replayed;
truncation sees the final lengths.
"""

from __future__ import annotations

from simulator.config import RunConfig
from simulator.errors import ConfigError
from traces import transforms
from traces.arrivals import ArrivalProcess
from traces.loaders import load_lengths, read_trace
from traces.workload import Workload


def trace_workload(cfg: RunConfig, arrival: ArrivalProcess) -> Workload:
    """The trace in ``cfg.trace`` transformed as ``cfg`` says (before truncation).

    ``arrival`` generates the arrivals of a file without arrival times (or with
    generate_arrivals); for such a file the caller builds it at target_rate when one is given,
    the replayed workload's mean rate being what target_rate means for every trace."""
    w = read_trace(cfg.trace, cfg.trace_format, cfg.trace_options, strict=cfg.trace_strict,
                   seed=cfg.seed)
    if cfg.trace_start is not None or cfg.trace_end is not None:
        w = transforms.time_window(w, cfg.trace_start, cfg.trace_end)
    w = length_filters(w, cfg)
    if cfg.num_requests is not None:
        w = transforms.first_n(w, cfg.num_requests)
    if cfg.generate_arrivals or w.meta["arrival"] == "none":
        if cfg.speedup is not None:   # (with generate_arrivals the config already refused it)
            raise ConfigError(f"speedup: {cfg.trace} has no arrival times (lengths only), so "
                              f"there is nothing to speed up; give the rate with --rate or "
                              f"--target-rate")
        w = transforms.generate_arrivals(w, arrival, cfg.seed)
    elif cfg.speedup is not None or cfg.target_rate is not None:
        w = transforms.scale_rate(w, cfg.speedup, cfg.target_rate)
    if cfg.lengths_file:
        w = transforms.sample_lengths(w, load_lengths(cfg.lengths_file), cfg.seed)
    return w


def lengths_from_file(cfg: RunConfig):
    """The empirical (prompt, output) distribution of ``cfg.lengths_file`` (no trace given)."""
    return load_lengths(cfg.lengths_file, cfg.trace_format, cfg.trace_options)


def length_filters(w: Workload, cfg: RunConfig) -> Workload:
    prompt = transforms.parse_range(cfg.prompt_range, "prompt_range")
    output = transforms.parse_range(cfg.output_range, "output_range")
    if prompt is None and output is None:
        return w
    return transforms.filter_lengths(w, prompt, output)
