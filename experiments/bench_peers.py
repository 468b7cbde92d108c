"""Side by side: servesim and peer simulators on the same workloads, CPU time of whole processes.

    python experiments/bench_peers.py                        # W1-W3, 5 repetitions, every peer
    python experiments/bench_peers.py --reps 3 --only W1 --only W2
    python experiments/bench_peers.py --peers-dir /work/peers --out experiments/results/peers.md

Each run is one whole process, as a user runs it: ``python -m simulator run ... -o DIR`` for
servesim (workload generation, the simulation with its timeline, the output files), and each
peer's own entry point (or our driver in experiments/peers/ where it has none without plotting)
writing its outputs. Runs are interleaved (every tool once per workload, then the next
repetition), and each is timed by the CPU time its process tree used (``getrusage``
RUSAGE_CHILDREN before and after), which a loaded machine inflates less than wall time. The
table gives the median over repetitions and the ratio peer / servesim (above 1: servesim is
faster). Every tool replays the very same requests (experiments/peers/workloads.py).

The peers live outside the repository, one folder and virtual environment each under
``--peers-dir`` (docs/benchmarks.md, "Side by side with peer simulators", says how to fetch and
install them); a peer that is missing is reported in one line and skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.peers.workloads import (  # noqa: E402
    AZURE_CONV, WORKLOADS, requests_of, servesim_flags, workload_fields, write_inputs)

PEERS = ROOT / "experiments" / "peers"
RESULTS = ROOT / "experiments" / "results" / "peers.md"
SERVESIM = "servesim"


@dataclass(frozen=True)
class Run:
    """One workload as a tool is given it: servesim's run fields, the peers' input files."""
    name: str
    fields: dict
    inputs: dict[str, Path]
    requests: int


@dataclass(frozen=True)
class Tool:
    """A simulator under test: how to start it on a workload, writing its outputs to ``out``."""
    name: str
    setting: str                       # what it simulates, and how that differs from servesim
    folder: str | None                 # under --peers-dir (None: servesim, this checkout)
    needs: tuple[str, ...]             # files under the folder that must exist
    command: Callable[["Tool", Path, Run, Path], list[str]]

    def home(self, peers_dir: Path) -> Path:
        return ROOT if self.folder is None else peers_dir / self.folder

    def python(self, peers_dir: Path) -> str:
        return sys.executable if self.folder is None else str(
            self.home(peers_dir) / ".venv" / "bin" / "python")

    def missing(self, peers_dir: Path) -> str | None:
        """Why this tool cannot run here (None: it can)."""
        if self.folder is None:
            return None
        for rel in (".venv/bin/python",) + self.needs:
            if not (self.home(peers_dir) / rel).exists():
                return f"no {self.home(peers_dir) / rel}"
        return None

    def env(self, peers_dir: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = str(self.home(peers_dir))
        env["WANDB_MODE"] = "disabled"         # Vidur: no Weights & Biases, no network
        return env


def servesim_command(tool: Tool, peers_dir: Path, run: Run, out: Path) -> list[str]:
    return [tool.python(peers_dir), "-m", "simulator", "run", *servesim_flags(run.fields),
            "-o", str(out)]


def vllm_simulation_command(tool: Tool, peers_dir: Path, run: Run, out: Path) -> list[str]:
    return [tool.python(peers_dir), str(PEERS / "vllm_simulation_driver.py"),
            "--peer-dir", str(tool.home(peers_dir)), "--requests", str(run.inputs["csv"]),
            "--out", str(out)]


def distserve_command(tool: Tool, peers_dir: Path, run: Run, out: Path) -> list[str]:
    return [tool.python(peers_dir), "-m", "simdistserve.benchmarks.simulate_dist",
            "--backend", "vllm", "--model", "facebook/opt-13b", "--arrival", "custom",
            "--workload", str(run.inputs["distserve"]), "--N", str(run.requests),
            "--output-request-latency", str(out / "request_latency.csv"),
            "--output-worker", str(out / "worker.csv")]


# Vidur's random-forest predictors, trained once (the warm-up run) into its cache, which the
# timed runs read: one point of its default grid (250-750 trees, depth 8-32, split 2-10, with
# 10-fold cross-validation: 2 of its 14 models took 10 minutes on a shared 2-core machine) and
# 2 folds, so the first run trains in about a minute.
VIDUR_FOREST = ["--random_forrest_execution_time_predictor_config_num_estimators", "250",
                "--random_forrest_execution_time_predictor_config_max_depth", "16",
                "--random_forrest_execution_time_predictor_config_min_samples_split", "2",
                "--random_forrest_execution_time_predictor_config_k_fold_cv_splits", "2"]


def vidur_command(tool: Tool, peers_dir: Path, run: Run, out: Path) -> list[str]:
    return [tool.python(peers_dir), "-m", "vidur.main",
            "--replica_config_model_name", "meta-llama/Llama-2-7b-hf",
            "--replica_config_device", "a100", "--replica_config_network_device", "a100_dgx",
            "--replica_scheduler_config_type", "vllm",
            "--request_generator_config_type", "trace_replay",
            "--trace_request_generator_config_trace_file", str(run.inputs["vidur"]),
            "--no-metrics_config_store_plots", "--no-metrics_config_enable_chrome_trace",
            "--metrics_config_output_dir", str(out),
            "--metrics_config_cache_dir", str(tool.home(peers_dir) / "cache"),
            *VIDUR_FOREST]


VIDUR_ATTENTION = "data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/attention.csv"
TOOLS: list[Tool] = [
    Tool(SERVESIM, "vllm-v1 policy, llama-2-7b / A100-80GB, roofline cost, prefill and decode",
         None, (), servesim_command),
    Tool("vllm_simulation", "Luoxiaogan/vllm_simulation: decode only (no prefill), "
         "d0 + d1 * KV tokens with the fluid paper's llama-2-7b / A100 fit, sacrifice + "
         "aggressive preemption; our driver without plotting",
         "vllm_simulation", ("simulation/vllm_simulator.py",), vllm_simulation_command),
    Tool("distserve", "LLMServe/DistServe simdistserve: vLLM backend (colocated, one GPU), "
         "OPT-13B on A100-80GB (its only profiled models), its fitted latency model",
         "distserve", ("simdistserve/benchmarks/simulate_dist.py",), distserve_command),
    Tool("vidur", "microsoft/vidur: vLLM scheduler, llama-2-7b / A100, sklearn predictors on "
         "its measured MLP profile and an analytic attention profile "
         "(experiments/peers/vidur_attention_profile.py), random forests of 250 trees (depth 16) "
         "read from its cache; plots and Chrome trace off",
         "vidur", ("vidur/main.py", VIDUR_ATTENTION), vidur_command),
]


@dataclass
class Samples:
    cpu_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    error: str | None = None


def timed(argv: list[str], cwd: Path, env: dict,
          timeout_s: float) -> tuple[float, float, str | None]:
    """(CPU s, wall s, error) of one whole process: the CPU its tree used (children waited
    for), from getrusage before and after."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc = None
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc is None:
        return cpu, wall, f"stopped after the --timeout of {timeout_s:g} s"
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        return cpu, wall, f"exit {proc.returncode}: {tail[0][:200]}"
    return cpu, wall, None


def run_once(tool: Tool, peers_dir: Path, run: Run, scratch: Path,
             timeout_s: float) -> tuple[float, float, str | None]:
    out = Path(tempfile.mkdtemp(prefix=f"{tool.name}-{run.name}-", dir=scratch))
    out.rmdir()                           # servesim wants a folder it creates (or an empty one)
    if tool.folder is not None:
        out.mkdir()
    try:
        return timed(tool.command(tool, peers_dir, run, out), tool.home(peers_dir),
                     tool.env(peers_dir), timeout_s)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def prepare(names: list[str], num_requests: int | None, azure_trace: Path,
            scratch: Path) -> list[Run]:
    """Every workload's requests, written once in each peer's format (not timed)."""
    runs = []
    for name in names:
        fields = workload_fields(name, num_requests, azure_trace)
        requests = requests_of(fields)
        runs.append(Run(name, fields, write_inputs(requests, scratch / "inputs" / name),
                        len(requests)))
    return runs


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
            f"average {load:.1f} at start, Python {platform.python_version()}")


def table(runs: list[Run], tools: list[Tool], samples: dict, reps: int, long_run_s: float,
          header: str) -> str:
    """Markdown: per workload, each tool's median CPU s (ratio to servesim's)."""
    lines = [header, "", "| workload | requests | "
             + " | ".join(f"{t.name} CPU s" for t in tools) + " |",
             "|---|---:|" + "---:|" * len(tools)]
    for run in runs:
        base = samples[SERVESIM, run.name]
        base_cpu = statistics.median(base.cpu_s) if base.cpu_s and not base.error else None
        cells = []
        for tool in tools:
            s = samples[tool.name, run.name]
            if s.error or not s.cpu_s:
                cells.append("failed" if s.error else "-")
                continue
            cpu = statistics.median(s.cpu_s)
            ratio = f" ({cpu / base_cpu:.1f}x)" if base_cpu and tool.name != SERVESIM else ""
            runs_note = f", {len(s.cpu_s)} run{'s' * (len(s.cpu_s) > 1)}" \
                if len(s.cpu_s) < reps else ""
            cells.append(f"{cpu:.2f}{ratio}{runs_note}")
        lines.append(f"| {run.name} | {run.requests:,} | " + " | ".join(cells) + " |")
    lines += ["", f"Median CPU seconds of the whole process over {reps} interleaved runs (a "
              f"run of more than {long_run_s:g} CPU s is not repeated: its count is given); in "
              "brackets the ratio tool / servesim (above 1: servesim is faster). Median wall "
              "seconds: " + "; ".join(
                  f"{run.name} " + ", ".join(
                      f"{t.name} {statistics.median(samples[t.name, run.name].wall_s):.2f}"
                      for t in tools if samples[t.name, run.name].wall_s)
                  for run in runs) + ".", "", "What each tool simulates:", ""]
    lines += [f"- {t.name}: {t.setting}" for t in tools]
    errors = [f"- {t} on {w}: {s.error}" for (t, w), s in samples.items() if s.error]
    return "\n".join(lines + (["", "Failures:", ""] + errors if errors else [])) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers-dir", type=Path, default=Path("/work/peers"),
                    help="folder with one extracted peer (and its .venv) per subfolder")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per tool and workload")
    ap.add_argument("--only", action="append", choices=list(WORKLOADS),
                    help="run only this workload (repeatable)")
    ap.add_argument("--tool", action="append", choices=[t.name for t in TOOLS],
                    help="run only this tool (repeatable; servesim always runs)")
    ap.add_argument("--num-requests", type=int,
                    help="override every workload's size (a smoke test)")
    ap.add_argument("--azure-trace", type=Path, default=AZURE_CONV,
                    help="the Azure conversation trace (W3)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed first run of each tool (Vidur trains its "
                         "predictors then, into its cache)")
    ap.add_argument("--long-run-s", type=float, default=120.0,
                    help="a run that took more CPU seconds than this is not repeated (its "
                         "one measurement stands; long runs vary little)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds a run may take before it is stopped and reported")
    ap.add_argument("--out", type=Path, default=RESULTS, help="Markdown table to write")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be at least 1, got {args.reps}")
    if args.long_run_s <= 0:
        ap.error(f"--long-run-s must be positive, got {args.long_run_s:g}")
    if args.timeout <= 0:
        ap.error(f"--timeout must be positive, got {args.timeout:g}")
    names = args.only or list(WORKLOADS)
    if "W3" in names and not args.azure_trace.is_file():
        ap.error(f"--azure-trace: {args.azure_trace} not found (needed by W3)")

    tools = []
    for tool in TOOLS:
        if tool.name != SERVESIM and args.tool and tool.name not in args.tool:
            continue
        why = tool.missing(args.peers_dir)
        if why:
            print(f"peer {tool.name} missing ({why}): skipped; docs/benchmarks.md says how to "
                  f"install it", flush=True)
        else:
            tools.append(tool)
    started, host = dt.datetime.now(dt.timezone.utc), machine()
    print(f"machine: {host}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        scratch = Path(tmp)
        runs = prepare(names, args.num_requests, args.azure_trace, scratch)
        samples = {(t.name, r.name): Samples() for t in tools for r in runs}
        if not args.no_warmup:
            for tool in tools:
                cpu, wall, error = run_once(tool, args.peers_dir, runs[0], scratch,
                                             args.timeout)
                print(f"warm-up {tool.name:<16} {runs[0].name} cpu {cpu:7.2f} s  wall "
                      f"{wall:7.2f} s{'  ' + error if error else ''}", flush=True)
        header = f"Measured {started:%Y-%m-%d %H:%M} UTC on {host}; commit {git_commit()}."
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for rep in range(args.reps):
            for run in runs:
                for tool in tools:
                    s = samples[tool.name, run.name]
                    if s.error or (s.cpu_s and s.cpu_s[0] > args.long_run_s):
                        continue
                    cpu, wall, s.error = run_once(tool, args.peers_dir, run, scratch,
                                                  args.timeout)
                    if not s.error:
                        s.cpu_s.append(cpu)
                        s.wall_s.append(wall)
                    print(f"rep {rep + 1} {run.name} {tool.name:<16} cpu {cpu:7.2f} s  wall "
                          f"{wall:7.2f} s{'  ' + s.error if s.error else ''}", flush=True)
            # Written after every repetition, so a run cut short leaves its table so far.
            text = table(runs, tools, samples, rep + 1, args.long_run_s, header)
            args.out.write_text(text)
    print("\n" + text, end="")
    print(f"wrote {args.out}")
    return 0


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
