"""``--model path/to/config.json``: a Hugging Face config read into the same spec as a preset,
and one line with exit status 2 for a file that is not one."""

from __future__ import annotations

import dataclasses
import json

import pytest

from simulator.cli import main
from simulator.errors import ConfigError
from simulator.hardware import MODELS, model_from_hf_config, model_spec
from simulator.vllm.models import hf_config

# The config.json files published with the models (the keys that shape the model, and some
# others each file has, which the reader must pass over).
LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.31.0.dev0",
    "use_cache": True, "vocab_size": 32000}
LLAMA_2_70B = {**LLAMA_2_7B, "hidden_size": 8192, "intermediate_size": 28672,
               "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8}
LLAMA_3_70B = {**LLAMA_2_70B, "bos_token_id": 128000, "eos_token_id": 128001,
               "max_position_embeddings": 8192, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
               "vocab_size": 128256}
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
    "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 32000}
QWEN2_0_5B = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 896,
    "intermediate_size": 4864, "max_position_embeddings": 131072, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
    "vocab_size": 151936}


def write(tmp_path, config, name="config.json"):
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def same_spec(a, b) -> bool:
    return dataclasses.replace(a, name="") == dataclasses.replace(b, name="")


@pytest.mark.parametrize("preset,config", [("llama-2-7b", LLAMA_2_7B),
                                           ("llama-2-70b", LLAMA_2_70B),
                                           ("llama-3-70b", LLAMA_3_70B),
                                           ("mixtral-8x7b", MIXTRAL_8X7B)])
def test_a_published_config_gives_the_presets_spec(tmp_path, preset, config):
    path = write(tmp_path, config)
    spec = model_spec(str(path))
    assert spec.name == str(path)
    assert same_spec(spec, MODELS[preset])
    assert same_spec(model_spec(str(tmp_path)), MODELS[preset])      # the folder holding it


@pytest.mark.parametrize("preset", list(MODELS))
def test_every_preset_round_trips_through_its_config(tmp_path, preset):
    """hf_config (what `servesim model config` writes for vLLM) and the reader agree."""
    path = write(tmp_path, hf_config(MODELS[preset]))
    assert same_spec(model_from_hf_config(path), MODELS[preset])


def test_qwen2_with_tied_embeddings_and_an_explicit_head_dim(tmp_path):
    qwen = model_from_hf_config(write(tmp_path, QWEN2_0_5B))
    assert (qwen.num_layers, qwen.hidden_size, qwen.num_heads, qwen.num_kv_heads,
            qwen.head_dim) == (24, 896, 14, 2, 64)
    assert qwen.tied_embeddings and qwen.embedding_params == 151936 * 896
    # Qwen2-0.5B: 494 M parameters, less its QKV biases (0.1 M), which the model leaves out.
    assert qwen.num_params / 1e6 == pytest.approx(494.0 - 0.1, abs=0.2)
    # A head size that is not hidden / heads (Mistral-Nemo style: 5120 hidden, 32 x 128).
    nemo = model_from_hf_config(write(tmp_path, {**LLAMA_2_7B, "hidden_size": 5120,
                                                 "head_dim": 128, "num_key_value_heads": 8},
                                      "nemo.json"))
    assert nemo.head_dim == 128
    assert nemo.attention_params == 5120 * 4096 * 2 + 2 * 5120 * 8 * 128
    assert nemo.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


def test_a_run_takes_a_config_path_and_matches_the_preset(tmp_path, capsys):
    path = write(tmp_path, LLAMA_2_70B)
    outs = {}
    for model in (str(path), "llama-2-70b"):
        code = main(["run", "--json", "-q", "-n", "30", "--rate", "4", "--gpu", "h100-80gb",
                     "--tp", "4", "--model", model, "--output-len", "4:32"])
        out, err = capsys.readouterr()
        assert code == 0, err
        outs[model] = json.loads(out)
    a, b = outs[str(path)], outs["llama-2-70b"]
    assert a["model"] == str(path) and b["model"] == "llama-2-70b"
    assert a["kv_capacity_tokens"] == b["kv_capacity_tokens"]
    assert a["mean_e2el_ms"] == b["mean_e2el_ms"] and a["mean_ttft_ms"] == b["mean_ttft_ms"]


BAD = [
    ('{"hidden_size": 4096,', "not JSON: line 1, column 22"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({k: v for k, v in LLAMA_2_7B.items() if k != "num_hidden_layers"}),
     "missing key 'num_hidden_layers'"),
    (json.dumps({**LLAMA_2_7B, "hidden_size": "4096"}), "key 'hidden_size' must be a positive"),
    (json.dumps({**LLAMA_2_7B, "num_key_value_heads": 0}), "key 'num_key_value_heads'"),
    (json.dumps({**LLAMA_2_7B, "num_key_value_heads": 5}), "not a multiple of "
                                                           "num_key_value_heads 5"),
    (json.dumps({**LLAMA_2_7B, "model_type": "gpt2"}), "model_type 'gpt2' is not modelled"),
    (json.dumps({**MIXTRAL_8X7B, "num_experts_per_tok": 9}), "num_experts_per_tok 9 is more"),
    (json.dumps({**LLAMA_2_7B, "moe_intermediate_size": 1408}), "shared-expert"),
    (json.dumps({**LLAMA_2_7B, "hidden_size": 4100}), "not a multiple of num_attention_heads"),
    (json.dumps({**LLAMA_2_7B, "tie_word_embeddings": "no"}), "'tie_word_embeddings'"),
    (b"\xff\xfe\x00garbage", "config.json"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path, capsys, text, message):
    path = tmp_path / "config.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        model_spec(str(path))
    assert main(["run", "-q", "-n", "3", "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err


def test_a_missing_file_or_folder_without_config(tmp_path, capsys):
    for model, message in ((str(tmp_path / "nope.json"), "does not exist"),
                           (str(tmp_path), "config.json")):
        with pytest.raises(ConfigError, match=message):
            model_spec(model)
        assert main(["run", "-q", "-n", "3", "--model", model]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and model in err
    with pytest.raises(ConfigError, match="unknown model 'llama-9b'.*Hugging Face config.json"):
        model_spec("llama-9b")
