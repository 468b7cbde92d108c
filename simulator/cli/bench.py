"""``servesim bench`` and ``servesim compare``: measure a live server, compare runs.

``bench`` replays a workload against any OpenAI-compatible server and writes the same outputs as
``servesim run`` plus vLLM bench's result file; ``compare`` puts two runs (simulated, measured,
or a ``vllm bench serve`` result file) side by side.
"""

from __future__ import annotations

import click

from simulator.cli import cli, stdout_console
from simulator.cli.options import config_from_options, workload_options
from simulator.errors import ConfigError


@cli.command()
@workload_options
@click.option("--url", required=True, help="Server base URL, e.g. http://127.0.0.1:8000.")
@click.option("--model", "served_model", required=True,
              help="Model name the server serves (the request's \"model\" field).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for records.jsonl (written as requests finish), requests.csv, "
                   "summary.json, bench.json, config.json and, last, manifest.json.")
@click.option("--replace", is_flag=True,
              help="The --out folder may hold an earlier run: remove its files first.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Per-request timeout in seconds.")
@click.option("--max-concurrency", type=int, help="Cap on requests in flight.")
@click.option("--prompt-mode", type=click.Choice(["token-ids", "text"]), default="token-ids",
              show_default=True, help="Prompts as exact token ids, or text calibrated with the "
                                      "server's /tokenize.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def bench(url, served_model, out, replace, timeout_s, max_concurrency, prompt_mode, as_json,
          **opts):
    """Replay a workload against an OpenAI-compatible server (same outputs as `run`)."""
    from simulator.vllm.bench import BenchOptions
    cfg = config_from_options(opts, {"out": out})
    bopts = BenchOptions(url=url, model=served_model, timeout_s=timeout_s,
                         max_concurrency=max_concurrency, prompt_mode=prompt_mode, seed=cfg.seed)
    summary = run_bench(cfg, bopts, out, replace)
    if as_json:
        from simulator.io import json_text
        click.echo(json_text(summary))
    else:
        from simulator.cli.run import print_summary
        console = stdout_console()
        print_summary(summary, console)
        console.print(f"failed: {summary['failed']} {summary['errors'] or ''}; wrote {out}")
    if summary["usage_disagreements"]:
        click.echo(f"servesim: warning: {summary['usage_disagreements']} completed requests "
                   f"streamed a different number of tokens than the server's usage figure "
                   f"(requests.csv: output_tokens vs usage_output_tokens)", err=True)


def run_bench(cfg, bopts, out: str, replace: bool = False) -> dict:
    """Check the folder and the server, replay, then write the outputs, also when interrupted
    (Ctrl-C keeps what was measured). Nothing is removed or sent before every check passed."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ConfigError("servesim bench needs aiohttp: pip install -e '.[bench]'")
    from simulator.run_folder import clear, prepare
    from simulator.runner import build_workload
    from simulator.vllm.bench import RECORDS, Replayer, check_server, read_records, write_outputs
    if cfg.session_turns > 1:
        # The client sends each request at its arrival time; a session's later turn would have
        # to wait for the previous answer and a think time (closed loop), which it does not.
        raise ConfigError("session_turns: servesim bench sends every request at its arrival "
                          "time and does not replay closed-loop sessions; simulate them with "
                          "servesim run (--engine vllm runs vLLM's scheduler in the loop)")
    workload = build_workload(cfg)
    requests = list(workload.requests())
    if not requests:
        raise ConfigError("the workload has no requests to send")
    for message in workload.meta.get("warnings", []):
        click.echo(f"servesim: warning: {message}", err=True)
    folder, previous = prepare(out, replace)
    import asyncio   # here, not at import: every command's start-up would pay for it
    bopts.stream_token_ids = asyncio.run(check_server(bopts))
    clear(previous)
    replayer = Replayer(requests, bopts, folder)
    interrupted = None
    try:
        asyncio.run(replayer.run())
    except KeyboardInterrupt as e:
        interrupted = e
    summary = write_outputs(cfg, bopts, folder, requests, read_records(folder / RECORDS),
                            workload.meta, interrupted=interrupted is not None)
    if interrupted is not None:
        raise interrupted
    return summary


@cli.command()
@click.argument("sim_dir", type=click.Path())
@click.argument("real_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(sim_dir, real_dir, as_json):
    """Side-by-side metrics of two runs (e.g. simulated vs measured) with relative errors.

    Each run is a servesim run or bench folder, or a `vllm bench serve --save-result` file."""
    from simulator.compare import compare as compare_runs
    result = compare_runs(sim_dir, real_dir)
    if as_json:
        from simulator.io import json_text
        click.echo(json_text(result))
        return
    from rich.table import Table
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
