"""The replica loop itself: events not polling, paged KV accounting, rejection at arrival, and the
invariants the engine enforces whatever a policy asks."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler.base import Policy, QueuedPolicy, _REGISTRY
from scheduler.state import Decision
from simcase import requests, simulate
from simulator.cli import main
from simulator.errors import PolicyViolation, SimulationStalled
from simulator.hardware import GiB, gpu_spec, kv_capacity_tokens, model_spec


def test_idle_replica_sleeps_until_the_next_arrival():
    out = simulate(requests((0.0, 32, 4), (1000.0, 32, 4)))
    assert len(out.steps) <= 12                       # asked per iteration and per arrival only
    second = out.requests.iloc[1]
    assert second.first_scheduled_s == 1000.0         # served the instant it arrives
    assert out.timeline.start_s.iloc[4] == 1000.0     # no iteration ran in the gap


def test_impossible_requests_are_rejected_at_arrival_and_never_disturb_the_others():
    base = [(0.0, 100, 10), (0.01, 200, 30), (0.02, 50, 5), (0.5, 300, 20)]
    impossible = [(0.005, 3000, 2000),      # prompt + output > max_model_len
                  (0.015, 900, 200)]        # peak KV over the cache's 1,024 tokens
    kw = dict(kv_tokens=1024, max_model_len=4096)
    alone = simulate(requests(*base), **kw).requests
    mixed = simulate(requests(*base, *impossible), **kw).requests
    rejected = mixed[mixed.status == "rejected"]
    assert len(rejected) == 2
    assert rejected.reject_reason.tolist() == ["over_max_model_len", "over_kv_capacity"]
    details = rejected.reject_detail.tolist()
    assert "max_model_len 4096" in details[0] and "capacity is 1024" in details[1]
    assert rejected.first_scheduled_s.isna().all()
    served = mixed[mixed.status == "completed"].reset_index(drop=True)
    cols = ["arrival_s", "first_token_s", "completion_s"]
    assert np.array_equal(served[cols].to_numpy(), alone[cols].to_numpy())


def test_kv_is_allocated_in_blocks():
    out = simulate(requests((0.0, 17, 3)), block_size=16)
    tl = out.timeline
    # Prefill of 17 tokens takes 2 blocks; decodes write tokens 18 and 19, still in block 2.
    assert tl.kv_used_tokens.tolist() == [32, 32, 32]
    out = simulate(requests((0.0, 16, 3)), block_size=16)
    # 16 tokens fill one block exactly; the first decode (token 17) opens a second.
    assert out.timeline.kv_used_tokens.tolist() == [16, 32, 32]
    assert out.free_blocks_at_end == out.spec.num_blocks


def test_kv_capacity_from_gpu_memory():
    llama, a100 = model_spec("llama-2-7b"), gpu_spec("a100-80gb")
    assert llama.num_params == 6_738_415_616                 # the published parameter count
    assert llama.kv_bytes_per_token == 2 * 32 * 4096 * 2     # 0.5 MiB per token
    free = 0.9 * 80 * GiB - 2 * 6_738_415_616 - 2 * GiB
    assert kv_capacity_tokens(llama, a100) == int(free // (512 * 1024 * 16)) * 16


def test_vllm_v0_keeps_its_watermark_free_when_admitting():
    # 100 blocks of 1 token, watermark 10%: with a request resident, an admission must leave
    # 10 blocks free; alone, a request may use everything.
    reqs = requests((0.0, 50, 30), (0.001, 30, 2))
    out = simulate(reqs, "vllm", {"watermark": 0.1}, kv_tokens=100, block_size=1,
                   max_model_len=100)
    second = out.requests.iloc[1]
    # 50 + 30 = 80 would leave 20 free: admitted at once.
    assert second.first_scheduled_s == pytest.approx(out.timeline.start_s.iloc[1])
    reqs = requests((0.0, 50, 30), (0.001, 45, 2))
    out = simulate(reqs, "vllm", {"watermark": 0.1}, kv_tokens=100, block_size=1,
                   max_model_len=100)
    # 50 + 45 = 95 would leave 5 < 10 free: it waits for the first to finish.
    assert out.requests.iloc[1].first_scheduled_s == out.requests.iloc[0].completion_s


# ---------------------------------------------------------------------------------------------
# Policies that break the rules


class _Broken(QueuedPolicy):
    name = "broken"

    def __init__(self, mistake):
        super().__init__()
        self.mistake = mistake

    def schedule(self, view):
        if not self.waiting and not view.resident:
            return Decision()
        resident = list(view.resident)
        req = resident[0] if resident else self.waiting.pop()
        m = self.mistake
        if m == "twice":
            return Decision(prefill=[(req, 1), (req, 1)])
        if m == "too many tokens":
            return Decision(prefill=[(req, req.remaining + 1)])
        if m == "decode a prefill":
            return Decision(decode=[req])
        if m == "decode twice":
            if resident and not req.is_prefill:
                return Decision(decode=[req, req])
            return Decision(prefill=[(req, req.remaining)])
        if m == "preempt a waiting request":
            return Decision(prefill=[(req, 1)], preempt=[req]) if not resident else \
                Decision(preempt=[self.waiting.peek()])
        if m == "reject a resident":
            if resident:
                return Decision(reject=[(req, "no")])
            return Decision(prefill=[(req, req.remaining)])
        if m == "over-allocate":
            batch = [req] + [self.waiting.pop() for _ in range(len(self.waiting))]
            return Decision(prefill=[(r, r.remaining) for r in batch])
        raise AssertionError(m)


@pytest.mark.parametrize("mistake,message", [
    ("twice", "scheduled twice"),
    ("too many tokens", "prefill tokens"),
    ("decode a prefill", "not decoding"),
    ("preempt a waiting request", "which is waiting"),
    ("reject a resident", "which is resident"),
    ("over-allocate", "over-allocated KV"),
    ("decode twice", "scheduled twice"),
])
@pytest.mark.parametrize("caching", [False, True], ids=["no-cache", "prefix-cache"])
def test_engine_refuses_invalid_decisions(mistake, message, caching):
    # (With the cache, decodes are checked by a loop of their own: Engine._start_iteration.)
    reqs = requests((0.0, 40, 3), (0.0, 40, 3), (0.0, 40, 3))
    with pytest.raises(PolicyViolation, match=message):
        simulate(reqs, _Broken(mistake), kv_tokens=64, block_size=16, prefix_caching=caching)


class _Stuck(QueuedPolicy):
    """Never schedules anything and sets no timer: the engine must not hang."""

    name = "stuck"
    summary = "test policy that never schedules"

    def schedule(self, view):
        return Decision()


def test_a_policy_that_strands_requests_stops_the_run():
    with pytest.raises(SimulationStalled, match="2 unfinished requests"):
        simulate(requests((0.0, 10, 2), (1.0, 10, 2)), _Stuck())


def test_cli_exits_3_on_a_policy_bug(monkeypatch, capsys):
    monkeypatch.setitem(_REGISTRY, "stuck", _Stuck)
    code = main(["run", "--policy", "stuck", "-n", "3"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert err.startswith("servesim: simulation error: policy stuck scheduled nothing")


class _Patient(Policy):
    """Waits until 3 requests are queued, or 0.5 s after the first arrival (a timer)."""

    name = "patient"

    def bind(self, spec):
        super().bind(spec)
        self.queue = []
        self.asked = []

    def on_arrival(self, req):
        self.queue.append(req)

    def schedule(self, view):
        self.asked.append(view.now)
        resident = list(view.resident)
        if resident:
            return Decision(decode=[r for r in resident])
        if not self.queue:
            return Decision()
        deadline = self.queue[0].arrival_s + 0.5
        if len(self.queue) < 3 and view.now < deadline:
            return Decision(wake_at=deadline)
        batch, self.queue = self.queue, []
        return Decision(prefill=[(r, r.remaining) for r in batch])


def test_wake_at_asks_the_policy_again_at_that_time():
    pol = _Patient()
    out = simulate(requests((0.0, 8, 2), (0.1, 8, 2), (5.0, 8, 2), (5.1, 8, 2), (5.2, 8, 2)), pol)
    first = out.requests.first_scheduled_s.tolist()
    assert first[:2] == [0.5, 0.5]                 # the timer fired: two requests after 0.5 s
    assert first[2:] == [5.2, 5.2, 5.2]            # the third arrival filled the batch early
    assert 0.5 in pol.asked
