"""Measure a Llama-architecture model's iteration times and write a profile servesim loads.

On a machine with an NVIDIA GPU this is our own calibration data; on a CPU it runs the same code
on a tiny model (that is how it is tested). The model has random weights: only shapes matter.

Two measurements, both with plain PyTorch (SDPA attention):

1. Per-operator layer times for batches of T tokens (T on a grid), in the format of Vidur's
   ``mlp.csv`` that ``simulator/cost/profile.py`` (``--cost-model profile``) reads:
   ``time_stats.<op>.{min,max,mean,median,std}`` in milliseconds for emb, input_layernorm,
   attn_pre_proj (fused QKV), attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj
   (fused gate and up), mlp_act (SiLU x up), mlp_down_proj, add; plus the shape columns.
2. Whole iterations (every layer, attention included, plus the LM head) for a grid of batch
   compositions: prefill chunks at several contexts, decode batches of several sizes and
   context lengths, and mixed batches. These give the linear fit (d0, d1) of the paper's
   tau = d0 + d1 x (KV tokens of the batch), and a check of the profile cost model.

Output folder: ``mlp.csv``, ``iterations.csv``, ``meta.json`` (device, versions, shape, fit).

    python experiments/profile_gpu.py --model llama-2-7b --out profiles/h100/llama-2-7b
    python experiments/profile_gpu.py --tiny --device cpu --out /tmp/tiny-profile   # a smoke run

With ``--engine vllm`` (a GPU and the vllm extra) the whole-iteration measurements come from vLLM
itself, a ``vllm.LLM`` with dummy weights, through its own kernels and scheduler: a prefill
batch is timed as one ``generate`` with ``max_tokens=1``, a decode batch of n requests at context
c as the difference between generating K + 1 and 1 tokens, divided by K. The per-operator table
still comes from the PyTorch layers. That path needs a GPU: it was written against vLLM 0.32's
``LLM`` API but, without a GPU here, has not been run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulator.cost.base import BatchShape, CostModel  # noqa: E402
from simulator.cost.linear import fit_linear  # noqa: E402
from simulator.cost.profile import LAYER_OPS  # noqa: E402
from simulator.hardware import ModelSpec, model_spec  # noqa: E402

OPS = ("emb",) + LAYER_OPS
# A Llama-shaped model small enough to profile on a CPU in seconds.
TINY = ModelSpec("tiny-llama", num_layers=2, hidden_size=128, num_heads=4, num_kv_heads=2,
                 intermediate_size=344, vocab_size=512, max_model_len=512)


@dataclass(frozen=True)
class Composition:
    """One iteration's batch: prefill chunks (tokens, context before) and decode KV lengths."""
    prefill: tuple = ()
    decode_kv: tuple = ()

    def shape(self) -> BatchShape:
        return BatchShape.of(prefill=list(self.prefill), decode_kv=list(self.decode_kv))


def token_grid(max_tokens: int) -> list[int]:
    """1, 2, 4, ... and steps of 1/4 octave up to max_tokens (dense where time bends)."""
    out = {1}
    t = 1.0
    while t < max_tokens:
        t *= 2 ** 0.25
        out.add(min(max_tokens, int(round(t))))
    return sorted(out)


def compositions(max_len: int, max_batch: int) -> list[Composition]:
    ctxs = [c for c in (max_len // 16, max_len // 4, max_len // 2) if c >= 1]
    out = []
    for p in token_grid(max_len)[::3]:
        out.append(Composition(prefill=((p, 0),)))
    for ctx in ctxs:
        out.append(Composition(prefill=((max(1, max_len // 8), ctx),)))
    for n in sorted({1, 2, 8, max_batch // 2, max_batch} - {0}):
        for ctx in ctxs:
            out.append(Composition(decode_kv=(ctx,) * n))
    for n in sorted({4, max_batch} - {0}):
        out.append(Composition(prefill=((max(1, max_len // 8), 0),), decode_kv=(ctxs[0],) * n))
    return out


class Timer:
    """Median-of-repeats wall time of a callable, synchronising the device around it."""

    def __init__(self, device, warmup: int, repeats: int):
        import torch
        self.torch = torch
        self.device = device
        self.warmup, self.repeats = warmup, repeats

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def __call__(self, fn) -> list[float]:
        with self.torch.inference_mode():
            for _ in range(self.warmup):
                fn()
            samples = []
            for _ in range(self.repeats):
                self.sync()
                t0 = time.perf_counter()
                fn()
                self.sync()
                samples.append(time.perf_counter() - t0)
        return samples


class LlamaLayers:
    """Random-weight Llama layers as plain tensors (RMSNorm, fused QKV, RoPE, SDPA, gated MLP)."""

    def __init__(self, m: ModelSpec, device, dtype, layers: int):
        import torch
        self.torch, self.m, self.device, self.dtype = torch, m, device, dtype
        g = torch.Generator(device="cpu").manual_seed(0)
        hd = m.head_dim

        def w(*shape):
            return (torch.randn(*shape, generator=g) * 0.02).to(device=device, dtype=dtype)

        self.emb = w(m.vocab_size, m.hidden_size)
        self.lm_head = w(m.vocab_size, m.hidden_size)
        self.layers = [{
            "norm1": torch.ones(m.hidden_size, device=device, dtype=dtype),
            "qkv": w((m.num_heads + 2 * m.num_kv_heads) * hd, m.hidden_size),
            "o": w(m.hidden_size, m.num_heads * hd),
            "norm2": torch.ones(m.hidden_size, device=device, dtype=dtype),
            "gate_up": w(2 * m.intermediate_size, m.hidden_size),
            "down": w(m.hidden_size, m.intermediate_size),
        } for _ in range(layers)]
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        pos = torch.arange(max(m.max_model_len, 1), dtype=torch.float32)
        freqs = torch.outer(pos, inv)
        self.cos = freqs.cos().to(device=device, dtype=dtype)
        self.sin = freqs.sin().to(device=device, dtype=dtype)

    # -- operators ------------------------------------------------------------------------------
    def rms_norm(self, x, weight):
        t = self.torch
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * t.rsqrt(var + 1e-5)).to(x.dtype) * weight

    def rope(self, x, positions):
        """x: [T, heads, hd] rotated by each token's position."""
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        x1, x2 = x[..., ::2], x[..., 1::2]
        return self.torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)

    def split_qkv(self, qkv):
        m, hd = self.m, self.m.head_dim
        q, k, v = qkv.split([m.num_heads * hd, m.num_kv_heads * hd, m.num_kv_heads * hd], -1)
        return (q.view(-1, m.num_heads, hd), k.view(-1, m.num_kv_heads, hd),
                v.view(-1, m.num_kv_heads, hd))

    def mlp_act(self, gate_up):
        gate, up = gate_up.chunk(2, -1)
        return self.torch.nn.functional.silu(gate) * up

    # -- attention over a batch composition ------------------------------------------------------
    def attention(self, q, k, v, comp: Composition, kv_cache):
        """SDPA per prefill chunk (causal within the chunk, full over its cached context) and one
        batched SDPA per decode context length. ``kv_cache`` holds random past K/V."""
        t, m = self.torch, self.m
        F = t.nn.functional
        rep = m.num_heads // m.num_kv_heads
        outs, i = [], 0
        for chunk, ctx in comp.prefill:
            qc = q[i:i + chunk].transpose(0, 1)                           # [H, chunk, hd]
            kc = t.cat([kv_cache[0][:ctx], k[i:i + chunk]]).transpose(0, 1)
            vc = t.cat([kv_cache[1][:ctx], v[i:i + chunk]]).transpose(0, 1)
            kc, vc = kc.repeat_interleave(rep, 0), vc.repeat_interleave(rep, 0)
            mask = t.ones(chunk, ctx + chunk, dtype=t.bool, device=q.device).tril(ctx)
            outs.append(F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask)
                        .transpose(0, 1))
            i += chunk
        by_len: dict[int, int] = {}
        for kv in comp.decode_kv:
            by_len[kv] = by_len.get(kv, 0) + 1
        for kv, n in by_len.items():
            qd = q[i:i + n].unsqueeze(2)                                   # [n, H, 1, hd]
            past_k = kv_cache[0][:kv - 1].transpose(0, 1).unsqueeze(0).expand(n, -1, -1, -1)
            past_v = kv_cache[1][:kv - 1].transpose(0, 1).unsqueeze(0).expand(n, -1, -1, -1)
            kd = t.cat([past_k, k[i:i + n].unsqueeze(2)], 2).repeat_interleave(rep, 1)
            vd = t.cat([past_v, v[i:i + n].unsqueeze(2)], 2).repeat_interleave(rep, 1)
            outs.append(F.scaled_dot_product_attention(qd, kd, vd).squeeze(2))
            i += n
        return t.cat(outs).reshape(q.shape[0], -1)

    def iteration(self, comp: Composition, tokens, positions, kv_cache, num_layers: int):
        """A full forward pass of the batch (``num_layers`` layers, reusing the built ones)."""
        x = self.emb[tokens]
        for j in range(num_layers):
            L = self.layers[j % len(self.layers)]
            h = self.rms_norm(x, L["norm1"])
            q, k, v = self.split_qkv(h @ L["qkv"].T)
            q, k = self.rope(q, positions), self.rope(k, positions)
            x = x + self.attention(q, k, v, comp, kv_cache) @ L["o"].T
            h = self.rms_norm(x, L["norm2"])
            x = x + self.mlp_act(h @ L["gate_up"].T) @ L["down"].T
        last = []                      # logits for each request's last token
        i = 0
        for chunk, _ in comp.prefill:
            i += chunk
            last.append(i - 1)
        last.extend(range(i, i + len(comp.decode_kv)))
        return x[last] @ self.lm_head.T


def profile_operators(model: LlamaLayers, timer: Timer, grid: list[int]) -> list[dict]:
    """One row per token count, Vidur's mlp.csv columns (milliseconds per layer op)."""
    t, m = model.torch, model.m
    L = model.layers[0]
    rows = []
    for T in grid:
        tokens = t.randint(0, m.vocab_size, (T,), device=model.device)
        positions = t.arange(T, device=model.device) % m.max_model_len
        x = model.emb[tokens]
        h = model.rms_norm(x, L["norm1"])
        qkv = h @ L["qkv"].T
        q, k, _ = model.split_qkv(qkv)
        attn = t.randn(T, m.num_heads * m.head_dim, device=model.device, dtype=model.dtype)
        gate_up = h @ L["gate_up"].T
        act = model.mlp_act(gate_up)
        ops = {
            "emb": lambda: model.emb[tokens],
            "input_layernorm": lambda: model.rms_norm(x, L["norm1"]),
            "attn_pre_proj": lambda: h @ L["qkv"].T,
            "attn_rope": lambda: (model.rope(q, positions), model.rope(k, positions)),
            "attn_post_proj": lambda: attn @ L["o"].T,
            "post_attention_layernorm": lambda: model.rms_norm(x, L["norm2"]),
            "mlp_up_proj": lambda: h @ L["gate_up"].T,
            "mlp_act": lambda: model.mlp_act(gate_up),
            "mlp_down_proj": lambda: act @ L["down"].T,
            "add": lambda: x + h,
        }
        row = {"num_tokens": T, "n_head": m.num_heads, "n_kv_head": m.num_kv_heads,
               "n_embd": m.hidden_size, "n_expanded_embd": m.intermediate_size,
               "vocab_size": m.vocab_size, "use_gated_mlp": True,
               "num_tensor_parallel_workers": 1}
        for name in OPS:
            ms = [s * 1e3 for s in timer(ops[name])]
            row.update({f"time_stats.{name}.min": min(ms), f"time_stats.{name}.max": max(ms),
                        f"time_stats.{name}.mean": statistics.fmean(ms),
                        f"time_stats.{name}.median": statistics.median(ms),
                        f"time_stats.{name}.std": statistics.pstdev(ms)})
        rows.append(row)
    return rows


def profile_iterations(model: LlamaLayers, timer: Timer, comps: list[Composition],
                       num_layers: int) -> list[dict]:
    t, m = model.torch, model.m
    hd = m.head_dim
    longest = max([c + n for n, c in (p for comp in comps for p in comp.prefill)] +
                  [kv for comp in comps for kv in comp.decode_kv] + [1])
    kv_cache = (t.randn(longest, m.num_kv_heads, hd, device=model.device, dtype=model.dtype),
                t.randn(longest, m.num_kv_heads, hd, device=model.device, dtype=model.dtype))
    rows = []
    for comp in comps:
        shape = comp.shape()
        positions = [p for chunk, ctx in comp.prefill for p in range(ctx, ctx + chunk)] + \
                    [kv - 1 for kv in comp.decode_kv]
        pos = t.tensor(positions, device=model.device) % m.max_model_len
        tokens = t.randint(0, m.vocab_size, (len(positions),), device=model.device)
        samples = timer(lambda: model.iteration(comp, tokens, pos, kv_cache, num_layers))
        rows.append({"prefill_tokens": shape.prefill_tokens,
                     "prefill_requests": shape.prefill_requests,
                     "prefill_context": sum(ctx for _, ctx in comp.prefill),
                     "decode_requests": shape.decode_requests,
                     "decode_kv_tokens": shape.decode_kv_tokens,
                     "kv_tokens": shape.kv_tokens,
                     "composition": json.dumps(asdict(comp)),
                     "median_s": statistics.median(samples), "min_s": min(samples),
                     "max_s": max(samples)})
    return rows


class MeasuredCost(CostModel):
    """The measured iteration times as a cost model over exactly the measured batches."""
    name = "measured"

    def __init__(self, rows: list[dict]):
        self._times = {self._key(json.loads(r["composition"])): r["median_s"] for r in rows}

    @staticmethod
    def _key(comp: dict):
        return (tuple(map(tuple, comp["prefill"])), tuple(comp["decode_kv"]))

    def batches(self) -> list[BatchShape]:
        self._shapes = {}
        out = []
        for key in self._times:
            shape = Composition(*key).shape()
            self._shapes[id(shape)] = key
            out.append(shape)
        return out

    def iteration_time(self, shape: BatchShape) -> float:
        return self._times[self._shapes[id(shape)]]


def fit_paper_linear(rows: list[dict]) -> dict:
    """Least-squares (d0, d1) of tau = d0 + d1 x KV tokens over the measured iterations."""
    measured = MeasuredCost(rows)
    fit = fit_linear(measured, measured.batches(), terms=("c0", "c_kv"))
    return {"d0_s": fit.cost.c0, "d1_s_per_kv_token": fit.cost.c_kv, "rmse_s": fit.rmse_s,
            "max_rel_error": fit.max_rel_error, "batches": fit.batches}


DECODE_STEPS = 16   # K: decode steps timed per decode composition with --engine vllm


def profile_iterations_vllm(m: ModelSpec, max_len: int, max_batch: int, repeats: int,
                            dtype_name: str) -> list[dict]:
    """Iteration times through vLLM with dummy weights (GPU only; see the module docstring)."""
    import tempfile

    from vllm import LLM, SamplingParams

    from simulator.vllm.loop import model_folder
    llm = LLM(model=str(model_folder(m, m.max_model_len)), load_format="dummy",
              skip_tokenizer_init=True, dtype=dtype_name, enforce_eager=False,
              enable_prefix_caching=False, max_num_seqs=max(max_batch, 1),
              max_num_batched_tokens=max(max_len, max_batch * 2), max_model_len=m.max_model_len,
              download_dir=tempfile.gettempdir())

    def timed(prompts: list[list[int]], max_tokens: int) -> float:
        params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True,
                                detokenize=False)
        batch = [{"prompt_token_ids": p} for p in prompts]
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            llm.generate(batch, params, use_tqdm=False)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def prompt(n: int, seed: int) -> list[int]:     # distinct prompts: no prefix-cache hits
        return [(seed * 7919 + i * 31) % (m.vocab_size - 1) + 1 for i in range(n)]

    rows = []
    for comp in compositions(max_len, max_batch):
        if comp.prefill and comp.decode_kv:
            continue                     # mixed batches cannot be forced through generate()
        if comp.prefill:
            (chunk, ctx), = comp.prefill
            if ctx:
                continue                 # a cached context needs prefix caching: not measured
            t = timed([prompt(chunk, 1)], 1)
            shape = comp.shape()
        else:
            ctx, n = comp.decode_kv[0], len(comp.decode_kv)
            prompts = [prompt(ctx, j) for j in range(n)]
            t = (timed(prompts, DECODE_STEPS + 1) - timed(prompts, 1)) / DECODE_STEPS
            comp = Composition(decode_kv=(ctx + DECODE_STEPS // 2,) * n)
            shape = comp.shape()
        rows.append({"prefill_tokens": shape.prefill_tokens,
                     "prefill_requests": shape.prefill_requests, "prefill_context": 0,
                     "decode_requests": shape.decode_requests,
                     "decode_kv_tokens": shape.decode_kv_tokens, "kv_tokens": shape.kv_tokens,
                     "composition": json.dumps(asdict(comp)), "median_s": t, "min_s": t,
                     "max_s": t})
    return rows


def versions() -> dict:
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform()}
    try:
        import vllm
        out["vllm"] = vllm.__version__
    except Exception:
        out["vllm"] = None
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def run(model_name: str | None, out: Path, device_name: str, dtype_name: str, max_tokens: int,
        max_batch: int, warmup: int, repeats: int, layers_built: int,
        engine: str = "pytorch") -> dict:
    import pandas as pd
    import torch
    m = TINY if model_name is None else model_spec(model_name)
    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    model = LlamaLayers(m, device, dtype, layers=min(layers_built, m.num_layers))
    timer = Timer(device, warmup, repeats)
    max_tokens = min(max_tokens, m.max_model_len)
    mlp = profile_operators(model, timer, token_grid(max_tokens))
    if engine == "vllm":
        its = profile_iterations_vllm(m, max_tokens, max_batch, repeats, dtype_name)
    else:
        its = profile_iterations(model, timer, compositions(max_tokens, max_batch), m.num_layers)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(mlp).to_csv(out / "mlp.csv", index=False)
    pd.DataFrame(its).to_csv(out / "iterations.csv", index=False)
    device_label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine())
    meta = {"model": asdict(m), "device": device_label, "device_type": device.type,
            "dtype": dtype_name, "versions": versions(), "date": time.strftime("%Y-%m-%d"),
            "warmup": warmup, "repeats": repeats,
            "engine": "vllm-dummy-weights" if engine == "vllm" else "pytorch-sdpa",
            "linear_fit": fit_paper_linear(its)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model preset (servesim presets); default with --tiny only")
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama-shaped model (smoke test)")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float16 on a GPU, float32 on a CPU")
    ap.add_argument("--max-tokens", type=int, default=4096, help="largest batch in tokens")
    ap.add_argument("--max-batch", type=int, default=256, help="largest decode batch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--layers-built", type=int, default=2,
                    help="distinct layers with their own weights (the rest reuse them; time is "
                         "per layer, memory stays small)")
    ap.add_argument("--engine", choices=("pytorch", "vllm"), default="pytorch",
                    help="whole iterations through plain PyTorch, or through vLLM with dummy "
                         "weights (GPU only)")
    args = ap.parse_args(argv)
    import torch
    if not args.tiny and not args.model:
        ap.error("give --model NAME or --tiny")
    if args.engine == "vllm" and not torch.cuda.is_available():
        ap.error("--engine vllm needs an NVIDIA GPU (vLLM has no CPU kernels in this install); "
                 "use --engine pytorch")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    meta = run(None if args.tiny else args.model, args.out, device, dtype, args.max_tokens,
               args.max_batch, args.warmup, args.repeats, args.layers_built, args.engine)
    fit = meta["linear_fit"]
    print(f"profiled {meta['model']['name']} on {meta['device']} ({meta['dtype']}, torch "
          f"{meta['versions']['torch']}): wrote {args.out}/mlp.csv, iterations.csv, meta.json")
    print(f"linear fit over {fit['batches']} measured iterations: d0 = {fit['d0_s'] * 1e3:.4g} ms, "
          f"d1 = {fit['d1_s_per_kv_token'] * 1e6:.4g} us per KV token "
          f"(max relative error {fit['max_rel_error']:.1%})")
    if not math.isfinite(fit["rmse_s"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
