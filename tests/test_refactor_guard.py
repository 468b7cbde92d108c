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
        ('0b10b74a36bcc57f', '3a884268923b3c33', '0f228a71bc83847c'),
    ('poisson-tight-kv', 'nested-wait', ''):
        ('d814af83d7969e9d', 'de2e4ec0f95f15f3', '0379a95b944e5890'),
    ('poisson-tight-kv', 'orca', ''):
        ('30035dc9e29aea25', '4faa981fc4e8de59', '0fcf63f9f11d28d6'),
    ('poisson-tight-kv', 'sarathi', ''):
        ('6f8bf8db009836b9', 'e552119e0800aa49', '732f28a45f07f3f7'),
    ('poisson-tight-kv', 'sjf', ''):
        ('ebab9c211410ee6c', 'b52a0f51659df8c0', 'e4f92bb451f3d00e'),
    ('poisson-tight-kv', 'static', ''):
        ('b2dcf9f2ab4e9703', 'f3268cf332569439', '235a2322b8425890'),
    ('poisson-tight-kv', 'vllm', ''):
        ('4d32dbfcb04f4f31', '59b3665fbf12bb98', '398f3be40c23c825'),
    ('poisson-tight-kv', 'vllm-v1', ''):
        ('df2f8b81cf48e323', 'f4a9df30224480af', '170df7b0214e75c7'),
    ('poisson-tight-kv', 'wait', ''):
        ('b6f339895567a0a4', '1494f08d144b7578', '8273412016f4e06d'),
    ('types-linear', 'mcsf', ''):
        ('44ac1d7caef9bbef', 'eaca222bc9a6ff63', '8eab9e0282f8a7b9'),
    ('types-linear', 'nested-wait', ''):
        ('b8676bf940624ec1', 'c7c1a9de56d3178c', '504b752738becd98'),
    ('types-linear', 'orca', ''):
        ('00b0707fd09394de', '62ddfc0744ac83f6', '5ba0d3afbf5603f5'),
    ('types-linear', 'sarathi', ''):
        ('c5af0e95a0b87f0f', '0ac934ed2978a7a3', '49a61be8985123c3'),
    ('types-linear', 'sjf', ''):
        ('85524f9eaf881fee', '4c9821ab5ca30d39', '3eba8a6d7fdc73d6'),
    ('types-linear', 'static', ''):
        ('c6296979bbaec7a8', '7c13b40286252c58', '54d6ded49524111e'),
    ('types-linear', 'vllm', ''):
        ('68dadfc25a9e07a3', '4cadc58df03d0892', 'add6d8a55fa3d81a'),
    ('types-linear', 'vllm-v1', ''):
        ('60b1a6927f4d4951', '4fd418a9a82c983a', 'cc74c266f86a75c7'),
    ('types-linear', 'wait', ''):
        ('960dd9c957191764', '92ad196f2b121d57', 'e79ec209aaaba79e'),
    ('restart-gamma', 'mcsf', ''):
        ('5d1886a21f783bd9', 'c625c54dd984281d', 'be49f4703a7c0eab'),
    ('restart-gamma', 'nested-wait', ''):
        ('98b83928a43b0ab7', '0932ac65806c0c60', 'e863857c1ec972e2'),
    ('restart-gamma', 'orca', ''):
        ('84adc8213ba7fd7c', 'b54367b1df32099b', '776645dfd0b100e4'),
    ('restart-gamma', 'sarathi', ''):
        ('0fe0876042d9fa62', 'bb178ae282b02ebd', 'ac9e06ff395bd2cb'),
    ('restart-gamma', 'sjf', ''):
        ('e92e20c7e71c6270', 'a03ba6c44569eb22', '4567de5191106860'),
    ('restart-gamma', 'static', ''):
        ('49900716705bb6d9', '359628542d8e72a9', 'ac5c16c0d6e288ee'),
    ('restart-gamma', 'vllm', ''):
        ('cbbd58b8536b70c2', '8084a681ac6b7660', '20eb89b02cfb887d'),
    ('restart-gamma', 'vllm-v1', ''):
        ('f0877a2f74031766', '3782a8ca1b93c804', '01cb95165bc0a8e1'),
    ('restart-gamma', 'wait', ''):
        ('ed13455882b339a4', '90c3ed6e2335608b', '4c6b45a75903076c'),
    ('poisson-tight-kv', 'wait', 'chunk_size=256'):
        ('85f03d6dc648825e', 'de873ff904f8ec39', '9425a47bd04d49e5'),
    ('poisson-tight-kv', 'nested-wait', 'segments=3'):
        ('883244e2017b37c0', '4b92532db5ea7bf1', '6202be0ec3156cdf'),
    ('poisson-tight-kv', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('b4b321f386e83cbe', '9852a6ef3e59d6ed', 'daaf2057d16ddb9c'),
    ('types-linear', 'wait', 'chunk_size=256'):
        ('57a56880f1482f11', '208e74118fca9786', '3b2efeae0dbce9bb'),
    ('types-linear', 'nested-wait', 'segments=3'):
        ('9db5b543c61faf33', '8fec5a1279b7f343', '98db3632fbe0b0b9'),
    ('types-linear', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('2681297ec0eaa6fa', 'adcdedb38e9ba20c', '0358eba2dc135a4e'),
    ('restart-gamma', 'wait', 'chunk_size=256'):
        ('ed13455882b339a4', '90c3ed6e2335608b', 'd8f0ecd788d4d536'),
    ('restart-gamma', 'nested-wait', 'segments=3'):
        ('d9f12754973afb9c', 'cbfceaf907412ac7', 'b607c8001ff575d5'),
    ('restart-gamma', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('9ce5b412a3e79462', '582130000e4e715e', '85b35330410d70e5'),
}


@pytest.mark.parametrize("case", CASES, ids=["/".join(filter(None, c)) for c in CASES])
def test_tables_unchanged_by_refactoring(case):
    got = digests(*case)
    want = EXPECTED[case]
    assert got[:2] == want[:2], f"{case}: request/timeline tables changed"
    assert got[2] == want[2], f"{case}: summary changed"
