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
        ('d814af83d7969e9d', 'de2e4ec0f95f15f3', '89d2210932ab756d'),
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
        ('b6f339895567a0a4', '1494f08d144b7578', 'c3643de7feca0d18'),
    ('types-linear', 'mcsf', ''):
        ('5fc98a96d74fffec', 'eaca222bc9a6ff63', '890d4e973784a8d0'),
    ('types-linear', 'nested-wait', ''):
        ('0c208c6bc55094ff', 'c7c1a9de56d3178c', '67bcbd47712a7e1f'),
    ('types-linear', 'orca', ''):
        ('1af65226a4c93141', '62ddfc0744ac83f6', '7e91c03856b06b9c'),
    ('types-linear', 'sarathi', ''):
        ('4ad5ae86c621e7a4', '0ac934ed2978a7a3', 'cde7b11506587205'),
    ('types-linear', 'sjf', ''):
        ('aeca0edb079f7bf2', '4c9821ab5ca30d39', 'ef7da96d8b706d7b'),
    ('types-linear', 'static', ''):
        ('db8fcae2f16d1c23', '7c13b40286252c58', '944e3970efd77f06'),
    ('types-linear', 'vllm', ''):
        ('627ed7a5ca74f9ad', '4cadc58df03d0892', 'afa6a637cc9a3726'),
    ('types-linear', 'vllm-v1', ''):
        ('ec1f2f4d8812ef9c', '4fd418a9a82c983a', 'ef9add750ec32efe'),
    ('types-linear', 'wait', ''):
        ('efa7c3f7470a417e', '92ad196f2b121d57', 'a0b68dd2d2130d92'),
    ('restart-gamma', 'mcsf', ''):
        ('5d1886a21f783bd9', 'c625c54dd984281d', 'be49f4703a7c0eab'),
    ('restart-gamma', 'nested-wait', ''):
        ('98b83928a43b0ab7', '0932ac65806c0c60', '3caa5b939d8a1074'),
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
        ('ed13455882b339a4', '90c3ed6e2335608b', '7b6f5cd389270455'),
    ('poisson-tight-kv', 'wait', 'chunk_size=256'):
        ('85f03d6dc648825e', 'de873ff904f8ec39', '3462d62aab04cee2'),
    ('poisson-tight-kv', 'nested-wait', 'segments=3'):
        ('883244e2017b37c0', '4b92532db5ea7bf1', '9b8aac84325fc342'),
    ('poisson-tight-kv', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('b4b321f386e83cbe', '9852a6ef3e59d6ed', 'daaf2057d16ddb9c'),
    ('types-linear', 'wait', 'chunk_size=256'):
        ('1ed1b551e7487ebc', '208e74118fca9786', '5f33794922e4c30c'),
    ('types-linear', 'nested-wait', 'segments=3'):
        ('3b92fa0142e71d61', '8fec5a1279b7f343', '012d68438b30fcf3'),
    ('types-linear', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('8a57fc9e3f138d89', 'adcdedb38e9ba20c', 'ecfb46e23185da99'),
    ('restart-gamma', 'wait', 'chunk_size=256'):
        ('ed13455882b339a4', '90c3ed6e2335608b', 'ea3450fc909b2e36'),
    ('restart-gamma', 'nested-wait', 'segments=3'):
        ('d9f12754973afb9c', 'cbfceaf907412ac7', 'f7bca72f4ac8443d'),
    ('restart-gamma', 'vllm-v1', 'max_num_batched_tokens=512'):
        ('9ce5b412a3e79462', '582130000e4e715e', '85b35330410d70e5'),
}


@pytest.mark.parametrize("case", CASES, ids=["/".join(filter(None, c)) for c in CASES])
def test_tables_unchanged_by_refactoring(case):
    got = digests(*case)
    want = EXPECTED[case]
    assert got[:2] == want[:2], f"{case}: request/timeline tables changed"
    assert got[2] == want[2], f"{case}: summary changed"
