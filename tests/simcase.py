"""Helpers for tests that drive the engine directly: hand-made workloads, a replica of a given
size, and a recorder of every decision a policy makes (what it saw, what it asked for). The
engine driver and the recorder are the invariant checker's (simulator/policycheck.py)."""

from __future__ import annotations

from scheduler.base import Policy
from simulator.cost.base import CostModel
from simulator.cost.linear import LinearCost
from simulator.policycheck import Outcome, Recorder, Step  # noqa: F401  (used by tests)
from simulator.policycheck import simulate as _simulate
from traces.request import Request

# A cheap cost model for behaviour tests: 10 ms per iteration plus a little per token.
TEST_COST = LinearCost(c0=0.01, c_prefill=1e-5, c_decode=1e-4, c_kv=1e-7)


def requests(*rows) -> list[Request]:
    """``(arrival_s, prompt, output)`` rows -> Request records with ids in arrival order."""
    rows = sorted(rows, key=lambda r: r[0])
    return [Request(i, float(t), int(p), int(o)) for i, (t, p, o) in enumerate(rows)]


def simulate(reqs: list[Request], policy: str | Policy = "vllm-v1", params: dict | None = None,
             *, kv_tokens: int = 1 << 20, block_size: int = 16, max_model_len: int = 4096,
             cost: CostModel = TEST_COST, seed: int = 0, prefix_caching: bool = False) -> Outcome:
    """Run ``reqs`` through one replica with ``kv_tokens`` of KV cache (rounded down to blocks)."""
    return _simulate(reqs, policy, params, kv_tokens=kv_tokens, block_size=block_size,
                     max_model_len=max_model_len, cost=cost, seed=seed,
                     prefix_caching=prefix_caching)
