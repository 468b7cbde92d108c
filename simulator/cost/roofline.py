"""Roofline cost: each phase of an iteration takes max(compute time, memory time).

Phases of one iteration of a Llama-style model (L layers):
- the layers' dense matrix multiplies (QKV, output projection, gated MLP): 2 x tokens x weights
  FLOPs against reading every weight once;
- the LM head, on one row per scheduled request (the sampled positions): likewise;
- element-wise kernels (RMSNorms, RoPE, SiLU-and-multiply, residual adds): memory-bound on the
  activations, with a per-layer floor for kernel launches;
- prefill attention: 4 x heads x head_dim FLOPs per causal query-key pair (QK^T and PV) against
  reading the chunk's and its context's KV;
- decode attention: memory-bound read of every decoding request's KV cache;
- a fixed per-iteration overhead (CPU-side scheduling, input preparation, sampling).

Efficiency factors (fractions of datasheet peak), fitted to the measured per-operator times of
Llama-2-7B in ``../shared/profiles`` (Vidur's A100 and H100 tables, tensor parallel 1) by
``experiments/calibrate_roofline.py``; each default is the median over both GPUs, rounded:
- ``compute_eff`` 0.70: dense GEMMs at 512-4096 tokens reach 0.62-0.76 of peak on A100 (median
  0.69) and 0.49-0.77 on H100 (median 0.70);
- ``memory_eff`` 0.75: GEMMs at 1-64 tokens stream the weights at 0.70-0.77 of HBM bandwidth on
  A100 and 0.74-0.80 on H100;
- ``elementwise_eff`` 0.45: element-wise kernels move activations at 0.43-0.44 (A100) and
  0.45-0.50 (H100) of bandwidth at 2048-4096 tokens;
- ``layer_floor_s`` 22 us: below 64 tokens they take 22-27 us per layer on A100 and 19-22 us
  on H100, whatever the batch (kernel launches).
Not measurable from those tables, so set from published kernel results and stated as assumptions:
- ``attention_eff`` 0.5: FlashAttention-2's forward pass reaches 50-73% of A100 peak at head
  dimension 128 (Dao, 2023);
- ``kv_read_eff`` 0.6: paged decode attention streams KV below GEMM bandwidth;
- ``overhead_s`` 3 ms: the residual between a batch-1 decode step of Llama-2-7B on an A100 in
  vLLM (about 12-13 ms) and the time to stream its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.cost.base import BatchShape, CostModel
from simulator.errors import ConfigError
from simulator.hardware import GPUSpec, ModelSpec

def elementwise_bytes_per_token(model: ModelSpec) -> int:
    """Activation bytes one layer's element-wise kernels (two RMSNorms, RoPE, residual add,
    SiLU-and-multiply) move per token, counted as 10 h + 3 ffn values: about one read and one
    write of each kernel's inputs. ``elementwise_eff`` is fitted against exactly this count
    (experiments/calibrate_roofline.py), so a different count would change the fitted
    efficiency, not the predicted times."""
    return (10 * model.hidden_size + 3 * model.intermediate_size) * model.dtype_bytes


EFFICIENCY_DEFAULTS = {
    "compute_eff": 0.70,
    "memory_eff": 0.75,
    "elementwise_eff": 0.45,
    "attention_eff": 0.5,
    "kv_read_eff": 0.6,
    "layer_floor_s": 22e-6,
    "overhead_s": 3e-3,
}


@dataclass(frozen=True)
class RooflineCost(CostModel):
    model: ModelSpec
    gpu: GPUSpec
    compute_eff: float = EFFICIENCY_DEFAULTS["compute_eff"]
    memory_eff: float = EFFICIENCY_DEFAULTS["memory_eff"]
    elementwise_eff: float = EFFICIENCY_DEFAULTS["elementwise_eff"]
    attention_eff: float = EFFICIENCY_DEFAULTS["attention_eff"]
    kv_read_eff: float = EFFICIENCY_DEFAULTS["kv_read_eff"]
    layer_floor_s: float = EFFICIENCY_DEFAULTS["layer_floor_s"]
    overhead_s: float = EFFICIENCY_DEFAULTS["overhead_s"]
    name = "roofline"

    def __post_init__(self):
        for k in ("compute_eff", "memory_eff", "elementwise_eff", "attention_eff", "kv_read_eff"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ConfigError(f"roofline {k} must be in (0, 1], got {v!r}")
        for k in ("layer_floor_s", "overhead_s"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"roofline {k} must be >= 0 seconds, got {v!r}")
        m, g = self.model, self.gpu
        # Precomputed per-unit times (seconds), so iteration_time is a handful of multiplies.
        object.__setattr__(self, "_flop_s", 1.0 / (g.peak_flops * self.compute_eff))
        object.__setattr__(self, "_attn_flop_s", 1.0 / (g.peak_flops * self.attention_eff))
        weight_s = m.dtype_bytes / (g.hbm_bandwidth * self.memory_eff)
        object.__setattr__(self, "_layer_weights_s", m.num_layers * m.layer_matmul_params * weight_s)
        object.__setattr__(self, "_lm_head_weights_s", m.vocab_size * m.hidden_size * weight_s)
        object.__setattr__(self, "_kv_byte_s", 1.0 / (g.hbm_bandwidth * self.kv_read_eff))
        object.__setattr__(self, "_elementwise_tok_s", elementwise_bytes_per_token(m)
                           / (g.hbm_bandwidth * self.elementwise_eff))
        object.__setattr__(self, "_layer_flops_tok", 2.0 * m.num_layers * m.layer_matmul_params)
        object.__setattr__(self, "_lm_head_flops_row", 2.0 * m.vocab_size * m.hidden_size)
        object.__setattr__(self, "_attn_flops_pair",
                           4.0 * m.num_layers * m.num_heads * m.head_dim)

    # -- phases ---------------------------------------------------------------------------
    def layers_gemm_time(self, num_tokens: int) -> float:
        """The layers' matrix multiplies: compute-bound for prefills, weight-streaming for decodes."""
        return max(self._layer_flops_tok * num_tokens * self._flop_s, self._layer_weights_s)

    def elementwise_time(self, num_tokens: int) -> float:
        m = self.model
        return m.num_layers * max(self.layer_floor_s, self._elementwise_tok_s * num_tokens)

    def dense_time(self, num_tokens: int) -> float:
        """Everything in the layers but attention: what a measured per-operator profile covers."""
        return self.layers_gemm_time(num_tokens) + self.elementwise_time(num_tokens)

    def lm_head_time(self, num_rows: int) -> float:
        """Logits for the sampled positions (one per scheduled request)."""
        return max(self._lm_head_flops_row * num_rows * self._flop_s, self._lm_head_weights_s)

    def prefill_attention_time(self, shape: BatchShape) -> float:
        if not shape.prefill_tokens:
            return 0.0
        compute = self._attn_flops_pair * shape.prefill_attn_pairs * self._attn_flop_s
        memory = shape.prefill_kv_tokens * self.model.kv_bytes_per_token * self._kv_byte_s
        return max(compute, memory)

    def decode_attention_time(self, shape: BatchShape) -> float:
        if not shape.decode_requests:
            return 0.0
        compute = self._attn_flops_pair * shape.decode_kv_tokens * self._attn_flop_s
        memory = shape.decode_kv_tokens * self.model.kv_bytes_per_token * self._kv_byte_s
        return max(compute, memory)

    def attention_time(self, shape: BatchShape) -> float:
        return self.prefill_attention_time(shape) + self.decode_attention_time(shape)

    def iteration_time(self, shape: BatchShape) -> float:
        return (self.overhead_s + self.dense_time(shape.num_tokens)
                + self.lm_head_time(shape.num_requests) + self.attention_time(shape))

    def decode_stretch_times(self, requests: int, kv_tokens: int, iterations: int) -> np.ndarray:
        # iteration_time's operations in its order (no prefill: its attention adds 0.0), on the
        # KV of every iteration at once: only decode attention changes along a stretch.
        base = self.overhead_s + self.dense_time(requests) + self.lm_head_time(requests)
        kv = np.arange(kv_tokens, kv_tokens + iterations * requests, requests, dtype=np.int64)
        compute = self._attn_flops_pair * kv * self._attn_flop_s
        memory = kv * self.model.kv_bytes_per_token * self._kv_byte_s
        return base + (0.0 + np.maximum(compute, memory))

    def describe(self) -> dict:
        return {"cost_model": "roofline", "model": self.model.name, "gpu": self.gpu.name,
                **{k: getattr(self, k) for k in EFFICIENCY_DEFAULTS}}
