"""GPU validation: profile Llama-2-7B-shaped layers (random weights, plain PyTorch) on the GPU
of this machine, write its profile, and compare the roofline cost model with the measurements.

For a lent GPU machine whose image has PyTorch but no vLLM and no servesim install: run it from
a copy of the repository (imports are torch, numpy and this repository's light modules; pandas,
if present, adds the profile cost model's column)::

    python experiments/profile_gpu.py --model llama-2-7b --gpu h200 --out profiles/h200/llama-2-7b
    python experiments/profile_gpu.py --dry-run --out /tmp/gpu-dry-run     # CPU, tiny, seconds

Writes ``mlp.csv`` (per-operator times, Vidur's format: what ``--cost-model profile`` reads),
``iterations.csv`` (whole iterations: prefill chunks, decode batches, mixed), ``errors.csv``
(each iteration measured vs the roofline, the profile model and a linear fit) and
``meta.json`` (device, versions, peaks, fits, error summary). Sized for a 10-minute device
slot on one H200 (``--max-tokens 4096 --max-batch 256``, 2 built layers reused for all 32).
``--dry-run`` runs the same code on a CPU with a tiny Llama-shaped model and a few shapes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulator.cost.measured import (Measurement, error_summary, fit_measurements,  # noqa: E402
                                     relative_errors)
from simulator.cost.roofline import RooflineCost  # noqa: E402
from simulator.errors import ConfigError  # noqa: E402
from simulator.hardware import gpu_spec, model_spec  # noqa: E402
from simulator.vllm import layers as L  # noqa: E402


def versions() -> dict:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform()}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def measurements(rows: list[dict]) -> list[Measurement]:
    out = []
    for r in rows:
        comp = json.loads(r["composition"])
        shape = L.Composition(tuple(map(tuple, comp["prefill"])), tuple(comp["decode_kv"])).shape()
        out.append(Measurement(comp_label(comp), shape, r["median_s"], r["min_s"], r["samples"]))
    return out


def comp_label(comp: dict) -> str:
    parts = [f"prefill {n}" + (f" @ctx {c}" if c else "") for n, c in comp["prefill"]]
    if comp["decode_kv"]:
        kv = comp["decode_kv"]
        parts.append(f"decode {len(kv)} x kv {kv[0]}")
    return " + ".join(parts)


def models_to_compare(model, gpu, out: Path, points) -> dict:
    models = {"roofline": RooflineCost(model, gpu),
              "linear": fit_measurements(points).cost}
    try:
        import pandas  # noqa: F401
    except ImportError:
        return models                    # the profile model reads its table with pandas
    from simulator.cost.profile import ProfileCost
    models["profile"] = ProfileCost(out / "mlp.csv", model, gpu)
    return models


def run(args) -> dict:
    import torch
    if args.dry_run:
        model, device, dtype = L.SMOKE, torch.device("cpu"), torch.float32
        max_tokens, max_batch, warmup, repeats = 64, 4, 0, 2
    else:
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device here: run on a GPU machine, or give --dry-run")
        model, device, dtype = model_spec(args.model), torch.device("cuda"), torch.float16
        max_tokens, max_batch = min(args.max_tokens, model.max_model_len), args.max_batch
        warmup, repeats = args.warmup, args.repeats
    gpu = gpu_spec(args.gpu)
    t0 = time.monotonic()
    layers = L.LlamaLayers(model, device, dtype, layers=min(2, model.num_layers))
    timer = L.Timer(device, warmup, repeats)
    mlp = L.profile_operators(layers, timer, L.token_grid(max_tokens))
    its = L.profile_iterations(layers, timer, L.compositions(max_tokens, max_batch),
                               model.num_layers)
    for r in its:
        r["samples"] = repeats
    out = args.out
    L.write_rows(out / "mlp.csv", mlp)
    L.write_rows(out / "iterations.csv", its)
    points = measurements(its)
    models = models_to_compare(model, gpu, out, points)
    errors = relative_errors(points, models)
    L.write_rows(out / "errors.csv", errors)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine())
    meta = {"model": asdict(model), "gpu_preset": gpu.name, "device": label,
            "device_type": device.type, "dtype": str(dtype).replace("torch.", ""),
            "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "warmup": warmup, "repeats": repeats, "dry_run": args.dry_run,
            "device_peaks": L.device_peaks(device, dtype, size=4096 if device.type == "cuda"
                                           else 512),
            "models": {k: m.describe() for k, m in models.items()},
            "errors": error_summary(errors, models),
            "elapsed_s": time.monotonic() - t0}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-2-7b", help="model preset [llama-2-7b]")
    ap.add_argument("--gpu", default="h200", help="GPU preset the roofline uses [h200]")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--max-tokens", type=int, default=4096, help="largest batch in tokens")
    ap.add_argument("--max-batch", type=int, default=256, help="largest decode batch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dry-run", action="store_true",
                    help="the same code on the CPU with a tiny model and a few shapes")
    args = ap.parse_args(argv)
    try:
        meta = run(args)
    except ConfigError as e:
        print(f"profile_gpu: error: {e}", file=sys.stderr)
        return 2
    print(f"profiled {meta['model']['name']} on {meta['device']} ({meta['dtype']}, torch "
          f"{meta['versions']['torch']}) in {meta['elapsed_s']:.0f} s: wrote {args.out}/"
          f"mlp.csv, iterations.csv, errors.csv, meta.json")
    peaks = meta["device_peaks"]
    print(f"measured peaks: {peaks['peak_flops'] / 1e12:.1f} TFLOP/s matmul, "
          f"{peaks['memory_bandwidth'] / 1e9:.0f} GB/s copy")
    for name, s in meta["errors"].items():
        print(f"{name} vs measured iterations: median |error| {s['median_abs_error']:.1%}, "
              f"max {s['max_abs_error']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
