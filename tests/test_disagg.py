"""Prefill/decode disaggregation (simulator/disagg.py).

Closed forms first: one request through a prefill/decode pair under a linear cost model is the
arithmetic of its prefill iteration, its transfer (latency + prompt KV bytes / bandwidth) and its
decode iterations, exactly; two prompts finishing together on one prefill replica share its
link (the second waits the first's transfer), on two replicas they do not; a prefill replica
with room for one prompt admits the next only when the first's transfer ends (it holds the KV
until then). Then invariants over random pools, routers and policies, determinism, the decode
side's policies (WAIT included) seeing arrivals that need no prefill, and the flags.
"""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from scheduler.base import make_policy
from scheduler.routers import make_router, router_names
from scheduler.state import ReplicaSpec, Status
from simulator.config import RunConfig, build_config
from simulator.cost.linear import LinearCost
from simulator.disagg import KVLink, native_disaggregated
from simulator.hardware import model_spec
from simulator.runner import simulate
from traces.request import Request

KV_BYTES = model_spec("llama-2-7b").kv_bytes_per_token     # 2 x 32 layers x 32 heads x 128 x 2
COST = dict(c0=0.004, c_prefill=2e-5, c_decode=3e-4, c_kv=1e-6)


def pair(requests, *, prefill_kv=1 << 20, decode_kv=1 << 20, prefill=1, decode=1,
         gbps=100.0, latency_ms=0.5, policy="vllm-v1", cost=LinearCost(**COST),
         decode_policy=None):
    """The raw result of ``requests`` on ``prefill`` + ``decode`` replicas (round-robin), the
    decode replicas' policies made by ``decode_policy()`` if given."""
    def spec(kv):
        return ReplicaSpec(num_blocks=kv // 16, block_size=16, max_model_len=1 << 20,
                           cost_model=cost)
    return native_disaggregated(
        requests, make_router("round-robin"), make_router("round-robin"),
        ([make_policy(policy) for _ in range(prefill)], spec(prefill_kv)),
        ([(decode_policy or (lambda: make_policy(policy)))() for _ in range(decode)],
         spec(decode_kv)),
        KVLink(gbps, latency_ms / 1e3), KV_BYTES).run()


def test_one_request_is_prefill_plus_transfer_plus_decode_exactly():
    p, o, gbps, latency_ms = 1000, 6, 100.0, 0.5
    cfg = RunConfig(prefill_replicas=1, decode_replicas=1, num_requests=1, prompt_len=str(p),
                    output_len=str(o), cost_model="linear", cost_params=COST, kv_link_gbps=gbps,
                    kv_link_latency_ms=latency_ms).validate()
    row = simulate(cfg).requests.iloc[0]
    c0, cp, cd, ckv = (COST[k] for k in ("c0", "c_prefill", "c_decode", "c_kv"))
    prefill = c0 + cp * p + ckv * p                  # the whole prompt, first token sampled
    transfer = latency_ms / 1e3 + p * KV_BYTES * 8 / (gbps * 1e9)
    # Decode steps g = 1 .. o - 1, each over the context p + g (its KV is computed there).
    decode = sum(c0 + cd + ckv * (p + g) for g in range(1, o))
    assert KV_BYTES == 2 * 32 * 32 * 128 * 2
    assert row.status == "completed" and (row.prefill_replica, row.decode_replica) == (0, 0)
    assert row.ttft_ms == pytest.approx(prefill * 1e3, rel=1e-12)
    assert row.transfer_s == pytest.approx(transfer, rel=1e-12)
    assert row.link_wait_s == 0.0
    assert row.tpot_ms == pytest.approx(decode / (o - 1) * 1e3, rel=1e-12)
    assert row.e2el_ms == pytest.approx((prefill + transfer + decode) * 1e3, rel=1e-12)


def test_transfers_from_one_prefill_replica_queue_for_its_link():
    p, gbps, latency_ms = 800, 50.0, 1.0
    transfer = latency_ms / 1e3 + p * KV_BYTES * 8 / (gbps * 1e9)
    reqs = [Request(0, 0.0, p, 4), Request(1, 0.0, p, 4)]
    one = pair(reqs, gbps=gbps, latency_ms=latency_ms)          # one batch: both prompts
    assert one.states[0].first_token_s == one.states[1].first_token_s
    assert [h.link_wait_s for h in one.handoffs] == [0.0, pytest.approx(transfer, rel=1e-12)]
    assert [h.decode_replica for h in one.handoffs] == [0, 0]
    two = pair(reqs, prefill=2, gbps=gbps, latency_ms=latency_ms)   # a link each
    assert [h.prefill_replica for h in two.handoffs] == [0, 1]
    assert [h.link_wait_s for h in two.handoffs] == [0.0, 0.0]


def test_a_prefill_replica_holds_the_kv_until_its_transfer_ends():
    p, gbps, latency_ms = 512, 40.0, 2.0
    transfer = latency_ms / 1e3 + p * KV_BYTES * 8 / (gbps * 1e9)
    reqs = [Request(0, 0.0, p, 3), Request(1, 0.0, p, 3)]
    raw = pair(reqs, prefill_kv=p, gbps=gbps, latency_ms=latency_ms)   # room for one prompt
    first, second = raw.states
    assert second.first_scheduled_s == pytest.approx(first.first_token_s + transfer, rel=1e-12)
    assert raw.prefill[0].peak_kv_blocks == p // 16
    assert all(st.status is Status.FINISHED for st in raw.states)


def test_a_one_token_output_ends_on_the_prefill_side():
    raw = pair([Request(0, 0.0, 100, 1), Request(1, 0.0, 100, 2)], decode=2)
    solo, pair_ = raw.handoffs
    assert (solo.prefill_replica, solo.decode_replica) == (0, -1)
    assert solo.transfer_s != solo.transfer_s            # NaN: nothing moved
    assert pair_.decode_replica == 0                     # the first request routed to decode
    assert [st.output_tokens for st in raw.states] == [1, 2]
    assert raw.states[0].finished_s == raw.states[0].first_token_s


def test_a_request_the_decode_pool_cannot_hold_is_refused_before_prefill():
    raw = pair([Request(0, 0.0, 300, 400), Request(1, 0.0, 100, 5)], decode_kv=512)
    big, small = raw.states
    assert big.status is Status.REJECTED and big.reject_reason == "over_kv_capacity"
    assert raw.handoffs[0].prefill_replica == -1 and big.output_tokens == 400
    assert small.status is Status.FINISHED
    assert len(raw.prefill[0].states) == 1               # only the small one was prefilled


# ---------------------------------------------------------------------------------------------
# The decode side's policies see arrivals that need no prefill


def test_a_decode_policy_sees_arrivals_with_their_prompt_cached():
    seen = []

    class Recording(type(make_policy("vllm-v1"))):
        def on_arrival(self, req):
            seen.append((req.request_id, req.status, req.computed, req.generated, req.remaining,
                         req.is_prefill, req.kv_blocks))
            super().on_arrival(req)

    reqs = [Request(0, 0.0, 300, 5), Request(1, 0.01, 40, 9)]
    raw = pair(reqs, decode_policy=Recording)
    assert seen == [(0, Status.WAITING, 300, 1, 1, False, 0),
                    (1, Status.WAITING, 40, 1, 1, False, 0)]
    # Admitted to a decode step, each took the blocks of its context (prompt + 1) at once.
    tl = raw.decode[0].timeline
    assert tl[0].prefill_tokens == 0 and tl[0].decode_requests == 1
    assert tl[0].kv_used_tokens == -(-301 // 16) * 16


@pytest.mark.parametrize("policy", ["vllm-v1", "sarathi", "orca", "sjf", "mcsf", "wait",
                                    "nested-wait"])
def test_decode_replicas_only_decode(policy):
    cfg = RunConfig(prefill_replicas=1, decode_replicas=2, policy=policy, num_requests=120,
                    rate=6.0, prompt_len="256:2048", output_len="8:300",
                    kv_capacity=60_000).validate()
    result = simulate(cfg)
    req, tl, cluster = result.requests, result.timeline, result.summary["cluster"]
    assert (req.status == "completed").all()
    prefill_side, decode_side = tl[tl.replica == 0], tl[tl.replica >= 1]
    assert (prefill_side.decode_requests == 0).all()     # a prefill replica never decodes
    # A decode replica computes one token per request per step, unless it preempted one.
    if all(r["preemptions"] == 0 for r in cluster["per_replica"][1:]):
        assert (decode_side.prefill_tokens == 0).all()
        assert int(decode_side.decode_requests.sum()) == int((req.output_tokens - 1).sum())
    assert [r["pool"] for r in cluster["per_replica"]] == ["prefill", "decode", "decode"]


# ---------------------------------------------------------------------------------------------
# Invariants over random pools, routers and policies


POLICIES = ["vllm-v1", "sarathi", "orca", "sjf", "wait"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefill=hs.integers(1, 3), decode=hs.integers(1, 3),
       routers=hs.tuples(hs.sampled_from(router_names()), hs.sampled_from(router_names())),
       policy=hs.sampled_from(POLICIES), preemption=hs.sampled_from(["recompute", "restart"]),
       kv=hs.integers(800, 6_000), rate=hs.floats(2, 100), gbps=hs.floats(1, 800),
       latency_ms=hs.floats(0, 5), seed=hs.integers(0, 10_000))
def test_disaggregated_invariants(prefill, decode, routers, policy, preemption, kv, rate, gbps,
                                  latency_ms, seed):
    n = 80
    fields = dict(prefill_replicas=prefill, decode_replicas=decode, router=routers[0],
                  decode_router=routers[1], policy=policy, preemption=preemption,
                  kv_capacity=kv, rate=rate, num_requests=n, prompt_len="8:700",
                  output_len="1:200", seed=seed, cost_model="linear", kv_link_gbps=gbps,
                  kv_link_latency_ms=latency_ms)
    for key, name in zip(("router_params", "decode_router_params"), routers):
        if name == "power-of-d":
            fields[key] = {"d": 1}                  # fits a pool of any size
    cfg = build_config(fields, refuse_unused=False)
    result = simulate(cfg)                          # no stall: it returns
    req, tl, summary = result.requests, result.timeline, result.summary
    per = summary["cluster"]["per_replica"]
    assert len(per) == prefill + decode
    # Every request once, completed or rejected; a prefill replica for every one admitted.
    assert sorted(req.request_id) == list(range(n))
    assert set(req.status) <= {"completed", "rejected"}
    assert summary["completed"] + summary["rejected"] == n
    done = req[req.status == "completed"]
    assert done.prefill_replica.between(0, prefill - 1).all()
    crossed = done[done.output_tokens > 1]
    assert crossed.decode_replica.between(0, decode - 1).all()
    assert (done[done.output_tokens == 1].decode_replica == -1).all()
    assert sum(r["requests"] for r in per[:prefill]) == int((req.prefill_replica >= 0).sum())
    assert sum(r["requests"] for r in per[prefill:]) == int((req.decode_replica >= 0).sum())
    # KV within each replica's capacity at every iteration.
    for i, r in enumerate(per):
        assert (tl[tl.replica == i].kv_used_tokens <= r["kv_capacity_tokens"]).all()
        assert r["peak_kv_tokens"] <= r["kv_capacity_tokens"]
    # Tokens: a prefill replica computes prompts (and recomputes after preemptions), never a
    # decode; a decode replica without preemptions computes output - 1 tokens per request.
    for i in range(prefill):
        mine = done[done.prefill_replica == i]
        computed = int(tl[tl.replica == i].prefill_tokens.sum())
        assert (tl[tl.replica == i].decode_requests == 0).all()
        assert computed >= int(mine.prompt_tokens.sum())
        if per[i]["preemptions"] == 0:
            assert computed == int(mine.prompt_tokens.sum())
    for j in range(decode):
        mine = crossed[crossed.decode_replica == j]
        mine_tl = tl[tl.replica == prefill + j]
        if per[prefill + j]["preemptions"] == 0:
            assert int(mine_tl.decode_requests.sum()) == int((mine.output_tokens - 1).sum())
            assert int(mine_tl.prefill_tokens.sum()) == 0
    # Causal order, and transfers on one link never overlap.
    assert (done.first_token_s >= done.arrival_s).all()
    landed = crossed.first_token_s + crossed.link_wait_s + crossed.transfer_s
    assert (crossed.completion_s >= landed - 1e-12).all()
    assert (crossed.link_wait_s >= 0).all()
    for i in range(prefill):
        mine = crossed[crossed.prefill_replica == i]
        start = (mine.first_token_s + mine.link_wait_s).sort_values()
        ends = (start + mine.transfer_s.loc[start.index]).to_numpy()
        assert (start.to_numpy()[1:] >= ends[:-1] - 1e-12).all()


# ---------------------------------------------------------------------------------------------
# Determinism, sweeps and the front door


def test_same_seed_same_tables():
    def run(seed):
        return simulate(RunConfig(prefill_replicas=2, decode_replicas=3, router="random",
                                  decode_router="power-of-d", num_requests=200, rate=10.0,
                                  prompt_len="512:2048", output_len="16:256",
                                  kv_capacity=30_000, seed=seed).validate())
    a, b = run(5), run(5)
    assert a.requests.equals(b.requests) and a.timeline.equals(b.timeline)
    assert {k: v for k, v in a.summary.items() if "wall" not in k} == \
        {k: v for k, v in b.summary.items() if "wall" not in k}
    assert not a.requests.prefill_replica.equals(run(6).requests.prefill_replica)


def test_pool_sizes_are_sweep_axes(tmp_path):
    from simulator.cli import main
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: pd\nbase: {num_requests: 40, rate: 4, decode_replicas: 1}\n"
                    "axes:\n  prefill_replicas: [1, 2]\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "-j", "1"]) == 0
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(table.prefill_replicas) == [1, 2]
    assert list(table["cluster.prefill_replicas"]) == [1, 2]
    assert list(table["cluster.replicas"]) == [2, 3]


@pytest.mark.parametrize("args, names", [
    (["--prefill-replicas", "2"], "decode_replicas"),
    (["--decode-replicas", "2"], "prefill_replicas"),
    (["--prefill-replicas", "0", "--decode-replicas", "1"], "prefill"),
    (["--prefill-replicas", "1", "--decode-replicas", "-3"], "decode"),
    (["--prefill-replicas", "1", "--decode-replicas", "1", "--kv-link-gbps", "-5"], "kv-link"),
    (["--prefill-replicas", "1", "--decode-replicas", "1", "--kv-link-gbps", "0"], "kv-link"),
    (["--prefill-replicas", "1", "--decode-replicas", "1", "--kv-link-latency-ms", "-1"],
     "kv-link-latency"),
    (["--kv-link-gbps", "100"], "prefill_replicas"),
    (["--replicas", "2", "--prefill-replicas", "1", "--decode-replicas", "1"], "replicas"),
    (["--prefill-replicas", "1", "--decode-replicas", "1", "--decode-router", "nope"], "nope"),
    (["--prefill-replicas", "1", "--decode-replicas", "2", "--router", "power-of-d", "-R",
      "d=2"], "prefill pool"),
    (["--prefill-replicas", "2", "--decode-replicas", "1", "--decode-router", "power-of-d",
      "--decode-router-param", "d=2"], "decode pool"),
    (["--prefill-replicas", "2", "--decode-replicas", "2", "--decode-router-param", "d=2"],
     "decode_router"),
])
def test_bad_flags_are_one_line_and_exit_2(args, names, capsys):
    from simulator.cli import main
    assert main(["run", "-n", "5", "-q", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names.replace("_", "-") in err[0].replace("_", "-"), err
