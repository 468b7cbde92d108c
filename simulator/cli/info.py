"""``servesim policies`` and ``servesim presets``: what can be chosen by name."""

from __future__ import annotations

import click

from scheduler.base import param_docs, plugin_errors, policy_class, policy_names
from simulator.cli import cli, stdout_console
from simulator.hardware import GPUS, MODELS, kv_capacity_tokens


@cli.command()
@click.option("--params", "show_params", is_flag=True, help="Also list each policy's parameters.")
@click.argument("names", nargs=-1)
def policies(show_params, names):
    """List batching policies (with --params or NAMES: their parameters)."""
    from rich.table import Table
    console = stdout_console()
    table = Table(show_header=True, header_style="bold")
    table.add_column("policy")
    table.add_column("description")
    for name in policy_names():
        table.add_row(name, policy_class(name).summary)
    if not names:
        console.print(table)
    for line in plugin_errors():   # the other policies still work: a warning, not a failure
        click.echo(f"servesim: warning: {line}", err=True)
    for name in (names or (policy_names() if show_params else ())):
        cls = policy_class(name)
        t = Table(title=f"{name} parameters (-p KEY=VALUE)", title_justify="left")
        for col in ("parameter", "type", "default", "meaning"):
            t.add_column(col)
        for pname, ptype, default, help_ in param_docs(cls):
            t.add_row(pname, ptype, repr(default), help_)
        console.print(t)


@cli.command()
def presets():
    """List model and GPU presets and the default KV capacity of each pair."""
    from rich.table import Table
    console = stdout_console()
    t = Table(title="models")
    for col in ("model", "layers", "hidden", "heads", "kv heads", "ffn", "vocab", "params",
                "KV/token", "max len"):
        t.add_column(col)
    for m in MODELS.values():
        t.add_row(m.name, str(m.num_layers), str(m.hidden_size), str(m.num_heads),
                  str(m.num_kv_heads), str(m.intermediate_size), str(m.vocab_size),
                  f"{m.num_params / 1e9:.2f} B", f"{m.kv_bytes_per_token / 1024:.0f} KiB",
                  str(m.max_model_len))
    console.print(t)
    g = Table(title="GPUs (KV capacity in tokens at gpu_memory_utilization 0.9)")
    for col in ("gpu", "memory", "peak FP16", "HBM", *MODELS):
        g.add_column(col)
    for gpu in GPUS.values():
        caps = []
        for m in MODELS.values():
            try:
                caps.append(f"{kv_capacity_tokens(m, gpu):,}")
            except Exception:
                caps.append("does not fit")
        g.add_row(gpu.name, f"{gpu.memory_bytes / 1024 ** 3:.0f} GiB",
                  f"{gpu.peak_flops / 1e12:.0f} TFLOP/s", f"{gpu.hbm_bandwidth / 1e12:.2f} TB/s",
                  *caps)
    console.print(g)
