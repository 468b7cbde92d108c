"""Prefix identity from prompt text, for traces that carry the text (``vllm-custom``).

vLLM identifies a full KV block by a hash chained on its parent block's hash and its token ids
(``vllm/v1/core/kv_cache_utils.py: hash_block_tokens``). servesim has no tokenizer, so the
text stands in for the token ids:

- **Tokens.** The prompt's tokens are estimated as characters / ``chars_per_token`` (the
  loader's length estimate), so token ``t`` is taken to be characters
  ``[round(t c), round((t + 1) c))`` of the text: fixed-width windows of ``c`` characters.
- **Blocks.** Every ``TEXT_BLOCK_TOKENS`` (16, vLLM's default block size) tokens make a text
  block: characters ``[round(16 j c), round(16 (j + 1) c))``. Only whole blocks inside both the
  text and the estimated token count get an identity; the tokens after the last one are the
  request's own (as a Mooncake prompt's tokens after its ``hash_ids``).
- **Identity.** Block ``j``'s key is a 64-bit BLAKE2b digest of block ``j - 1``'s key and
  block ``j``'s text (UTF-8), so equal keys mean equal text from the prompt's first character
  (chained like Mooncake's ``hash_ids``), and the digest is the same in every process.

The keys become 16-token runs of the request's ``TokenRuns`` (namespace ``PROMPT_TEXT``), so a
replica's block size maps onto them as onto Mooncake's 512-token ids: a block size that is a
multiple of 16 (vLLM's 16, 32, 64, 128) covers whole text blocks and is exact; a smaller one
sees sharing in steps of 16 tokens.

How this approximates a real tokenizer: a BPE tokenizer turns two texts that agree on their
first ``L`` characters into token sequences that agree up to about the last word boundary
before character ``L``, about ``L / 4`` tokens of English; the windows give
``floor(L / c)`` shared tokens, and so the same shared whole blocks to within one block. Where
it differs: the real number of tokens per character depends on the text (code, digits and
non-English text tokenize denser), so block boundaries fall at other characters than the
tokenizer's and long prompts drift; the windows share tokens up to the very character where two
texts part, where a tokenizer may re-split the word there; and vLLM's ``bench serve`` wraps
every prompt in the model's chat template by default, a header all requests share, which the
estimate (like the loader's length) leaves out.
"""

from __future__ import annotations

import hashlib

TEXT_BLOCK_TOKENS = 16       # tokens per text block (vLLM's default KV block size)
_ROOT = b"\0" * 8            # the parent key of a prompt's first block


def text_block_keys(text: str, chars_per_token: float, tokens: int) -> list[int]:
    """The chained keys of ``text``'s whole 16-token blocks, at most ``tokens // 16`` of them
    (see the module's docstring); signed 64-bit integers, as Mooncake's hash_ids."""
    keys: list[int] = []
    parent = _ROOT
    width = TEXT_BLOCK_TOKENS * chars_per_token
    for j in range(tokens // TEXT_BLOCK_TOKENS):
        start, end = round(j * width), round((j + 1) * width)
        if end > len(text):
            break
        digest = hashlib.blake2b(parent + text[start:end].encode("utf-8"),
                                 digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little", signed=True))
        parent = digest
    return keys
