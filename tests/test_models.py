"""``servesim model tiny|config``: model folders made locally that transformers (and so vLLM) load
by path, seeded, with a tokenizer that covers everything ``servesim bench`` sends."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from simulator.cli import main  # noqa: E402
from simulator.hardware import model_spec  # noqa: E402
from simulator.vllm.bench import FILLER_WORD, prompt_ids  # noqa: E402
from simulator.vllm.models import SPECIAL_TOKENS, TINY  # noqa: E402
from traces.request import Request  # noqa: E402

BENCH_ID_LIMIT = 20000       # bench draws prompt ids below this


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    assert main(["model", "tiny", str(folder), "--seed", "3"]) == 0
    return folder


def test_tiny_model_loads_with_transformers_and_runs(tiny):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == \
        ("llama", TINY.num_layers, TINY.hidden_size)
    assert config.vocab_size == TINY.vocab_size
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(torch.tensor([[5, 17, 19999]])).logits
    assert logits.shape == (1, 3, TINY.vocab_size)
    assert torch.isfinite(logits).all()


def test_same_seed_same_bytes_other_seed_other_weights(tiny, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["model", "tiny", str(again), "--seed", "3"]) == 0
    assert main(["model", "tiny", str(other), "--seed", "4"]) == 0
    names = sorted(p.name for p in tiny.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    assert (tiny / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (tiny / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_every_token_id_bench_sends_round_trips(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    assert len(tok) == TINY.vocab_size
    # bench's prompts are drawn below BENCH_ID_LIMIT, never among the special tokens
    drawn = prompt_ids(Request(7, 0.0, 5000, 1), seed=0)
    assert len(SPECIAL_TOKENS) <= min(drawn) and max(drawn) < BENCH_ID_LIMIT
    ids = list(range(len(SPECIAL_TOKENS), BENCH_ID_LIMIT))
    text = tok.decode(ids)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_text_filler_word_is_one_token(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    one = tok(FILLER_WORD, add_special_tokens=False)["input_ids"]
    assert len(one) == 1 and one[0] not in tok.all_special_ids
    assert tok(FILLER_WORD * 700, add_special_tokens=False)["input_ids"] == one * 700


def test_config_model_has_the_presets_shape(tmp_path):
    from transformers import AutoConfig, AutoTokenizer
    out = tmp_path / "llama"
    assert main(["model", "config", "llama-2-7b", str(out), "--max-model-len", "8192"]) == 0
    spec = model_spec("llama-2-7b")
    raw = json.loads((out / "config.json").read_text())
    config = AutoConfig.from_pretrained(out)
    assert raw["architectures"] == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size,
            config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == \
        (spec.num_layers, spec.hidden_size, spec.intermediate_size, spec.num_heads,
         spec.num_kv_heads, spec.vocab_size)
    assert config.max_position_embeddings == 8192
    assert not list(out.glob("*.safetensors"))          # weights come from --load-format dummy
    assert len(AutoTokenizer.from_pretrained(out)) == spec.vocab_size


def test_a_model_folder_can_be_written_again(tiny):
    """A folder that already holds a model is rewritten in place (same seed, same bytes)."""
    before = (tiny / "model.safetensors").read_bytes()
    assert main(["model", "tiny", str(tiny), "--seed", "3"]) == 0
    assert (tiny / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("case", ["a file", "not empty", "unknown preset", "odd hidden size",
                                  "cannot create"])
def test_bad_folders_and_values_are_one_line_exit_2(tmp_path, capsys, case):
    target = tmp_path / "m"
    if case == "a file":
        target.write_text("x")
        argv, words = ["model", "tiny", str(target)], "is a file"
    elif case == "not empty":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        argv, words = ["model", "tiny", str(target)], "is not empty and holds no model"
    elif case == "unknown preset":
        argv, words = ["model", "config", "llama-9", str(target)], "unknown model 'llama-9'"
    elif case == "odd hidden size":
        argv, words = ["model", "tiny", str(target), "--hidden-size", "18"], "multiple of 4"
    else:
        (tmp_path / "file").write_text("x")
        argv, words = ["model", "tiny", str(tmp_path / "file" / "m")], "cannot create"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("servesim: error:") and err.count("\n") == 1 and words in err, err
    if case == "not empty":
        assert [p.name for p in target.iterdir()] == ["notes.txt"]     # left untouched
