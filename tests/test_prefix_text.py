"""Prefix identity from prompt text (traces/prompt_text.py): chained keys of 16-token text
blocks, their mapping onto the replica's blocks, and a hand-made vLLM custom JSONL trace whose
hit rate through the CLI equals a closed form from the texts' common prefixes."""

from __future__ import annotations

import json
import os
import string

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from simulator.cli import main
from simulator.prefix_cache import block_hashes
from traces.loaders import read_trace
from traces.prompt_text import TEXT_BLOCK_TOKENS, text_block_keys
from traces.request import PROMPT_TEXT

CPT = 4.0                                   # the loader's default characters per token
BLOCK_CHARS = int(TEXT_BLOCK_TOKENS * CPT)  # 64 characters per 16-token text block


def _jsonl(path, prompts, output_tokens=8):
    path.write_text("".join(json.dumps({"prompt": p, "output_tokens": output_tokens}) + "\n"
                            for p in prompts))
    return path


def _hashes(request, block_size: int, blocks: int) -> list[int]:
    """The simulator's first ``blocks`` block hashes of a request (simulator/prefix_cache.py)."""
    out: list[int] = []
    for batch in block_hashes(request.prefix, request.request_id, request.prompt_tokens,
                              block_size):
        out += batch
        if len(out) >= blocks:
            return out[:blocks]


@pytest.mark.parametrize("shared_blocks", [0, 1, 5])
@pytest.mark.parametrize("block_size", [16, 32])
def test_prompts_sharing_n_text_blocks_share_exactly_n_block_hashes(tmp_path, shared_blocks,
                                                                    block_size):
    """Two prompts whose texts agree on their first N x 64 characters (N 16-token blocks at 4
    characters per token) and then differ share exactly N text keys, and the replica's blocks
    over them: N x 16 / block_size block hashes, none after."""
    head = "".join(string.ascii_letters[i % 52] for i in range(shared_blocks * BLOCK_CHARS))
    a, b = head + "x" * 700, head + "y" * 700
    w = read_trace(_jsonl(tmp_path / "t.jsonl", [a, b]))
    assert "16-token blocks of 4-character tokens" in w.meta["prefix_identity"]
    ka, kb = w.frame["text_blocks"]
    assert len(ka) == len(kb) == len(a) // BLOCK_CHARS
    assert [x == y for x, y in zip(ka, kb)] == [True] * shared_blocks + \
        [False] * (len(ka) - shared_blocks)
    ra, rb = w.requests()
    assert {ns for ns, _, _ in ra.prefix.runs} == {PROMPT_TEXT}
    n = len(ka) * TEXT_BLOCK_TOKENS // block_size
    ha, hb = _hashes(ra, block_size, n), _hashes(rb, block_size, n)
    equal = shared_blocks * TEXT_BLOCK_TOKENS // block_size
    assert [x == y for x, y in zip(ha, hb)] == [True] * equal + [False] * (n - equal)
    assert len(set(ha) & set(hb)) == equal


def test_a_different_first_character_shares_nothing(tmp_path):
    text = "The quick brown fox jumps over the lazy dog. " * 40
    w = read_trace(_jsonl(tmp_path / "t.jsonl", [text, "t" + text[1:]]))
    ka, kb = w.frame["text_blocks"]
    assert len(ka) == len(kb) > 20 and not set(ka) & set(kb)
    ra, rb = w.requests()
    n = len(ka)
    assert not set(_hashes(ra, 16, n)) & set(_hashes(rb, 16, n))


@settings(max_examples=60, deadline=None)
@given(common=st.integers(0, 900), cpt=st.sampled_from([1.0, 2.5, 3.0, 4.0, 4.7]),
       tail_a=st.integers(0, 300), tail_b=st.integers(1, 300))
def test_shared_keys_are_the_whole_blocks_inside_the_common_text(common, cpt, tail_a, tail_b):
    """Closed form: block j (characters [round(16 j c), round(16 (j+1) c))) is shared iff it
    ends inside the common text and inside both prompts' estimated tokens."""
    head = "".join(string.printable[i % 90] for i in range(common))
    a, b = head + "A" * tail_a, head + "B" + "b" * (tail_b - 1)
    tokens = [max(1, round(len(t) / cpt)) for t in (a, b)]
    ka, kb = (text_block_keys(t, cpt, n) for t, n in zip((a, b), tokens))
    for keys, text, n in ((ka, a, tokens[0]), (kb, b, tokens[1])):
        assert len(keys) == sum(1 for j in range(n // 16) if round(16 * (j + 1) * cpt) <= len(text))
    shared = sum(1 for j in range(min(len(ka), len(kb))) if round(16 * (j + 1) * cpt) <= common)
    assert [x == y for x, y in zip(ka, kb)] == [True] * shared + \
        [False] * (min(len(ka), len(kb)) - shared)


def _common(x: str, y: str) -> int:
    return len(os.path.commonprefix([x, y]))


@pytest.mark.parametrize("block_size", [16, 32])
def test_hit_rate_of_a_hand_made_custom_trace_through_the_cli(tmp_path, capsys, block_size):
    """A system text of 3 blocks and 100 own characters; the same system text with other own
    text; that prompt extended; a prompt that differs in its first character; a repeat of the
    first. One request every 100 s (each finds every earlier prompt cached, nothing evicted):
    each request's hit is the whole text blocks it shares with an earlier prompt (its longest
    common character prefix, in 64-character blocks, within both prompts' whole blocks), in
    tokens, cut to all its tokens but one and down to whole replica blocks."""
    system = "You are a helpful assistant. Answer briefly and cite sources. " * 4
    system = system[:3 * BLOCK_CHARS]
    prompts = [system + "q" * 100, system + "r" * 100, system + "r" * 100 + "more " * 30,
               "Z" + system[1:] + "q" * 100, system + "q" * 100]
    path = _jsonl(tmp_path / "chat.jsonl", prompts)
    tokens = [max(1, round(len(p) / CPT)) for p in prompts]
    whole = [min(n // 16, len(p) // BLOCK_CHARS) for p, n in zip(prompts, tokens)]
    expected = []
    for i, p in enumerate(prompts):
        blocks = max([min(_common(p, q) // BLOCK_CHARS, whole[i], whole[j])
                      for j, q in enumerate(prompts[:i])], default=0)
        expected.append(min(blocks * 16, tokens[i] - 1) // block_size * block_size)
    assert expected[1] > 0 and expected[2] > expected[1] and expected[3] == 0  # not vacuous
    out = tmp_path / "run"
    code = main(["run", "-q", "--trace", str(path), "--arrival", "deterministic",
                 "--rate", "0.01", "--block-size", str(block_size), "--out", str(out)])
    assert code == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    requests = pd.read_csv(out / "requests.csv")
    assert requests["cached_prompt_tokens"].tolist() == expected
    assert summary["prefix_cache_hit_rate"] == pytest.approx(sum(expected) / sum(tokens))
    assert summary["prefix_cache_evictions"] == 0
