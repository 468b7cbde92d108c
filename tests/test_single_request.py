"""A request alone on the replica: its TTFT and latency are the cost model's arithmetic.

The expected times are built here from the request's shape (which chunk runs with which context,
which KV each decode reads), independently of the engine: prefill chunks first, the last one
emits token 1; decode k (k = 1 .. output-1) computes token prompt+k-1 and reads prompt+k KV
tokens, emitting token k+1.
"""

from __future__ import annotations

import pytest

from conftest import require_shared
from simulator.config import RunConfig
from simulator.cost.base import BatchShape
from simulator.cost.profile import ProfileCost
from simulator.cost.roofline import RooflineCost
from simulator.hardware import gpu_spec, model_spec
from simulator.runner import simulate
from traces import Request, Workload

ARRIVAL = 1.25
PROMPT, OUTPUT = 300, 7
LINEAR = {"c0": 0.02, "c_prefill": 3e-5, "c_decode": 2e-4, "c_kv": 1e-6}
LLAMA, A100 = model_spec("llama-2-7b"), gpu_spec("a100-80gb")


def run_alone(policy="vllm-v1", params=None, cost_model="linear", cost_params=None):
    cfg = RunConfig(policy=policy, policy_params=params or {}, cost_model=cost_model,
                    cost_params=cost_params or {}).validate()
    w = Workload.from_requests([Request(0, ARRIVAL, PROMPT, OUTPUT)])
    return simulate(cfg, w)


def chunks(chunk_size):
    """(tokens, context) of each prefill chunk of the prompt."""
    out, done = [], 0
    while done < PROMPT:
        n = min(chunk_size, PROMPT - done)
        out.append((n, done))
        done += n
    return out


def expected_times(cost, chunk_size=PROMPT):
    """(first token, completion) in absolute seconds, summed in the order the clock advances."""
    t = ARRIVAL
    for n, ctx in chunks(chunk_size):
        t += cost.iteration_time(BatchShape.of(prefill=[(n, ctx)]))
    first = t
    for k in range(1, OUTPUT):
        t += cost.iteration_time(BatchShape.of(decode_kv=[PROMPT + k]))
    return first, t


def linear_closed_form(chunk_size=PROMPT):
    """TTFT and latency (s) of the linear model by hand: c0 + c_p x tokens + c_kv x KV read."""
    c = LINEAR
    ttft = sum(c["c0"] + c["c_prefill"] * n + c["c_kv"] * (ctx + n) for n, ctx in chunks(chunk_size))
    d = OUTPUT - 1
    decode = d * (c["c0"] + c["c_decode"]) + c["c_kv"] * (d * PROMPT + d * (d + 1) / 2)
    return ttft, ttft + decode


def check(result, first, done):
    row = result.requests.iloc[0]
    assert row.status == "completed"
    assert row.first_scheduled_s == ARRIVAL and row.queue_ms == 0
    assert row.first_token_s == first        # exactly: the same sums in the same order
    assert row.completion_s == done
    assert row.ttft_ms == pytest.approx((first - ARRIVAL) * 1e3, rel=1e-12)
    assert row.e2el_ms == pytest.approx((done - ARRIVAL) * 1e3, rel=1e-12)
    assert row.tpot_ms == pytest.approx((done - first) * 1e3 / (OUTPUT - 1), rel=1e-12)
    assert len(result.timeline) == len(result.timeline.drop_duplicates("start_s"))


@pytest.mark.parametrize("policy", ["vllm-v1", "vllm", "orca", "static", "sjf"])
def test_linear_cost_whole_prompt(policy):
    from simulator.cost.linear import LinearCost
    first, done = expected_times(LinearCost(**LINEAR))
    ttft, e2e = linear_closed_form()
    assert first - ARRIVAL == pytest.approx(ttft, rel=1e-12)
    assert done - ARRIVAL == pytest.approx(e2e, rel=1e-12)
    result = run_alone(policy, cost_params=LINEAR)
    check(result, first, done)
    assert len(result.timeline) == OUTPUT   # one prefill, output - 1 decodes


@pytest.mark.parametrize("policy,params,chunk", [
    ("sarathi", {"chunk_size": 128}, 128),
    ("vllm-v1", {"max_num_batched_tokens": 100}, 100),
    ("vllm-v1", {"long_prefill_token_threshold": 64}, 64),
])
def test_linear_cost_chunked_prefill(policy, params, chunk):
    from simulator.cost.linear import LinearCost
    first, done = expected_times(LinearCost(**LINEAR), chunk)
    ttft, e2e = linear_closed_form(chunk)
    assert first - ARRIVAL == pytest.approx(ttft, rel=1e-12)
    assert done - ARRIVAL == pytest.approx(e2e, rel=1e-12)
    result = run_alone(policy, params, cost_params=LINEAR)
    check(result, first, done)
    assert len(result.timeline) == len(chunks(chunk)) + OUTPUT - 1
    assert result.timeline.prefill_tokens.tolist()[:len(chunks(chunk))] == \
        [n for n, _ in chunks(chunk)]


def test_paper_linear_model_d0_d1():
    """tau = d0 + d1 x KV: prefill reads P tokens, decode k reads P + k."""
    d0, d1 = 0.03, 2e-6
    result = run_alone(cost_params={"d0": d0, "d1": d1})
    row = result.requests.iloc[0]
    ttft = d0 + d1 * PROMPT
    e2e = ttft + sum(d0 + d1 * (PROMPT + k) for k in range(1, OUTPUT))
    assert row.ttft_ms == pytest.approx(ttft * 1e3, rel=1e-12)
    assert row.e2el_ms == pytest.approx(e2e * 1e3, rel=1e-12)


@pytest.mark.parametrize("policy,params,chunk", [
    ("vllm-v1", None, PROMPT),
    ("sarathi", {"chunk_size": 128}, 128),
])
def test_roofline_cost(policy, params, chunk):
    first, done = expected_times(RooflineCost(LLAMA, A100), chunk)
    check(run_alone(policy, params, cost_model="roofline"), first, done)


def test_profile_cost():
    path = require_shared("profiles", "a100", "llama-2-7b", "mlp.csv")
    first, done = expected_times(ProfileCost(path, LLAMA, A100), 128)
    check(run_alone("sarathi", {"chunk_size": 128}, "profile", {"path": str(path)}), first, done)


@pytest.mark.parametrize("engine", ["native", "vllm"])
def test_frontend_delay_adds_to_ttft_and_latency_not_to_tpot(engine):
    """The request reaches the engine frontend_delay after its arrival; TTFT and e2e latency
    count from the arrival (as a client measures them), TPOT is unchanged."""
    if engine == "vllm":
        from conftest import require_vllm
        require_vllm()
    w = Workload.from_requests([Request(0, ARRIVAL, PROMPT, OUTPUT)])
    rows = []
    for delay in (0.0, 0.0375):
        cfg = RunConfig(cost_model="linear", cost_params=LINEAR, engine=engine,
                        frontend_delay=delay).validate()
        rows.append(simulate(cfg, w).requests.iloc[0])
    ttft, latency = linear_closed_form()
    assert rows[0].ttft_ms == pytest.approx(ttft * 1e3, rel=1e-12)
    assert rows[1].ttft_ms == pytest.approx((ttft + 0.0375) * 1e3, rel=1e-12)
    assert rows[1].e2el_ms == pytest.approx(rows[0].e2el_ms + 37.5, rel=1e-12)
    assert rows[1].tpot_ms == pytest.approx(rows[0].tpot_ms, rel=1e-12)


@pytest.mark.parametrize("value", [-0.01, float("nan"), True])
def test_frontend_delay_must_be_non_negative_seconds(value):
    from simulator.errors import ConfigError
    with pytest.raises(ConfigError, match="^frontend_delay.* must be a"):
        RunConfig(frontend_delay=value).validate()
