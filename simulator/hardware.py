"""Model architectures and GPUs the cost models and the KV-capacity calculation know by name."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ConfigError

GiB = 1024 ** 3


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (Llama family: gated MLP, RoPE, untied LM head)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    dtype_bytes: int = 2          # fp16 / bf16 weights and KV cache

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer's matrix multiplies: QKV and output projections, gated MLP."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        return h * h + 2 * h * kv + h * h + 3 * h * self.intermediate_size

    @property
    def num_params(self) -> int:
        per_layer = self.layer_matmul_params + 2 * self.hidden_size  # + the two RMSNorm weights
        embeddings = 2 * self.vocab_size * self.hidden_size          # input embedding + LM head
        return self.num_layers * per_layer + embeddings + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures: dense FP16/BF16 tensor-core peak (no sparsity) and HBM bandwidth."""

    name: str
    memory_bytes: int
    peak_flops: float
    hbm_bandwidth: float


MODELS: dict[str, ModelSpec] = {m.name: m for m in [
    # Shapes from each model's Hugging Face config.json.
    ModelSpec("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    ModelSpec("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
    # Llama 3.1 8B: Llama 3 8B's shapes with a 128k context (max_position_embeddings 131072),
    # so that long-prompt traces (Mooncake's, about 12k prompt tokens on average) replay.
    ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072),
    ModelSpec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
]}

GPUS: dict[str, GPUSpec] = {g.name: g for g in [
    # NVIDIA datasheets: A100 SXM 312 TFLOP/s, 2.039 TB/s (80 GB) / 1.555 TB/s (40 GB);
    # H100 SXM 989 TFLOP/s, 3.35 TB/s; H200 SXM 989 TFLOP/s, 4.8 TB/s, 141 GB; L40S 362 TFLOP/s.
    GPUSpec("a100-40gb", 40 * GiB, 312e12, 1.555e12),
    GPUSpec("a100-80gb", 80 * GiB, 312e12, 2.039e12),
    GPUSpec("h100-80gb", 80 * GiB, 989e12, 3.35e12),
    GPUSpec("h200", 141 * 10 ** 9, 989e12, 4.8e12),
    GPUSpec("l40s", 48 * GiB, 362e12, 0.864e12),
]}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def gpu_spec(name: str) -> GPUSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise ConfigError(f"unknown gpu {name!r}; choose one of: {', '.join(GPUS)}")


def kv_capacity_tokens(model: ModelSpec, gpu: GPUSpec, gpu_memory_utilization: float = 0.9,
                       activation_reserve_bytes: int = 2 * GiB, block_size: int = 16) -> int:
    """KV tokens that fit after weights and an activation reserve, rounded down to whole blocks.

    vLLM sizes the cache the same way: utilization x memory, minus weights, minus the peak
    activation memory it profiles (a fixed reserve here).
    """
    free = gpu.memory_bytes * gpu_memory_utilization - model.weight_bytes - activation_reserve_bytes
    if free <= 0:
        raise ConfigError(f"{model.name} does not fit on {gpu.name} at "
                          f"gpu_memory_utilization={gpu_memory_utilization}: no room for KV cache")
    blocks = int(free // (model.kv_bytes_per_token * block_size))
    if blocks < 1:
        raise ConfigError(f"{model.name} on {gpu.name}: less than one KV block fits")
    return blocks * block_size
