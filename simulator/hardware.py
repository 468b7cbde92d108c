"""Model architectures and GPUs the cost models and the KV-capacity calculation know by name."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ConfigError

GiB = 1024 ** 3


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (Llama family: gated MLP, RoPE, LM head untied unless
    ``tied_embeddings``). A mixture of experts (Mixtral) has ``num_experts`` gated MLPs per layer
    and a router sending each token to ``experts_per_token`` of them; a dense model has one."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int        # of one expert's MLP
    vocab_size: int
    max_model_len: int
    dtype_bytes: int = 2          # fp16 / bf16 weights and KV cache
    num_experts: int = 1
    experts_per_token: int = 1
    head_size: int | None = None  # a config's explicit head_dim; default hidden / heads
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def attention_params(self) -> int:
        """One layer's QKV and output projections."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, \
            self.num_kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h

    @property
    def expert_params(self) -> int:
        """One gated MLP (gate, up and down projections)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def router_params(self) -> int:
        return self.hidden_size * self.num_experts if self.num_experts > 1 else 0

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer's matrix multiplies, every expert's: what memory holds."""
        return self.attention_params + self.num_experts * self.expert_params + self.router_params

    @property
    def layer_active_params(self) -> int:
        """Weights one token multiplies by in one layer (its experts only): what it computes."""
        return (self.attention_params + self.experts_per_token * self.expert_params
                + self.router_params)

    def experts_touched(self, num_tokens: float) -> float:
        """Expected distinct experts a layer reads for ``num_tokens`` tokens, each routed to
        ``experts_per_token`` of ``num_experts`` uniformly at random: E (1 - (1 - k/E)^T)."""
        e, k = self.num_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** num_tokens)

    @property
    def embedding_params(self) -> int:
        """Input embedding and LM head (one matrix when tied)."""
        return (1 if self.tied_embeddings else 2) * self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        per_layer = self.layer_matmul_params + 2 * self.hidden_size  # + the two RMSNorm weights
        return self.num_layers * per_layer + self.embedding_params + self.hidden_size

    @property
    def active_params(self) -> int:
        """Parameters one token computes with (equal to num_params for a dense model)."""
        per_layer = self.layer_active_params + 2 * self.hidden_size
        return self.num_layers * per_layer + self.embedding_params + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures: dense FP16/BF16 tensor-core peak (no sparsity), HBM bandwidth, and the
    GPU-to-GPU link a tensor-parallel all-reduce runs over: bytes/s in ONE direction per GPU (a
    datasheet's bidirectional NVLink total halved), None when the preset states none."""

    name: str
    memory_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    link_bandwidth: float | None = None


MODELS: dict[str, ModelSpec] = {m.name: m for m in [
    # Shapes from each model's Hugging Face config.json (docs/cost-models.md lists the keys).
    ModelSpec("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    ModelSpec("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    # meta-llama/Llama-2-70b-hf: grouped-query attention, 8 KV heads.
    ModelSpec("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
    # meta-llama/Meta-Llama-3-70B: Llama 2 70B's layers with Llama 3's vocabulary and context.
    ModelSpec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
    # Llama 3.1 8B: Llama 3 8B's shapes with a 128k context (max_position_embeddings 131072),
    # so that long-prompt traces (Mooncake's, about 12k prompt tokens on average) replay.
    ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072),
    ModelSpec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
    # mistralai/Mixtral-8x7B-v0.1: 8 experts per layer (num_local_experts), 2 per token
    # (num_experts_per_tok).
    ModelSpec("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768, num_experts=8,
              experts_per_token=2),
]}

GB = 10 ** 9
GPUS: dict[str, GPUSpec] = {g.name: g for g in [
    # NVIDIA datasheets: A100 SXM 312 TFLOP/s, 2.039 TB/s (80 GB) / 1.555 TB/s (40 GB);
    # H100 SXM 989 TFLOP/s, 3.35 TB/s; H200 SXM 989 TFLOP/s, 4.8 TB/s, 141 GB; L40S 362 TFLOP/s.
    # Links, same datasheets: NVLink 600 GB/s on A100 SXM (third generation, 12 links), 900 GB/s
    # on H100 and H200 SXM (fourth generation, 18 links), both counted in two directions; the
    # L40S has no NVLink, only PCIe Gen4 x16 (64 GB/s in two directions).
    GPUSpec("a100-40gb", 40 * GiB, 312e12, 1.555e12, 300 * GB),
    GPUSpec("a100-80gb", 80 * GiB, 312e12, 2.039e12, 300 * GB),
    GPUSpec("h100-80gb", 80 * GiB, 989e12, 3.35e12, 450 * GB),
    GPUSpec("h200", 141 * 10 ** 9, 989e12, 4.8e12, 450 * GB),
    GPUSpec("l40s", 48 * GiB, 362e12, 0.864e12, 32 * GB),
]}

MAX_PARALLEL = 64     # GPUs along one parallel dimension: past any single replica deployed


@dataclass(frozen=True)
class Parallelism:
    """How one replica spreads a model over GPUs: ``tp`` GPUs split every layer (Megatron-style
    tensor parallelism, as vLLM shards it), ``pp`` pipeline stages each hold a contiguous run of
    layers; the replica has tp x pp GPUs."""

    tp: int = 1
    pp: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    def check(self, model: "ModelSpec") -> "Parallelism":
        """Refuse a split vLLM would refuse (its Llama attention asserts these divisions)."""
        m, tp, pp = model, self.tp, self.pp
        for name, v in (("tp", tp), ("pp", pp)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_PARALLEL:
                raise ConfigError(f"{name} must be a whole number from 1 to {MAX_PARALLEL}, "
                                  f"got {v!r}")
        if m.num_heads % tp:
            raise ConfigError(f"tp {tp} must divide {m.name}'s {m.num_heads} attention heads")
        if m.num_kv_heads % tp and tp % m.num_kv_heads:
            raise ConfigError(f"tp {tp} and {m.name}'s {m.num_kv_heads} KV heads: one must "
                              f"divide the other (vLLM splits or replicates KV heads)")
        if m.intermediate_size % tp:
            raise ConfigError(f"tp {tp} must divide {m.name}'s MLP width "
                              f"{m.intermediate_size}")
        if pp > m.num_layers:
            raise ConfigError(f"pp {pp} is more stages than {m.name}'s {m.num_layers} layers")
        return self

    def stage_layers(self, model: "ModelSpec") -> int:
        """Layers of the largest stage (vLLM spreads a remainder over the stages)."""
        return -(-model.num_layers // self.pp)

    def kv_heads_per_gpu(self, model: "ModelSpec") -> int:
        """vLLM splits KV heads over the tp GPUs, and replicates them when there are fewer
        heads than GPUs, so each GPU holds at least one (ModelConfig.get_num_kv_heads)."""
        return max(1, model.num_kv_heads // self.tp)

    def kv_bytes_per_token(self, model: "ModelSpec") -> int:
        """KV bytes one token takes on each GPU of the largest stage."""
        return (2 * self.stage_layers(model) * self.kv_heads_per_gpu(model) * model.head_dim
                * model.dtype_bytes)

    def weight_bytes_per_gpu(self, model: "ModelSpec") -> float:
        """Weights on each GPU of the largest stage: its layers' matrices and the embeddings
        split tp ways (vocabulary-parallel), RMSNorm weights whole on every GPU. With stages, a
        stage holds one of the embedding and the LM head (the first and last stage)."""
        if self.gpus == 1:
            return model.weight_bytes
        h = model.hidden_size
        embeddings = model.embedding_params if self.pp == 1 else model.vocab_size * h
        params = (self.stage_layers(model) * (model.layer_matmul_params / self.tp + 2 * h)
                  + embeddings / self.tp + h)
        return params * model.dtype_bytes


def model_spec(name: str) -> ModelSpec:
    """A preset by name, or the architecture in a Hugging Face config.json (a path to the file
    or to the model folder holding it)."""
    if name in MODELS:
        return MODELS[name]
    from pathlib import Path
    if name.endswith(".json") or "/" in name or Path(name).exists():
        return model_from_hf_config(name)
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}, or give a "
                      f"Hugging Face config.json")


def gpu_spec(name: str) -> GPUSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise ConfigError(f"unknown gpu {name!r}; choose one of: {', '.join(GPUS)}")


# Hugging Face config.json keys of the decoder families modelled (a Llama layer: RoPE attention,
# gated MLP, RMSNorm; Mixtral: sparse experts of that MLP). qwen2 adds biases to the QKV
# projections, a few thousand parameters per layer that the model leaves out.
HF_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3")
HF_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings")
MAX_HF_CONFIG_BYTES = 1 << 20


def model_from_hf_config(path) -> ModelSpec:
    """The ``ModelSpec`` of a Hugging Face ``config.json`` (llama / mistral / mixtral / qwen2
    keys), named by ``path`` as given. Weights and KV are taken as 16-bit whatever the file's
    torch_dtype: vLLM's dtype auto serves float32 checkpoints in 16 bits too."""
    import json
    from pathlib import Path

    from traces.files import read_text

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    where = f"model config {p}"
    text = read_text(p, ConfigError, "model config", MAX_HF_CONFIG_BYTES)
    try:
        c = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not JSON: line {e.lineno}, column {e.colno}: {e.msg}") \
            from None
    if not isinstance(c, dict):
        raise ConfigError(f"{where}: expected a JSON object of config keys")
    kind = c.get("model_type")
    if kind is not None and kind not in HF_MODEL_TYPES:
        raise ConfigError(f"{where}: model_type {kind!r} is not modelled; supported: "
                          f"{', '.join(HF_MODEL_TYPES)}")
    if "moe_intermediate_size" in c or "shared_expert_intermediate_size" in c:
        raise ConfigError(f"{where}: shared-expert mixtures (moe_intermediate_size) are not "
                          f"modelled; Mixtral-style experts (num_local_experts) are")

    def count(key: str, default=None) -> int:
        if key not in c or c[key] is None:
            if default is None:
                raise ConfigError(f"{where}: missing key {key!r} (a llama/mistral/mixtral/qwen2 "
                                  f"config.json has it)")
            return default
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}: key {key!r} must be a positive whole number, "
                              f"got {v!r}")
        return v

    layers, hidden, heads, ffn, vocab, context = (count(k) for k in HF_REQUIRED)
    kv_heads = count("num_key_value_heads", heads)
    head_size = count("head_dim") if c.get("head_dim") is not None else None
    if head_size is None and hidden % heads:
        raise ConfigError(f"{where}: hidden_size {hidden} is not a multiple of "
                          f"num_attention_heads {heads}; give head_dim")
    if head_size == hidden // heads:
        head_size = None     # the default: the same spec as a preset's
    experts = count("num_local_experts", 1)
    per_token = count("num_experts_per_tok", 1) if experts > 1 else 1
    if per_token > experts:
        raise ConfigError(f"{where}: num_experts_per_tok {per_token} is more than "
                          f"num_local_experts {experts}")
    if heads % kv_heads:
        raise ConfigError(f"{where}: num_attention_heads {heads} is not a multiple of "
                          f"num_key_value_heads {kv_heads}")
    tied = c.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise ConfigError(f"{where}: key 'tie_word_embeddings' must be true or false, "
                          f"got {tied!r}")
    return ModelSpec(str(path), layers, hidden, heads, kv_heads, ffn, vocab, context,
                     num_experts=experts, experts_per_token=per_token, head_size=head_size,
                     tied_embeddings=tied)


def kv_capacity_tokens(model: ModelSpec, gpu: GPUSpec, gpu_memory_utilization: float = 0.9,
                       activation_reserve_bytes: int = 2 * GiB, block_size: int = 16,
                       parallel: Parallelism = Parallelism()) -> int:
    """KV tokens that fit after weights and an activation reserve, rounded down to whole blocks.

    vLLM sizes the cache the same way: utilization x memory, minus weights, minus the peak
    activation memory it profiles (a fixed reserve here), on every GPU of the replica; with
    ``parallel`` each GPU holds its share of the weights and of each token's KV, and the
    replica's capacity is what its fullest GPU (of the largest stage) holds.
    """
    what = model.name if parallel.gpus == 1 else f"{model.name} at tp {parallel.tp} pp " \
        f"{parallel.pp}"
    free = gpu.memory_bytes * gpu_memory_utilization - parallel.weight_bytes_per_gpu(model) \
        - activation_reserve_bytes
    if free <= 0:
        raise ConfigError(f"{what} does not fit on {gpu.name} at "
                          f"gpu_memory_utilization={gpu_memory_utilization}: no room for KV cache "
                          f"({parallel.weight_bytes_per_gpu(model) / GiB:.1f} GiB of weights per "
                          f"GPU; split it over more GPUs with tp or pp)")
    blocks = int(free // (parallel.kv_bytes_per_token(model) * block_size))
    if blocks < 1:
        raise ConfigError(f"{what} on {gpu.name}: less than one KV block fits")
    return blocks * block_size
