"""``servesim serve``: start ``vllm serve`` with a servesim policy plugged in.

(``servesim bench`` and ``servesim compare``, the measuring side, are in ``simulator.cli.bench``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import click
from rich.table import Table

from scheduler.base import make_policy
from simulator.cli import cli, stdout_console
from simulator.cli.options import config_from_options, option_fields, workload_options
from simulator.errors import ConfigError

# Flags of ``vllm serve`` that the plug-in sets itself.
OWNED_VLLM_FLAGS = ("--scheduler-cls", "--async-scheduling", "--no-async-scheduling")


def serve_command(cfg, vllm_args: list[str], sync: bool,
                  vllm: str = "vllm") -> tuple[dict, list[str]]:
    """(environment additions, argv) that start vLLM with the plug-in configured by ``cfg`` (a
    ``simulator.vllm.plugin.PluginConfig``)."""
    from simulator.vllm.plugin import qualname
    check_plugin(cfg)
    for arg in vllm_args:
        if arg.split("=")[0] in OWNED_VLLM_FLAGS:
            raise ConfigError(f"vllm argument {arg.split('=')[0]} is set by servesim serve "
                              f"(use --sync for a synchronous scheduler)")
    argv = [vllm, "serve", *vllm_args, "--scheduler-cls", qualname(async_scheduling=not sync)]
    if sync:
        argv.append("--no-async-scheduling")
    return cfg.to_env(), argv


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


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--policy", help="servesim policy to plug in. [vllm-v1]")
@click.option("-p", "--policy-param", "policy_param", multiple=True, metavar="KEY=VALUE",
              help="Policy parameter, repeatable.")
@click.option("--sync", is_flag=True,
              help="Synchronous scheduler with --no-async-scheduling (default: vLLM's async "
                   "scheduling with the async adapter).")
@click.option("--dry-run", is_flag=True, help="Only print the command.")
@functools.partial(workload_options, keep=("model", "gpu", "cost_model", "cost_param"))
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(sync, dry_run, vllm_args, **opts):
    """Start `vllm serve` with a servesim policy: servesim serve --policy sjf -- MODEL [ARGS].

    The workload flags (or --config, a run-config file) describe the workload the policy
    should expect, and --model/--gpu/--cost-model the cost model it plans with, as in
    `servesim run` (WAIT and Nested WAIT derive their thresholds from them)."""
    from simulator.vllm.plugin import plugin_config
    cfg = plugin_config(*option_fields(opts))
    env, argv = serve_command(cfg, list(vllm_args), sync)
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())) + " " + \
        shlex.join(argv)
    click.echo(line)
    if dry_run:
        return
    if shutil.which(argv[0]) is None:
        raise ConfigError("vllm is not installed here (no `vllm` command on PATH); install the "
                          "vllm extra or use --dry-run")
    proc = subprocess.run(argv, env={**os.environ, **env})
    if proc.returncode:
        raise click.exceptions.Exit(proc.returncode)

