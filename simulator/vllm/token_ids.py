"""Token ids for vLLM in the loop with prefix caching on: ids whose block hashes share exactly
what the native engine's cache model shares.

vLLM identifies a full block by a hash of its parent's hash and its token ids
(``kv_cache_utils.hash_block_tokens``); servesim requests carry no token ids, only which content
their prompt repeats (``traces.request.TokenRuns``), from which ``simulator.prefix_cache``
derives each full block's chained hash. Here every block of a request (prompt and output, as one
sequence) gets ``block_size`` ids computed from that hash alone: its 64 bits written as digits
below the vocabulary size, repeated to fill the block. Since the hash is chained, equal hashes
mean equal prefixes, so two requests that share their first k blocks in the native model have the
same first k * block_size ids and vLLM's hashes agree; a block whose hash differs gets different
ids (the digits are the hash, written out: no collision beyond the hash's own, as long as a block
holds ``ceil(64 / bits)`` tokens, five for a vocabulary of 16,384 ids or more).

Output ids come from the same sequence: the loop samples, for a request's output token i, the id
at position ``prompt_tokens + i``, so that a session's next turn (which repeats the previous
prompt and answer) finds the answer's full blocks cached, as the native model does. A request's
last partial block hashes its own tokens (its prompt's own run or its answer), so it is its own.
"""

from __future__ import annotations

from simulator.prefix_cache import block_hashes
from traces.request import TokenRuns

HASH_BITS = 64
MAX_DIGIT_BITS = 14        # 16,384 ids: below every preset's vocabulary


def digit_bits(vocab_size: int) -> int:
    """Bits per token id: the largest power of two not above the vocabulary, at most 2^14."""
    return min(MAX_DIGIT_BITS, vocab_size.bit_length() - 1)


def block_token_ids(block_hash: int, block_size: int, bits: int) -> list[int]:
    """One block's ids: the 64-bit hash in base 2^bits, least significant digit first, repeated
    to fill the block."""
    u = block_hash & ((1 << HASH_BITS) - 1)
    mask = (1 << bits) - 1
    digits = [(u >> s) & mask for s in range(0, HASH_BITS, bits)]
    reps = -(-block_size // len(digits))
    return (digits * reps)[:block_size]


def request_token_ids(prefix: TokenRuns | None, request_id: int, prompt_tokens: int,
                      output_tokens: int, block_size: int, vocab_size: int) -> list[int]:
    """A request's prompt and output ids (``prompt_tokens + output_tokens`` of them), block by
    block from ``simulator.prefix_cache.block_hashes``."""
    total = prompt_tokens + output_tokens
    blocks = -(-total // block_size)
    bits = digit_bits(vocab_size)
    hashes: list[int] = []
    for batch in block_hashes(prefix, request_id, prompt_tokens, block_size):
        hashes += batch
        if len(hashes) >= blocks:
            break
    ids: list[int] = []
    for h in hashes[:blocks]:
        ids += block_token_ids(h, block_size, bits)
    del ids[total:]
    return ids
