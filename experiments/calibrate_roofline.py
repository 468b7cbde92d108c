"""Where the roofline cost model's efficiency factors come from, and how the cost models compare.

    python experiments/calibrate_roofline.py [--profiles ../shared/profiles]

1. From the measured per-operator layer times of Llama-2-7B (Vidur's tables, tensor parallel 1,
   A100 80GB and H100), the fraction of datasheet peak each kernel class reaches:
   - compute_eff: dense GEMM FLOP/s (QKV, output projection, gated MLP) at 512-4096 tokens,
     where they are compute-bound;
   - memory_eff: weight bytes streamed per second by the same GEMMs at 1-64 tokens, where they
     are bound by reading the weights;
   - elementwise_eff: activation bytes per second of the element-wise kernels (norms, RoPE,
     activation, add) at 2048-4096 tokens, counted as simulator.cost.roofline's
     elementwise_bytes_per_token;
   - layer_floor_s: the element-wise kernels' time per layer at 1-64 tokens (launch-bound).
   The defaults in simulator/cost/roofline.py are the medians over both GPUs, rounded.
2. For llama-2-7b on a100-80gb, each cost model's predicted iteration time for reference batches
   next to the measured dense-layer time of the profile. Prints Markdown (the README's table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.cost.base import BatchShape  # noqa: E402
from simulator.cost.factory import build_cost_model  # noqa: E402
from simulator.cost.profile import ProfileCost, read_profile  # noqa: E402
from simulator.cost.roofline import (EFFICIENCY_DEFAULTS, RooflineCost,  # noqa: E402
                                     elementwise_bytes_per_token)
from simulator.hardware import gpu_spec, model_spec  # noqa: E402

GPUS = {"a100": "a100-80gb", "h100": "h100-80gb"}
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")

REFERENCE_BATCHES = [
    ("decode, 1 request at 1k context", BatchShape.of(decode_kv=[1024])),
    ("prefill, one 512-token prompt", BatchShape.of(prefill=[(512, 0)])),
    ("prefill, one 2048-token prompt", BatchShape.of(prefill=[(2048, 0)])),
    ("decode, 64 requests at 1k context", BatchShape.of(decode_kv=[1024] * 64)),
    ("mixed: 512-token chunk + 64 decodes at 1k",
     BatchShape.of(prefill=[(512, 0)], decode_kv=[1024] * 64)),
]


def seconds(t: pd.DataFrame, ops) -> pd.Series:
    return sum(t[f"time_stats.{op}.median"] for op in ops) * 1e-3


def efficiencies(t: pd.DataFrame, model, gpu) -> dict[str, np.ndarray]:
    tokens = t["num_tokens"].to_numpy(dtype=float)
    gemm, elementwise = seconds(t, GEMM_OPS).to_numpy(), seconds(t, ELEMENTWISE_OPS).to_numpy()
    per_layer = model.layer_matmul_params
    big, small = (tokens >= 512) & (tokens <= 4096), tokens <= 64
    return {
        "compute_eff": (2 * tokens * per_layer / gemm / gpu.peak_flops)[big],
        "memory_eff": (per_layer * model.dtype_bytes / gemm / gpu.hbm_bandwidth)[small],
        "elementwise_eff": (tokens * elementwise_bytes_per_token(model) / elementwise
                            / gpu.hbm_bandwidth)[tokens >= 2048],
        "layer_floor_s": elementwise[small],
    }


FACTORS = ("compute_eff", "memory_eff", "elementwise_eff", "layer_floor_s")


def calibrate(profiles: Path, model_name: str = "llama-2-7b") -> dict[str, dict[str, np.ndarray]]:
    """factor -> GPU folder -> the factor measured at each qualifying token count."""
    model = model_spec(model_name)
    found = {g: profiles / g / model_name / "mlp.csv" for g in GPUS}
    found = {g: p for g, p in found.items() if p.is_file()}
    if not found:
        raise SystemExit(f"no profiles for {model_name} under {profiles}")
    per_gpu = {g: efficiencies(read_profile(p, model), model, gpu_spec(GPUS[g]))
               for g, p in found.items()}
    return {key: {g: per_gpu[g][key] for g in per_gpu} for key in FACTORS}


def recommended(measured: dict[str, np.ndarray], key: str) -> float:
    """The median over every GPU's measurements, rounded (to 0.05, or to the microsecond)."""
    pooled = float(np.median(np.concatenate(list(measured.values()))))
    return round(pooled * 1e6) * 1e-6 if key.endswith("_s") else round(pooled * 20) / 20


def fmt(key: str, v: float) -> str:
    return f"{v * 1e6:.0f} us" if key.endswith("_s") else f"{v:.2f}"


def calibration_table(profiles: Path, model_name: str) -> str:
    factors = calibrate(profiles, model_name)
    gpus = list(factors[FACTORS[0]])
    lines = ["| factor | " + " | ".join(f"{g.upper()}: range (median)" for g in gpus)
             + " | median of both, rounded | default |",
             "|---|" + "---|" * len(gpus) + "---|---|"]
    for key in FACTORS:
        cells = [f"{fmt(key, v.min())} - {fmt(key, v.max())} ({fmt(key, np.median(v))})"
                 for v in factors[key].values()]
        lines.append(f"| `{key}` | " + " | ".join(cells) + f" | {fmt(key, recommended(factors[key], key))}"
                     f" | {fmt(key, EFFICIENCY_DEFAULTS[key])} |")
    return "\n".join(lines)


def reference_table(profiles: Path) -> str:
    model, gpu = model_spec("llama-2-7b"), gpu_spec("a100-80gb")
    roofline = RooflineCost(model, gpu)
    profile = ProfileCost(profiles / "a100" / "llama-2-7b" / "mlp.csv", model, gpu)
    linear = build_cost_model("linear", model, gpu)      # the default: fitted to the roofline
    lines = ["| batch | tokens | measured dense layers (profile table) | roofline dense layers "
             "| linear | roofline | profile |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, shape in REFERENCE_BATCHES:
        n = shape.num_tokens
        ms = [profile.layers_time(n), roofline.dense_time(n), linear.iteration_time(shape),
              roofline.iteration_time(shape), profile.iteration_time(shape)]
        lines.append(f"| {label} | {n} | " + " | ".join(f"{v * 1e3:.2f} ms" for v in ms) + " |")
    c = linear
    lines.append("")
    lines.append(f"linear (least squares to the roofline): c0 = {c.c0 * 1e3:.2f} ms, "
                 f"c_prefill = {c.c_prefill * 1e6:.2f} us/token, c_decode = "
                 f"{c.c_decode * 1e6:.2f} us/request, c_kv = {c.c_kv * 1e9:.2f} ns/KV token")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", type=Path, default=ROOT.parent / "shared" / "profiles")
    ap.add_argument("--model", default="llama-2-7b")
    args = ap.parse_args(argv)
    print(f"## Roofline efficiency factors from measured profiles ({args.model}, TP 1)\n")
    print(calibration_table(args.profiles, args.model))
    print("\n## Reference batches: llama-2-7b on a100-80gb (iteration time)\n")
    print(reference_table(args.profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
