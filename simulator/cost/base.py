"""The cost-model interface: a batch's shape in, the iteration's duration (seconds) out."""

from __future__ import annotations

import numpy as np


class BatchShape:
    """What a cost model needs to know about one iteration, aggregated over its requests.

    - prefill_tokens / prefill_requests: prompt (or recompute) tokens computed, and by how many
      requests;
    - prefill_kv_tokens: sum over prefill chunks of (context before + chunk), the KV each reads;
    - prefill_attn_pairs: sum over chunks of query-key pairs under the causal mask,
      chunk x context + chunk (chunk + 1) / 2;
    - decode_requests / decode_kv_tokens: decoding requests and the sum of their KV lengths
      (including the token computed this iteration).

    ``kv_tokens`` (all KV the batch touches) is the quantity of the paper's d0 + d1 * KV model.
    """

    __slots__ = ("prefill_tokens", "prefill_requests", "prefill_kv_tokens", "prefill_attn_pairs",
                 "decode_requests", "decode_kv_tokens")

    def __init__(self, prefill_tokens=0, prefill_requests=0, prefill_kv_tokens=0,
                 prefill_attn_pairs=0.0, decode_requests=0, decode_kv_tokens=0):
        self.prefill_tokens = prefill_tokens
        self.prefill_requests = prefill_requests
        self.prefill_kv_tokens = prefill_kv_tokens
        self.prefill_attn_pairs = prefill_attn_pairs
        self.decode_requests = decode_requests
        self.decode_kv_tokens = decode_kv_tokens

    @classmethod
    def of(cls, prefill: list[tuple[int, int]] = (), decode_kv: list[int] = ()) -> "BatchShape":
        """Build from explicit (chunk_tokens, context_before) pairs and decode KV lengths."""
        s = cls()
        for chunk, ctx in prefill:
            s.add_prefill(chunk, ctx)
        for kv in decode_kv:
            s.add_decode(kv)
        return s

    def add_prefill(self, chunk: int, context: int) -> None:
        self.prefill_tokens += chunk
        self.prefill_requests += 1
        self.prefill_kv_tokens += context + chunk
        self.prefill_attn_pairs += chunk * context + chunk * (chunk + 1) / 2

    def add_decode(self, kv_len: int) -> None:
        self.decode_requests += 1
        self.decode_kv_tokens += kv_len

    def share(self, prefill_parts: float, decode_parts: float) -> "BatchShape":
        """One micro-batch of this batch: its prefills spread evenly over ``prefill_parts``
        micro-batches (0: it holds none), its decodes over ``decode_parts``."""
        p = 1.0 / prefill_parts if prefill_parts else 0.0
        d = 1.0 / decode_parts
        return BatchShape(self.prefill_tokens * p, self.prefill_requests * p,
                          self.prefill_kv_tokens * p, self.prefill_attn_pairs * p,
                          self.decode_requests * d, self.decode_kv_tokens * d)

    @property
    def num_tokens(self) -> int:
        """Tokens through the weight matrices this iteration."""
        return self.prefill_tokens + self.decode_requests

    @property
    def num_requests(self) -> int:
        return self.prefill_requests + self.decode_requests

    @property
    def kv_tokens(self) -> int:
        return self.prefill_kv_tokens + self.decode_kv_tokens

    def __repr__(self):
        return (f"BatchShape(prefill={self.prefill_tokens} tok/{self.prefill_requests} req, "
                f"decode={self.decode_requests} req/{self.decode_kv_tokens} kv)")


class CostModel:
    """Maps a ``BatchShape`` to seconds. A value passed to the engine, never a global."""

    name = ""

    def iteration_time(self, shape: BatchShape) -> float:
        raise NotImplementedError

    def decode_stretch_times(self, requests: int, kv_tokens: int, iterations: int) -> np.ndarray:
        """The times of ``iterations`` consecutive decode-only iterations of ``requests``
        requests whose KV is ``kv_tokens`` in the first and grows by ``requests`` (one token
        each) per iteration: the engine's stretches. Each equals ``iteration_time`` of its
        batch, to the bit; a cost model with a closed form evaluates them at once, this
        default asks ``iteration_time`` one by one."""
        return np.array([self.iteration_time(BatchShape(decode_requests=requests,
                                                        decode_kv_tokens=kv_tokens + i * requests))
                         for i in range(iterations)], dtype=float)

    def describe(self) -> dict:
        return {"cost_model": self.name}
