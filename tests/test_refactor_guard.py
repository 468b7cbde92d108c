"""Refactoring guard (issue 10): re-layering the modules must not change what any policy does.

The digests below were computed on main before the re-layering (commit 1a1929d), from the
request table, the timeline table and the summary (less its wall-clock keys) of every built-in
policy on three small fixed workloads that exercise preemption (recompute and restart), declared
types, fitted and exact linear costs. A failure means a refactoring changed behaviour: find
out why before updating a digest. A deliberate behaviour change updates the digest in its own
commit, saying why.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from simulator.config import RunConfig
from simulator.runner import simulate

WORKLOADS = {
    "poisson-tight-kv": dict(num_requests=200, rate=30.0, prompt_len="32:512",
                             output_len="8:256", kv_capacity=6144, cost_model="roofline", seed=3),
    "types-linear": dict(types=["p128d16:12", "p512d200:3"], num_requests=200, kv_capacity=8192,
                         cost_model="linear", seed=5),
    "restart-gamma": dict(num_requests=150, arrival="gamma", cv=2.0, rate=40.0,
                          prompt_len="64:256", output_len="4:300", kv_capacity=3072,
                          preemption="restart", seed=7),
}
POLICIES = ("mcsf", "nested-wait", "orca", "sarathi", "sjf", "static", "vllm", "vllm-v1", "wait")
VARIANTS = (("wait", "chunk_size=256"), ("nested-wait", "segments=3"),
            ("vllm-v1", "max_num_batched_tokens=512"))
CASES = [(w, p, "") for w in WORKLOADS for p in POLICIES] + \
        [(w, p, params) for w in WORKLOADS for p, params in VARIANTS]
WALL_KEYS = ("wall_s", "sim_requests_per_wall_s")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def digests(workload: str, policy: str, params: str) -> tuple[str, str, str]:
    policy_params = dict(kv.split("=") for kv in params.split(",")) if params else {}
    result = simulate(RunConfig(policy=policy, policy_params=policy_params,
                                **WORKLOADS[workload]).validate())
    summary = {k: v for k, v in result.summary.items() if k not in WALL_KEYS}

    def table(frame):
        return _sha(frame.to_csv(index=False, float_format="%.9g"))
    return (table(result.requests), table(result.timeline),
            _sha(json.dumps(summary, sort_keys=True, default=str)))


EXPECTED: dict[tuple[str, str, str], tuple[str, str, str]] = {
    ('poisson-tight-kv', 'mcsf', ''):
        ('4c9207a769b1d828', '3a884268923b3c33', '343e73795fd9abb1'),
    ('poisson-tight-kv', 'nested-wait', ''):
        ('e414a933dbe2c428', 'de2e4ec0f95f15f3', 'bef7ebb4e78247fd'),
    ('poisson-tight-kv', 'orca', ''):
        ('bbee1449c185ff7e', '4faa981fc4e8de59', 'c141f967cd0d6beb'),
    ('poisson-tight-kv', 'sarathi', ''):
        ('b84a85a9efc7775a', 'e552119e0800aa49', '2383f4878f77b8c1'),
    ('poisson-tight-kv', 'sjf', ''):
        ('afd2a595e15cdbdd', 'b52a0f51659df8c0', '0b6f25979bbd1a0c'),
    ('poisson-tight-kv', 'static', ''):
        ('c57af643043b1c4a', 'f3268cf332569439', 'e9272898a2e6ca26'),
    ('poisson-tight-kv', 'vllm', ''):
        ('0adc52ec39ab6f77', '59b3665fbf12bb98', '35d22351f5de778e'),
    ('poisson-tight-kv', 'vllm-v1', ''):
        ('552eb2482bc56297', 'f4a9df30224480af', 'de87a274e9bc4473'),
    ('poisson-tight-kv', 'wait', ''):
        ('eb80364473bc7ce9', '1494f08d144b7578', 'ba62ad91ec02ddc7'),
    ('types-linear', 'mcsf', ''):
        ('7effac9fd4394f2f', 'eaca222bc9a6ff63', '2f876e9368b39275'),
    ('types-linear', 'nested-wait', ''):
        ('dca24bc92fe8502d', 'c7c1a9de56d3178c', 'c493544f17afd15d'),
    ('types-linear', 'orca', ''):
        ('cee89a264c663480', '62ddfc0744ac83f6', 'ef80c3d53e040c70'),
    ('types-linear', 'sarathi', ''):
        ('9e99b88f4ee0c677', '0ac934ed2978a7a3', 'be9e179d3cdd17bc'),
    ('types-linear', 'sjf', ''):
        ('7bb12658b6376437', '4c9821ab5ca30d39', '9be560f375861632'),
    ('types-linear', 'static', ''):
        ('2bee4ac48ddda54a', '7c13b40286252c58', '51b8927179f3651f'),
    ('types-linear', 'vllm', ''):
        ('5e08b04497618ec3', '4cadc58df03d0892', 'b4cf551f36d5bce8'),
    ('types-linear', 'vllm-v1', ''):
        ('8b4fb4ad85abfe01', '4fd418a9a82c983a', '8102916304e95187'),
    ('types-linear', 'wait', ''):
        ('7d0e7b9d90bda05a', '92ad196f2b121d57', '3087c267719e253b'),
    ('restart-gamma', 'mcsf', ''):
        ('92fc0360759c9260', 'c625c54dd984281d', '926b0103f5ae58fb'),
    ('restart-gamma', 'nested-wait', ''):
        ('a91e0235083e3da4', '0932ac65806c0c60', '7b841a0b6247e119'),
    ('restart-gamma', 'orca', ''):
        ('04d164184bda3b7c', 'b54367b1df32099b', 'bf3643c0e901fd90'),
    ('restart-gamma', 'sarathi', ''):
        ('879b677fcb2fc835', 'bb178ae282b02ebd', 'c1d4c05a3f3c5e22'),
    ('restart-gamma', 'sjf', ''):
        ('a284565f8cceba4d', 'a03ba6c44569eb22', '4849497cbbd4b45e'),
    ('restart-gamma', 'static', ''):
        ('12204a0d07f302b4', '359628542d8e72a9', 'a125b84d0db70a1b'),
    ('restart-gamma', 'vllm', ''):
        ('f916820bec428aff', '8084a681ac6b7660', '235a2e25fd33d65d'),
    ('restart-gamma', 'vllm-v1', ''):
        ('6a6b58e74d14bda1', '3782a8ca1b93c804', 'b5fb5bf3d5ad6c27'),
    ('restart-gamma', 'wait', ''):
        ('6c6d895647343d3a', '90c3ed6e2335608b', 'ef98843e245ab6ea'),
    ('poisson-tight-kv', 'wait', 'chunk_size=256'):
        ('993ae7aa84c715a0', 'de873ff904f8ec39', '3d27beea61ac848f'),
    ('poisson-tight-kv', 'nested-wait', 'segments=3'):
        ('60ebb7e959664daf', '4b92532db5ea7bf1', '76d2f3010809f13f'),
    ('poisson-tight-kv', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('737f1d01b2d90e3d', '9852a6ef3e59d6ed', '7087b944652441c4'),
    ('types-linear', 'wait', 'chunk_size=256'):
        ('815d800e9e4bdb09', '208e74118fca9786', '639bb7a901d3caea'),
    ('types-linear', 'nested-wait', 'segments=3'):
        ('6dbea09ffc18dd65', '8fec5a1279b7f343', '442bf39cb2bb9825'),
    ('types-linear', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('3594a600b694d029', 'adcdedb38e9ba20c', 'e177e88e9f503c39'),
    ('restart-gamma', 'wait', 'chunk_size=256'):
        ('6c6d895647343d3a', '90c3ed6e2335608b', 'f864d7bfcb954532'),
    ('restart-gamma', 'nested-wait', 'segments=3'):
        ('eef1ea71e685ca60', 'cbfceaf907412ac7', '6e091d6047657c84'),
    ('restart-gamma', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('384e46728438da0e', '582130000e4e715e', '8259031680752215'),
}


@pytest.mark.parametrize("case", CASES, ids=["/".join(filter(None, c)) for c in CASES])
def test_tables_unchanged_by_refactoring(case):
    got = digests(*case)
    want = EXPECTED[case]
    assert got[:2] == want[:2], f"{case}: request/timeline tables changed"
    assert got[2] == want[2], f"{case}: summary changed"
