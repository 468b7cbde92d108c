"""The side-by-side workloads, as servesim runs them and as files the peer simulators read.

Each workload is declared once, as ``RunConfig`` fields: servesim's command line is derived from
them (``servesim_flags``), and the requests every peer replays are servesim's own workload for
that config (``simulator.runner.build_workload``: the same seed-0 Poisson arrivals, or the
Azure trace's own arrival times with prompts cut to llama-2-7b's 4,096-token context), written in
each peer's input format. So every tool serves the very same requests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from simulator.config import RunConfig
from simulator.runner import build_workload

ROOT = Path(__file__).resolve().parents[2]
AZURE_CONV = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"

# W1/W2: p512d20 at 22 req/s, seed 0; W3: the Azure conversation trace (19,366 requests, its own
# arrival times), truncated to the model's context as servesim's --truncate does.
P512D20 = dict(rate=22.0, prompt_len="512", output_len="20", seed=0)
WORKLOADS: dict[str, dict] = {
    "W1": dict(P512D20, num_requests=2_000),
    "W2": dict(P512D20, num_requests=10_000),
    "W3": dict(trace=str(AZURE_CONV), truncate=True, seed=0),
}


def workload_fields(name: str, num_requests: int | None = None,
                    azure_trace: Path | None = None) -> dict:
    """The run fields of workload ``name``; ``num_requests`` overrides its size (a smoke test),
    ``azure_trace`` the Azure trace's path (a checkout whose ../shared is elsewhere)."""
    fields = dict(WORKLOADS[name])
    if num_requests is not None:
        fields["num_requests"] = num_requests
    if azure_trace is not None and "trace" in fields:
        fields["trace"] = str(azure_trace)
    return fields


def servesim_flags(fields: dict) -> list[str]:
    """``servesim run`` flags for these run fields (a True field is a bare flag)."""
    flags = []
    for key, value in fields.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def requests_of(fields: dict) -> list[tuple[float, int, int]]:
    """(arrival s, prompt tokens, output tokens) of every request servesim serves for ``fields``."""
    f = build_workload(RunConfig(**fields).validate()).frame
    columns = (f["arrival_s"].astype(float), f["prompt_tokens"].astype(int),
               f["output_tokens"].astype(int))
    return list(zip(*(c.tolist() for c in columns)))   # Python numbers: repr() writes them plainly


def write_inputs(requests: list[tuple[float, int, int]], folder: Path) -> dict[str, Path]:
    """The requests in each peer's input format, in ``folder``; returns the paths by format:
    ``csv`` (arrival_s, prompt_tokens, output_tokens: our vllm_simulation driver), ``distserve``
    (simdistserve's custom workload JSON: start_time s, prompt_len, output_len) and ``vidur``
    (Vidur's trace-replay CSV: arrived_at s, num_prefill_tokens, num_decode_tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / "requests.csv", "distserve": folder / "distserve.json",
             "vidur": folder / "vidur_trace.csv"}
    _write_csv(paths["csv"], ("arrival_s", "prompt_tokens", "output_tokens"), requests)
    _write_csv(paths["vidur"], ("arrived_at", "num_prefill_tokens", "num_decode_tokens"), requests)
    paths["distserve"].write_text(json.dumps(
        [{"start_time": t, "prompt_len": p, "output_len": o} for t, p, o in requests]))
    return paths


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows((repr(t), p, o) for t, p, o in rows)
