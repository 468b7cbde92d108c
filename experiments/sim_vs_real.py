"""Simulated vs real: one workload through ``servesim run`` (the cost fitted by ``servesim
profile``) and through ``servesim bench`` on a live vLLM server with the same policy.

    python experiments/sim_vs_real.py --profile PROFILE_DIR --model-dir MODEL_DIR --out DIR

The server is vLLM's OpenAI server started from Python (``python -m
vllm.entrypoints.openai.api_server``) with servesim's plug-in and the engine-side step timer
(``--scheduler-cls simulator.vllm.steps.TimedScheduler``, policy vllm-v1, synchronous
scheduling), so each request is seen twice: by the client (send, each streamed token, end) and
by the engine (``SERVESIM_STEP_LOG``: arrival in the engine core, first token, finish; and
every step's shape and model time). From the two:

- the front-end delay of each request: client TTFT minus engine TTFT (engine arrival to first
  token), i.e. HTTP, tokenisation and the trip between the API process and the engine core on
  the way in, plus detokenisation and streaming of the first token on the way out;
- the fitted cost on the live server's own steps (the shapes the real scheduler ran);
- the per-metric table: client-side medians vs the simulation, and vs the simulation with the
  measured median front-end delay as its ``--frontend-delay`` (requests reach the simulated
  engine that much later; latencies count from the send).

Requests are matched client to engine in send order with their prompt lengths checked, so the
loads here stay low enough that requests reach the engine in the order they were sent.
``--markdown`` prints the table as the block docs/calibration.md carries.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulator.cost.linear import LinearCost  # noqa: E402
from simulator.hardware import ModelSpec  # noqa: E402
from simulator.vllm.steps import StepRecord, read_step_log  # noqa: E402

PY = sys.executable
print = functools.partial(print, flush=True)     # progress shows when piped to a file
METRICS = [("median TTFT (ms)", "median_ttft_ms"), ("median TPOT (ms)", "median_tpot_ms"),
           ("median ITL (ms)", "median_itl_ms"), ("median e2e latency (ms)", "median_e2el_ms"),
           ("request throughput (req/s)", "request_throughput"),
           ("output throughput (tok/s)", "output_throughput")]


def servesim(*args, env=None, log=None) -> None:
    cmd = [PY, "-m", "simulator", *map(str, args)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if log is not None:
        log.write_text(proc.stdout)
    if proc.returncode:
        sys.exit(f"sim_vs_real: {' '.join(cmd[2:5])} ... failed (exit {proc.returncode}):\n"
                 + "\n".join(proc.stdout.splitlines()[-15:]))


class Server:
    """vLLM's OpenAI server with the timed plug-in, stopped (with its engine core) on exit."""

    def __init__(self, model_dir: Path, port: int, step_log: Path, log: Path, engine: dict):
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "SERVESIM_POLICY": "vllm-v1", "SERVESIM_STEP_LOG": str(step_log),
               "VLLM_CPU_KVCACHE_SPACE": str(engine["kv_cache_gib"])}
        argv = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--served-model-name", "tiny", "--port", str(port), "--host", "127.0.0.1",
                "--enforce-eager", "--no-async-scheduling",
                "--scheduler-cls", "simulator.vllm.steps.TimedScheduler",
                "--max-model-len", str(engine["max_model_len"]),
                "--max-num-seqs", str(engine["max_num_seqs"]),
                "--max-num-batched-tokens", str(engine["max_num_batched_tokens"]),
                "--block-size", str(engine["block_size"]), "--dtype", engine["dtype"],
                "--disable-log-stats"]
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"the server exited (status {self.proc.returncode})")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        self.fail(f"the server was not ready after {timeout_s:.0f} s")

    def fail(self, why: str):
        self.stop()
        tail = "\n".join(self.log.read_text().splitlines()[-15:])
        sys.exit(f"sim_vs_real: {why}; last lines of {self.log}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)      # the API server and its engine core
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def front_end_delays(records: list[dict], events: dict) -> dict:
    """Per-request client TTFT - engine TTFT and client e2e - engine e2e (seconds), matching
    the k-th request sent with the k-th engine arrival (prompt lengths checked)."""
    sent = sorted((r for r in records if r["error"] is None), key=lambda r: r["sent_s"])
    arrivals = sorted(events["arrival"], key=lambda e: e["engine_time"])
    first = {e["request_id"]: e["engine_time"] for e in events["first_token"]}
    finish = {e["request_id"]: e["engine_time"] for e in events["finish"]}
    if len(arrivals) != len(sent):
        sys.exit(f"sim_vs_real: {len(sent)} requests completed at the client but the engine saw "
                 f"{len(arrivals)}: cannot match them")
    ttft, e2e, into_engine = [], [], []
    for rec, ev in zip(sent, arrivals):
        if rec["prompt_tokens"] != ev["prompt_tokens"]:
            sys.exit("sim_vs_real: client and engine requests do not match in send order "
                     "(load too high for order matching)")
        rid = ev["request_id"]
        ttft.append((rec["token_times"][0] - rec["sent_s"]) - (first[rid] - ev["engine_time"]))
        e2e.append((rec["done_s"] - rec["sent_s"]) - (finish[rid] - ev["engine_time"]))
        into_engine.append(ev["engine_time"] - ev["arrival_time"])
    return {"ttft_s": ttft, "e2e_s": e2e, "api_to_engine_s": into_engine}


def step_errors(steps: list[dict], cost) -> dict:
    """The fitted cost on the live server's steps: median |error|, and the steps' count,
    median, total (engine busy time) and mean decode batch."""
    errs, times, batch = [], [], []
    for s in steps:
        rec = StepRecord(**s)
        pred = cost.iteration_time(rec.shape())
        errs.append(abs(pred - rec.step_s) / rec.step_s)
        times.append(rec.step_s)
        batch.append(len(rec.decode_kv))
    return {"steps": len(steps), "median_abs_error": statistics.median(errs),
            "median_step_ms": statistics.median(times) * 1e3, "busy_s": sum(times),
            "mean_decode_batch": statistics.fmean(batch)}


def sim_steps(timeline_csv: Path) -> dict:
    """The same figures for the simulated iterations (its timeline)."""
    import csv
    with open(timeline_csv) as f:
        rows = list(csv.DictReader(f))
    times = [float(r["duration_s"]) for r in rows]
    return {"steps": len(rows), "median_step_ms": statistics.median(times) * 1e3,
            "busy_s": sum(times),
            "mean_decode_batch": statistics.fmean(float(r["decode_requests"]) for r in rows)}


def metric(summary: dict, key: str):
    value = summary.get(key)
    if key == "median_itl_ms" and value is None:     # the simulator's ITL: its TPOT steps
        value = summary.get("median_tpot_ms")
    return value


def error(sim, real):
    return None if real in (None, 0) or sim is None else (sim - real) / real


def table(real: dict, sim: dict, sim_fe: dict) -> list[dict]:
    """Per metric: the client's value, the simulation's and the simulation's with the
    measured front-end delay (``--frontend-delay``), with relative errors."""
    rows = []
    for name, key in METRICS:
        r, s, s2 = metric(real, key), metric(sim, key), metric(sim_fe, key)
        rows.append({"metric": name, "real": r, "sim": s, "error": error(s, r),
                     "sim_plus_front_end": s2, "error_plus_front_end": error(s2, r)})
    return rows


def fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{v:+.1%}" if pct else f"{v:.2f}"


def print_table(load: dict, rows: list[dict], markdown: bool) -> None:
    head = ["metric", "real (client)", "sim", "error", "sim + front end", "error"]
    lines = [f"rate {load['rate']} req/s, {load['n']} requests, prompt {load['prompt']}, "
             f"output {load['output']}"]
    if markdown:
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["metric"], fmt(r["real"]), fmt(r["sim"]), fmt(r["error"], True),
                 fmt(r["sim_plus_front_end"]), fmt(r["error_plus_front_end"], True)]
        lines.append("| " + " | ".join(cells) + " |" if markdown else
                     f"  {cells[0]:28s} " + " ".join(f"{c:>12s}" for c in cells[1:]))
    print("\n".join(lines))


def print_profile(profile: Path, meta: dict) -> None:
    """The profile's per-shape errors as a markdown table (``--markdown``)."""
    import csv
    with open(profile / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    models = list(meta["errors"])
    print(f"Step times of `servesim profile` ({meta['date']}; vLLM {meta['vllm']}, "
          f"{meta['cpus']} CPUs, {meta['samples']} steps per point over {meta['rounds']} "
          f"rounds; errors vs the {meta['fitted_to']}, ms):\n")
    print("| point | min | median | " + " | ".join(models) + " |")
    print("|---|" + "---|" * (2 + len(models)))
    for r in rows:
        cells = [r["point"], f"{float(r['measured_min_ms']):.2f}",
                 f"{float(r['measured_median_ms']):.2f}"]
        cells += [f"{float(r[m + '_ms']):.2f} ({float(r[m + '_error']):+.0%})" for m in models]
        print("| " + " | ".join(cells) + " |")
    print("| median \\|error\\| | | | " + " | ".join(
        f"{meta['errors'][m]['median_abs_error']:.1%}" for m in models) + " |")
    print("| max \\|error\\| | | | " + " | ".join(
        f"{meta['errors'][m]['max_abs_error']:.1%}" for m in models) + " |")
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", required=True, type=Path, help="a `servesim profile` folder")
    ap.add_argument("--model-dir", type=Path, help="model folder (default: the profile's)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--rates", default="0.5,2", help="request rates (req/s), comma-separated")
    ap.add_argument("-n", "--num-requests", type=int, default=40)
    ap.add_argument("--prompt-len", default="64:512")
    ap.add_argument("--output-len", default="32:128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)

    meta = json.loads((args.profile / "profile.json").read_text())
    lin = meta["models"]["linear"]
    cost = LinearCost(**{k: lin[k] for k in ("c0", "c_prefill", "c_decode", "c_kv")})
    model_dir = args.model_dir or Path(meta["model_folder"])
    engine = {**meta["engine"], "max_num_seqs": 64, "max_num_batched_tokens": 2048,
              "max_model_len": 4096}
    # The replica servesim run simulates: the server's KV cache, limits and block size.
    kv_tokens = engine["kv_cache_gib"] * 2 ** 30 // ModelSpec(**meta["model"]).kv_bytes_per_token
    replica = ["--cost-model", "linear", *[a for k in ("c0", "c_prefill", "c_decode", "c_kv")
                                           for a in ("--cost-param", f"{k}={lin[k]!r}")],
               "--kv-capacity", kv_tokens, "--block-size", engine["block_size"],
               "--max-model-len", engine["max_model_len"],
               "-p", f"max_num_batched_tokens={engine['max_num_batched_tokens']}",
               "-p", f"max_num_seqs={engine['max_num_seqs']}", "--policy", "vllm-v1"]
    if args.markdown:
        print_profile(args.profile, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in [*args.out.glob("real-*"), *args.out.glob("sim-*"), args.out / "warmup"]:
        if old.is_dir():                 # this script's own folders from an earlier run
            shutil.rmtree(old)
    step_log = args.out / "steps.jsonl"
    step_log.unlink(missing_ok=True)
    server = Server(model_dir, args.port, step_log, args.out / "server.log", engine)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{os.cpu_count()} CPUs, shared with other processes",
               "profile": str(args.profile), "cost": cost.describe(), "loads": []}
    try:
        server.wait_ready()
        url = ["--url", server.url, "--model", "tiny"]
        # Warm-up: the first requests of a fresh server pay one-time set-up.
        servesim("bench", *url, "--out", args.out / "warmup", "-n", 4, "--rate", 2,
                 "--prompt-len", args.prompt_len, "--output-len", 16, "--seed", 99,
                 log=args.out / "warmup.log")
        for rate in [float(r) for r in args.rates.split(",")]:
            workload = ["--rate", rate, "-n", args.num_requests, "--prompt-len",
                        args.prompt_len, "--output-len", args.output_len, "--seed", args.seed]
            tag = f"rate{rate:g}"
            before = len(read_step_log(step_log)["step"]), \
                len(read_step_log(step_log)["arrival"])
            servesim("bench", *url, "--out", args.out / f"real-{tag}", *workload,
                     log=args.out / f"real-{tag}.log")
            events = read_step_log(step_log)
            events = {"step": events["step"][before[0]:], "arrival": events["arrival"][
                before[1]:], "first_token": events["first_token"], "finish": events["finish"]}
            records = [json.loads(x) for x in
                       (args.out / f"real-{tag}" / "records.jsonl").read_text().splitlines()]
            delays = front_end_delays(records, events)
            delay_s = statistics.median(delays["ttft_s"])
            servesim("run", *workload, *replica, "--out", args.out / f"sim-{tag}",
                     log=args.out / f"sim-{tag}.log")
            servesim("run", *workload, *replica, "--frontend-delay", delay_s,
                     "--out", args.out / f"sim-fe-{tag}", log=args.out / f"sim-fe-{tag}.log")
            real, sim, sim_fe = (json.loads((args.out / f"{kind}-{tag}" / "summary.json")
                                            .read_text()) for kind in ("real", "sim", "sim-fe"))
            load = {"rate": rate, "n": args.num_requests, "prompt": args.prompt_len,
                    "output": args.output_len}
            rows = table(real, sim, sim_fe)
            load.update({
                "rows": rows, "live_steps": step_errors(events["step"], cost),
                "sim_steps": sim_steps(args.out / f"sim-{tag}" / "timeline.csv"),
                "front_end_ms": {k: {"min": min(v) * 1e3, "median": statistics.median(v) * 1e3,
                                     "max": max(v) * 1e3} for k, v in delays.items()}})
            results["loads"].append(load)
            print_table(load, rows, args.markdown)
            fe, ls = load["front_end_ms"], load["live_steps"]
            print(f"front-end delay per request (ms, min / median / max): TTFT "
                  f"{fe['ttft_s']['min']:.1f} / {fe['ttft_s']['median']:.1f} / "
                  f"{fe['ttft_s']['max']:.1f}; e2e {fe['e2e_s']['min']:.1f} / "
                  f"{fe['e2e_s']['median']:.1f} / {fe['e2e_s']['max']:.1f}; API process to "
                  f"engine core {fe['api_to_engine_s']['median']:.1f} (median)")
            ss = load["sim_steps"]
            print(f"fitted cost on the live server's {ls['steps']} steps: median |error| "
                  f"{ls['median_abs_error']:.1%}")
            print(f"steps, live / simulated: {ls['steps']} / {ss['steps']}, median "
                  f"{ls['median_step_ms']:.2f} / {ss['median_step_ms']:.2f} ms, engine busy "
                  f"{ls['busy_s']:.1f} / {ss['busy_s']:.1f} s, mean decode batch "
                  f"{ls['mean_decode_batch']:.2f} / {ss['mean_decode_batch']:.2f}\n")
    finally:
        server.stop()
    (args.out / "sim_vs_real.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
