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

Parallelism (``Parallelism``; docs/cost-models.md states the model): with tensor parallelism tp
every phase above runs on each GPU with 1/tp of the FLOPs, weights and KV heads, and each layer
adds two ring all-reduces of the tokens' hidden states (after attention, after the MLP),
2 (tp-1)/tp x bytes / link bandwidth + ``link_latency_s`` each. With pp pipeline stages the
batch is the union of up to pp micro-batches in flight (vLLM keeps pp batches queued to fill
the pipeline; a request is in one of them), so an iteration, in which every request advances
once, lasts the longer of the heaviest micro-batch's trip through the stages (with pp-1
hand-overs of its hidden states) and the busiest stage's work on all of them (``pipelined``).
Mixture-of-experts layers compute with the token's experts only and stream the weights of the
experts the batch's tokens reach (``ModelSpec.experts_touched``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from simulator.cost.base import BatchShape, CostModel
from simulator.errors import ConfigError
from simulator.hardware import GPUSpec, ModelSpec, Parallelism


def elementwise_bytes_per_token(model: ModelSpec, tp: int = 1) -> int:
    """Activation bytes one layer's element-wise kernels (two RMSNorms, RoPE, residual add,
    SiLU-and-multiply) move per token, counted as 10 h + 3 ffn values: about one read and one
    write of each kernel's inputs. ``elementwise_eff`` is fitted against exactly this count
    (experiments/calibrate_roofline.py), so a different count would change the fitted
    efficiency, not the predicted times. The 3 ffn values are per expert a token uses, split
    over tp GPUs with the MLP; the 10 h (norms, residuals) are whole on every GPU."""
    ffn = model.intermediate_size * model.experts_per_token // tp
    return (10 * model.hidden_size + 3 * ffn) * model.dtype_bytes


EFFICIENCY_DEFAULTS = {
    "compute_eff": 0.70,
    "memory_eff": 0.75,
    "elementwise_eff": 0.45,
    "attention_eff": 0.5,
    "kv_read_eff": 0.6,
    "layer_floor_s": 22e-6,
    "overhead_s": 3e-3,
}
# The GPU link of tensor and pipeline parallelism. The latency of one all-reduce or stage
# hand-over is an assumption (the order of a small-message collective within an NVLink node),
# not a measurement; the bandwidth defaults to the GPU preset's (simulator/hardware.py).
LINK_DEFAULTS = {
    "link_latency_s": 10e-6,
    "link_bandwidth_gbs": None,
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
    parallel: Parallelism = Parallelism()
    link_latency_s: float = LINK_DEFAULTS["link_latency_s"]
    link_bandwidth_gbs: float | None = LINK_DEFAULTS["link_bandwidth_gbs"]
    name = "roofline"

    def __post_init__(self):
        for k in ("compute_eff", "memory_eff", "elementwise_eff", "attention_eff", "kv_read_eff"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ConfigError(f"roofline {k} must be in (0, 1], got {v!r}")
        for k in ("layer_floor_s", "overhead_s", "link_latency_s"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"roofline {k} must be >= 0 seconds, got {v!r}")
        bw_gbs = self.link_bandwidth_gbs
        if bw_gbs is not None and not (isinstance(bw_gbs, (int, float)) and bw_gbs > 0):
            raise ConfigError(f"roofline link_bandwidth_gbs must be > 0 GB/s, got {bw_gbs!r}")
        m, g, par = self.model, self.gpu, self.parallel
        link = bw_gbs * 1e9 if bw_gbs is not None else g.link_bandwidth
        if par.gpus > 1 and not link:
            raise ConfigError(f"tp {par.tp} x pp {par.pp} needs a GPU link bandwidth: gpu "
                              f"{g.name} states none (give cost_params link_bandwidth_gbs)")
        par.check(m)
        # Precomputed per-unit times (seconds) on one GPU of the largest stage, so that
        # iteration_time is a handful of multiplies. tp divides FLOPs and weights.
        tp, layers = par.tp, par.stage_layers(m)
        set_ = functools.partial(object.__setattr__, self)
        set_("_flop_s", 1.0 / (g.peak_flops * self.compute_eff))
        set_("_attn_flop_s", 1.0 / (g.peak_flops * self.attention_eff))
        weight_s = m.dtype_bytes / (g.hbm_bandwidth * self.memory_eff)
        set_("_layer_weights_s", layers * m.layer_matmul_params / tp * weight_s)
        # A mixture of experts streams its attention and router always, experts as reached.
        set_("_shared_weights_s", layers * (m.attention_params + m.router_params) / tp * weight_s)
        set_("_expert_weights_s", layers * m.expert_params / tp * weight_s)
        set_("_lm_head_weights_s", m.vocab_size * m.hidden_size / tp * weight_s)
        set_("_kv_bytes_token", par.kv_bytes_per_token(m))
        set_("_kv_byte_s", 1.0 / (g.hbm_bandwidth * self.kv_read_eff))
        set_("_elementwise_tok_s", elementwise_bytes_per_token(m, tp)
             / (g.hbm_bandwidth * self.elementwise_eff))
        set_("_layer_flops_tok", 2.0 * layers * m.layer_active_params / tp)
        set_("_lm_head_flops_row", 2.0 * m.vocab_size * m.hidden_size / tp)
        set_("_attn_flops_pair", 4.0 * layers * m.num_heads * m.head_dim / tp)
        set_("_link", link)
        hidden_bytes = m.hidden_size * m.dtype_bytes        # one token's hidden state
        set_("_allreduce_tok_s", 2 * (tp - 1) / tp * hidden_bytes / link if tp > 1 else 0.0)
        set_("_transfer_tok_s", hidden_bytes / link if par.pp > 1 else 0.0)

    # -- phases ---------------------------------------------------------------------------
    def layers_gemm_time(self, num_tokens: int) -> float:
        """The layers' matrix multiplies: compute-bound for prefills, weight-streaming for decodes."""
        if self.model.num_experts > 1:
            weights = (self._shared_weights_s
                       + self.model.experts_touched(num_tokens) * self._expert_weights_s)
        else:
            weights = self._layer_weights_s
        return max(self._layer_flops_tok * num_tokens * self._flop_s, weights)

    def elementwise_time(self, num_tokens: int) -> float:
        layers = self.parallel.stage_layers(self.model)
        return layers * max(self.layer_floor_s, self._elementwise_tok_s * num_tokens)

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
        memory = shape.prefill_kv_tokens * self._kv_bytes_token * self._kv_byte_s
        return max(compute, memory)

    def decode_attention_time(self, shape: BatchShape) -> float:
        if not shape.decode_requests:
            return 0.0
        compute = self._attn_flops_pair * shape.decode_kv_tokens * self._attn_flop_s
        memory = shape.decode_kv_tokens * self._kv_bytes_token * self._kv_byte_s
        return max(compute, memory)

    def attention_time(self, shape: BatchShape) -> float:
        return self.prefill_attention_time(shape) + self.decode_attention_time(shape)

    def allreduce_time(self, num_tokens: float) -> float:
        """Tensor parallelism: two ring all-reduces of the tokens' hidden states per layer."""
        if self.parallel.tp == 1:
            return 0.0
        layers = self.parallel.stage_layers(self.model)
        return layers * 2 * (self._allreduce_tok_s * num_tokens + self.link_latency_s)

    def stage_transfer_time(self, num_tokens: float) -> float:
        """Pipeline parallelism: one micro-batch's hidden states to the next stage."""
        return self._transfer_tok_s * num_tokens + self.link_latency_s

    def stage_layers_time(self, shape: BatchShape) -> float:
        """The layers of the largest stage (all layers without pipeline parallelism) on
        ``shape``: dense phases, attention and all-reduces."""
        return (self.dense_time(shape.num_tokens) + self.attention_time(shape)
                + self.allreduce_time(shape.num_tokens))

    def pipelined(self, layers_time, shape: BatchShape, overhead_s: float) -> float:
        """An iteration from ``layers_time`` (a stage's layers as a function of a batch) and
        the LM head on the last stage. The batch's requests form m = min(pp, requests)
        micro-batches in flight, the decodes spread evenly over all m and the prefills over
        p = min(m, prefilling requests) of them (a request's prompt is in one micro-batch). A
        round, in which each request advances once, lasts the longer of the heaviest
        micro-batch's trip (pp stages, the head, pp-1 hand-overs) and the busiest stage's work
        (the last: every micro-batch's layers and head). Every stage is priced as the largest
        (vLLM gives the last stage no more layers than the others); the per-iteration overhead
        counts once."""
        pp = self.parallel.pp
        if pp == 1:
            return overhead_s + layers_time(shape) + self.lm_head_time(shape.num_requests)
        m = min(pp, max(1.0, shape.num_requests))
        p = min(m, shape.prefill_requests)
        heavy = shape.share(p, m)
        heavy_layers = layers_time(heavy)
        heavy_head = self.lm_head_time(heavy.num_requests)
        busy = p * (heavy_layers + heavy_head) if p else 0.0
        if m > p:                 # micro-batches of decodes only
            light = shape.share(0, m)
            busy += (m - p) * (layers_time(light) + self.lm_head_time(light.num_requests))
        trip = (pp * heavy_layers + heavy_head
                + (pp - 1) * self.stage_transfer_time(heavy.num_tokens))
        return overhead_s + max(trip, busy)

    def iteration_time(self, shape: BatchShape) -> float:
        if self.parallel.gpus == 1:       # the single-GPU sum, in its order (bit for bit)
            return (self.overhead_s + self.dense_time(shape.num_tokens)
                    + self.lm_head_time(shape.num_requests) + self.attention_time(shape))
        return self.pipelined(self.stage_layers_time, shape, self.overhead_s)

    def decode_stretch_times(self, requests: int, kv_tokens: int, iterations: int) -> np.ndarray:
        # iteration_time's operations in its order (no prefill: its attention adds 0.0), on the
        # KV of every iteration at once: only decode attention changes along a stretch.
        base = self.overhead_s + self.dense_time(requests) + self.lm_head_time(requests)
        kv = np.arange(kv_tokens, kv_tokens + iterations * requests, requests, dtype=np.int64)
        compute = self._attn_flops_pair * kv * self._attn_flop_s
        memory = kv * self.model.kv_bytes_per_token * self._kv_byte_s
        return base + (0.0 + np.maximum(compute, memory))

    def describe(self) -> dict:
        out = {"cost_model": "roofline", "model": self.model.name, "gpu": self.gpu.name,
               **{k: getattr(self, k) for k in EFFICIENCY_DEFAULTS}}
        if self.parallel.gpus > 1:
            out.update(tp=self.parallel.tp, pp=self.parallel.pp,
                       link_latency_s=self.link_latency_s, link_bandwidth_gbs=self._link / 1e9)
        return out
