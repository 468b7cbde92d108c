"""Random-weight Llama layers in plain PyTorch, timed per operator and per whole iteration.

The profiling that needs only PyTorch (no vLLM): a lent GPU machine has nothing else, and
``experiments/profile_gpu.py`` runs this there from a copy of the repository. Imports stay
light (torch inside functions, numpy through the cost models).

1. Per-operator layer times for batches of T tokens (T on a grid), in the format of Vidur's
   ``mlp.csv`` that ``simulator/cost/profile.py`` (``--cost-model profile``) reads:
   ``time_stats.<op>.{min,max,mean,median,std}`` in milliseconds for emb, input_layernorm,
   attn_pre_proj (fused QKV), attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj
   (fused gate and up), mlp_act (SiLU x up), mlp_down_proj, add; plus the shape columns.
2. Whole iterations (every layer, SDPA attention included, plus the LM head) for a grid of batch
   compositions: prefill chunks at several contexts, decode batches of several sizes and
   context lengths, and mixed batches.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from simulator.cost.base import BatchShape
from simulator.cost.profile import LAYER_OPS
from simulator.hardware import ModelSpec

OPS = ("emb",) + LAYER_OPS
# A Llama-shaped model small enough to profile on a CPU in seconds.
SMOKE = ModelSpec("smoke-llama", num_layers=2, hidden_size=128, num_heads=4, num_kv_heads=2,
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


def write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV of ``rows`` (same keys in each), with the csv module: no pandas on a bare image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def device_peaks(device, dtype, size: int = 2048, repeats: int = 5) -> dict:
    """Measured matrix-multiply FLOP/s and memory-copy bandwidth (bytes/s) of ``device``: the
    peaks a roofline needs where no datasheet preset exists (a CPU). Best of ``repeats``."""
    import torch
    timer = Timer(device, warmup=1, repeats=repeats)
    a = torch.randn(size, size, device=device).to(dtype)
    flops = 2 * size ** 3 / min(timer(lambda: a @ a))
    buf = torch.empty(64 * 2 ** 20 // 4, device=device, dtype=torch.float32)
    out = torch.empty_like(buf)
    bandwidth = 2 * buf.numel() * 4 / min(timer(lambda: out.copy_(buf)))
    return {"peak_flops": flops, "memory_bandwidth": bandwidth}
