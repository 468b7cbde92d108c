"""Prefix caching in the native engine (simulator/prefix_cache.py, docs/prefix-caching.md):
the hit rate against a closed form from a Mooncake trace's hash_ids, LRU eviction against a
hand-computed sequence, vLLM's rules at the edges, and the run field."""

from __future__ import annotations

import click
import pytest

from conftest import require_shared
from scheduler import QueuedPolicy
from scheduler.state import Decision
from simulator.cli.options import config_from_options, run_options
from simulator.config import RunConfig
from simulator.errors import ConfigError, PolicyViolation
from simulator.policycheck import check_outcome, simulate
from simulator.runner import build_workload, simulate as simulate_run
from traces.request import SYSTEM_PROMPT, Request, TokenRuns

MOONCAKE = ("traces", "conversation_trace.jsonl")


def _shared(key: int, length: int) -> TokenRuns:
    return TokenRuns(((SYSTEM_PROMPT, key, length),))


def test_lru_eviction_on_a_hand_made_sequence():
    """Six blocks of 4 tokens; each request arrives after the previous one finished and holds
    3 blocks (a prompt of 9 tokens: 8 shared, 1 its own). Freed cached blocks join the LRU tail
    last block first, so the cyclic prefixes A, B, C, A, B, C, A each evict the second block of
    the prefix due next: every revisit hits its first block only (4 tokens). A right after A
    hits both blocks; a prompt that is all cached (8 tokens of A) still computes its last
    block (vLLM: at most all tokens but one hit). Evictions: one each for requests 2 to 6."""
    keys = [1, 2, 3, 1, 2, 3, 1, 1, 1]
    prompts = [9] * 8 + [8]
    reqs = [Request(i, 10.0 * i, p, 1, prefix=_shared(k, 8))
            for i, (k, p) in enumerate(zip(keys, prompts))]
    out = simulate(reqs, "vllm-v1", kv_tokens=24, block_size=4, prefix_caching=True)
    check_outcome(out, reqs)
    cache = out.raw.prefix_cache
    assert [cache.cached_prompt_tokens[i] for i in range(len(reqs))] == \
        [0, 0, 0, 4, 4, 4, 4, 8, 4]
    assert cache.stats["prefix_cache_evictions"] == 5
    assert cache.stats["prefix_cache_hits"] == 4 * 5 + 8 == 28
    assert cache.stats["prefix_cache_queries"] == sum(prompts)
    assert cache.stats["prefix_cache_hit_rate"] == pytest.approx(28 / 80)


def test_blocks_stay_cached_for_running_requests_and_are_shared_once():
    """A request arriving while another with the same 64-token prefix is decoding hits the
    prefix (blocks of running requests stay cached) and holds those blocks with it: KV in use
    counts them once (exactly so at every step: the checker's pool check, run by simulate)."""
    reqs = [Request(0, 0.0, 80, 40, prefix=_shared(7, 64)),
            Request(1, 0.1, 80, 40, prefix=_shared(7, 64))]
    out = simulate(reqs, "vllm-v1", kv_tokens=1024, block_size=16, prefix_caching=True)
    check_outcome(out, reqs)
    assert out.raw.prefix_cache.cached_prompt_tokens == {0: 0, 1: 64}
    both = out.raw.states
    assert both[1].first_token_s < both[0].finished_s     # they ran together
    # Alone each peaks at ceil((80 + 39) / 16) = 8 blocks; together at most 8 + 8 - 4 shared.
    assert 8 < out.raw.peak_kv_blocks <= 12


def test_a_preempted_request_recomputes_from_the_cache():
    """Nine blocks: both 60-token prompts fit (4 blocks each); at token 64 the first request
    takes the last free block and the second is preempted with 4 full blocks, which go to the
    cache, its last block at the head of the LRU queue. The first request's one more block
    (at token 80) evicts that one: the recompute finds 3 blocks (48 tokens) cached."""
    reqs = [Request(0, 0.0, 60, 30), Request(1, 0.0, 60, 30)]
    out = simulate(reqs, "vllm-v1", kv_tokens=144, block_size=16, prefix_caching=True)
    check_outcome(out, reqs)
    assert [s.preemptions for s in out.raw.states] == [0, 1]
    assert out.raw.prefix_cache.stats["prefix_cache_hits"] == 48
    # A request's first admission found nothing cached (no shared prompt): only the
    # recompute hit, the blocks its first run computed.
    assert set(out.raw.prefix_cache.cached_prompt_tokens.values()) == {0}


class _IgnoresTheHit(QueuedPolicy):
    """Admits the head of the queue with its whole prompt, as if nothing were cached."""

    name = "ignores-the-hit"

    def schedule(self, view):
        d = Decision()
        for st in view.resident:
            d.decode.append(st)
        if self.waiting and not view.resident:
            st = self.waiting.pop()
            d.prefill.append((st, st.prompt_tokens + st.generated - st.computed))
        return d


def test_a_policy_that_computes_cached_tokens_is_refused_by_name():
    reqs = [Request(0, 0.0, 40, 2, prefix=_shared(1, 32)),
            Request(1, 5.0, 40, 2, prefix=_shared(1, 32))]
    with pytest.raises(PolicyViolation, match="request 1 was given 40 prefill tokens"):
        simulate(reqs, _IgnoresTheHit, kv_tokens=4096, block_size=16, prefix_caching=True)


def _mooncake_closed_form(frame, block_size: int) -> tuple[list[int], float]:
    """Each request's hit if every earlier request's prompt is cached: the longest run of its
    leading 512-token hash_ids blocks whose whole prefix an earlier request had (compared as
    tuples, not trusting the chaining), in tokens (the last block is partial), cut to all
    tokens but one and down to whole blocks of ``block_size``."""
    seen: set[tuple] = set()
    hits = []
    for prompt, ids in zip(frame["prompt_tokens"], frame["hash_ids"]):
        ids = tuple(ids)
        matched = 0
        for j in range(len(ids)):
            if ids[:j + 1] not in seen:
                break
            matched = min(512 * (j + 1), prompt)
        hits.append(min(matched, prompt - 1) // block_size * block_size)
        seen.update(ids[:j + 1] for j in range(len(ids)))
    return hits, sum(hits) / int(frame["prompt_tokens"].sum())


@pytest.mark.parametrize("block_size", [16, 512])
def test_mooncake_hit_rate_equals_the_closed_form_from_hash_ids(block_size):
    """Capacity for everything (no eviction) and one request at a time (each arrives 1000 s
    after the previous): each request's cached prompt tokens, and so the hit rate, equal the
    closed form computed from the trace's hash_ids. Block size 512 is Mooncake's own."""
    path = require_shared(*MOONCAKE)
    cfg = RunConfig(trace=str(path), num_requests=300, model="llama-3.1-8b", gpu="h100-80gb",
                    generate_arrivals=True, arrival="deterministic", rate=0.001,
                    kv_capacity=10**9, block_size=block_size, timeline=False).validate()
    workload = build_workload(cfg)
    hits, rate = _mooncake_closed_form(workload.frame, block_size)
    result = simulate_run(cfg, workload)
    frame = result.requests
    assert (frame["status"] == "completed").all()
    assert frame["cached_prompt_tokens"].tolist() == hits
    assert result.summary["prefix_cache_evictions"] == 0
    assert result.summary["prefix_cache_hit_rate"] == pytest.approx(rate, rel=1e-12)
    assert rate > 0.05     # the trace does share prefixes: the test is not vacuous


def test_prefix_caching_defaults_to_on_only_with_prefix_identity():
    """Unset, the field follows the workload: a trace with hash_ids turns the cache on (its
    columns and summary keys appear), a synthetic workload without sharing leaves it off (the
    outputs are those without a cache); given, it is obeyed."""
    path = require_shared(*MOONCAKE)
    trace = dict(trace=str(path), num_requests=20, model="llama-3.1-8b", gpu="h100-80gb")
    on = simulate_run(RunConfig(**trace).validate())
    assert "cached_prompt_tokens" in on.requests and "cached_blocks" in on.timeline
    assert on.summary["prefix_cache_queries"] > 0
    off = simulate_run(RunConfig(**trace, prefix_caching=False).validate())
    assert "cached_prompt_tokens" not in off.requests and "prefix_cache_hits" not in off.summary
    synthetic = simulate_run(RunConfig(num_requests=20).validate())
    assert "prefix_cache_hits" not in synthetic.summary
    forced = simulate_run(RunConfig(num_requests=20, prefix_caching=True).validate())
    assert forced.summary["prefix_cache_hits"] == 0     # nothing shared, no preemption
    assert forced.requests.drop(columns="cached_prompt_tokens").equals(synthetic.requests)


def test_prefix_caching_flags():
    """Neither flag: unset (follow the workload); --prefix-caching / --no-prefix-caching."""
    seen = {}

    @click.command()
    @run_options
    def cmd(**opts):
        seen["cfg"] = config_from_options(opts)

    for args, expected in (([], None), (["--prefix-caching"], True),
                           (["--no-prefix-caching"], False)):
        cmd.main(args, standalone_mode=False)
        assert seen["cfg"].prefix_caching is expected


def test_session_turns_arrive_after_the_previous_answer_plus_think_time():
    """Closed loop: every later turn arrives exactly its think time after the previous turn of
    its session completed (never before), its prompt is the previous prompt + answer + a new
    message, and (nothing evicted) it finds exactly the previous turn's full blocks cached: the
    whole blocks of its prompt + answer - 1 tokens, the KV the previous turn computed."""
    cfg = RunConfig(num_requests=120, session_turns=4, think_time=1.5, rate=2.0,
                    prompt_len="32:200", output_len="8:100", seed=4).validate()
    workload = build_workload(cfg)
    result = simulate_run(cfg, workload)
    frame = result.requests.set_index("request_id")
    table = workload.frame.set_index("request_id")
    assert (frame["status"] == "completed").all()
    later = table[table["think_s"] > 0]
    assert len(later) == 90 and table["think_s"].groupby(table["session_id"]).first().eq(0).all()
    for rid, row in later.iterrows():
        prev = rid - 1                  # turns of a session are consecutive request ids
        assert table.loc[prev, "session_id"] == row["session_id"]
        assert frame.loc[rid, "arrival_s"] == pytest.approx(
            frame.loc[prev, "completion_s"] + row["think_s"], abs=1e-9)
        assert frame.loc[rid, "arrival_s"] >= frame.loc[prev, "completion_s"]
        assert row["prompt_tokens"] > table.loc[prev, "prompt_tokens"] + \
            table.loc[prev, "output_tokens"]
        computed_before = table.loc[prev, "prompt_tokens"] + table.loc[prev, "output_tokens"] - 1
        assert frame.loc[rid, "cached_prompt_tokens"] == computed_before // 16 * 16
    assert result.summary["prefix_cache_evictions"] == 0


def test_a_system_prompt_on_part_of_the_sessions_is_on_all_their_turns():
    """A share below 1 with sessions picks sessions, not turns: every turn of a session that
    carries the system prompt holds it first, and each later turn's prompt is still the
    previous prompt + answer + a new message; with nothing evicted, a later turn finds all the
    previous turn's computed full blocks cached, and a carrying session's first turn the
    system prompt's (after the first carrier)."""
    cfg = RunConfig(num_requests=160, session_turns=4, think_time=1.0, rate=0.05,
                    prompt_len="32:200", output_len="8:100", system_prompt_len=256,
                    system_prompt_share=0.5, seed=3).validate()
    workload = build_workload(cfg)
    table = workload.frame.set_index("request_id")
    carried = table.groupby("session_id")["system_prompt_tokens"]
    assert (carried.nunique() == 1).all()                        # whole sessions
    sessions = int((carried.first() == 256).sum())
    assert 5 < sessions < 35
    record = workload.meta["transforms"][-1]
    assert (record["sessions_carried"], record["carried"]) == (sessions, 4 * sessions)
    runs = dict(zip(table.index, workload.requests()))
    result = simulate_run(cfg, workload)
    frame = result.requests.set_index("request_id")
    first_carrier = None
    for rid, row in table.iterrows():
        prefix = runs[rid].prefix
        carries = row["system_prompt_tokens"] == 256
        assert (prefix is not None and prefix.runs[:1] == ((SYSTEM_PROMPT, 0, 256),)) == carries
        if row["think_s"] > 0:                                   # a later turn
            prev = table.loc[rid - 1]
            assert row["prompt_tokens"] > prev["prompt_tokens"] + prev["output_tokens"]
            computed = prev["prompt_tokens"] + prev["output_tokens"] - 1
            assert frame.loc[rid, "cached_prompt_tokens"] == computed // 16 * 16
        elif carries:
            hit = 0 if first_carrier is None else 256
            first_carrier = rid if first_carrier is None else first_carrier
            assert frame.loc[rid, "cached_prompt_tokens"] == hit
    assert result.summary["prefix_cache_evictions"] == 0


def test_a_session_workload_reports_its_session_rate_and_the_request_rate_it_offers():
    """Sessions start at the arrival rate; each brings its turns, so the requests offered per
    second are the rate times the turns (what a fluid policy plans with): as given, measured
    from the table, and unchanged by a system prompt (which moves no arrival)."""
    from simulator.runner import workload_hint
    for extra in ({}, {"system_prompt_len": 128}):
        cfg = RunConfig(num_requests=400, session_turns=4, think_time=1.0, rate=8.0,
                        prompt_len="32:64", output_len="8:16", **extra).validate()
        workload = build_workload(cfg)
        assert workload.meta["session_rate"] == 8.0 and workload.meta["mean_rate"] == 32.0
        measured = workload.summary()
        starts = workload.frame.groupby("session_id")["arrival_s"].first()
        assert measured["session_rate"] == pytest.approx(99 / (starts.iloc[-1] - starts.iloc[0]))
        assert measured["mean_rate"] == pytest.approx(4 * measured["session_rate"])
        assert workload_hint(workload).arrival_rate == 32.0


def test_length_filters_on_sessions_are_refused_in_one_line():
    for field in ("prompt_range", "output_range"):
        with pytest.raises(ConfigError, match="prompt_range and output_range .*session_turns"):
            RunConfig(session_turns=4, **{field: "10:100"}).validate()


def test_system_prompt_hit_rate_equals_its_closed_form():
    """A 300-token system prompt on a seeded 60% of the requests, one request at a time and no
    eviction: every carrier after the first finds floor(300 / 16) blocks cached, nobody else
    anything."""
    cfg = RunConfig(num_requests=100, system_prompt_len=300, system_prompt_share=0.6,
                    arrival="deterministic", rate=0.01, kv_capacity=1 << 20,
                    seed=2).validate()
    workload = build_workload(cfg)
    carriers = (workload.frame["system_prompt_tokens"] > 0).to_numpy()
    assert 40 < carriers.sum() < 80
    expected = [300 // 16 * 16 if c else 0 for c in carriers]
    expected[int(carriers.argmax())] = 0              # the first carrier computes it
    result = simulate_run(cfg, workload)
    assert result.requests["cached_prompt_tokens"].tolist() == expected
    assert result.summary["prefix_cache_hit_rate"] == pytest.approx(
        sum(expected) / workload.frame["prompt_tokens"].sum())


def test_sessions_on_a_trace_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="^session_turns shapes synthetic workloads"):
        RunConfig(trace="x.jsonl", session_turns=3).validate()
    with pytest.raises(ConfigError, match="^system_prompt_len shapes synthetic workloads"):
        RunConfig(trace="x.jsonl", system_prompt_len=100).validate()
    with pytest.raises(ConfigError, match=r"^session_turns 4 needs num_requests >= 4 \(one "
                                          r"session's turns\), got 3$"):
        RunConfig(session_turns=4, num_requests=3).validate()
    with pytest.raises(ConfigError, match=r"needs num_requests >= 2000 .*got 1000$"):
        RunConfig(session_turns=2000).validate()          # against the default count


@pytest.mark.parametrize("fields,warning", [
    (dict(think_time=5.0), "think_time 5 s is unused: it spaces the turns of sessions"),
    (dict(system_prompt_share=0.5), "system_prompt_share 0.5 is unused without"),
    (dict(session_turns=4, num_requests=10), "num_requests 10 makes 2 sessions of 4 turns: 8 "
                                             "requests"),
])
def test_workload_settings_that_shape_nothing_are_warned_of(fields, warning):
    """Said in the summary's workload warnings (the CLI prints them), not silently dropped; on
    a trace replay too."""
    cfg = RunConfig(**{"num_requests": 12, **fields}).validate()
    warnings = simulate_run(cfg).summary["workload"]["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith(warning)
    if "session_turns" not in fields:
        replay = RunConfig(trace=str(require_shared("traces/conversation_trace.jsonl")),
                           num_requests=12, model="llama-3.1-8b", **fields).validate()
        assert build_workload(replay).meta["warnings"][-1].startswith(warning)
    assert "warnings" not in simulate_run(RunConfig(num_requests=12).validate()).summary[
        "workload"]


@pytest.mark.parametrize("fields", [
    dict(trace="mooncake", num_requests=400, target_rate=3.0, model="llama-3.1-8b",
         gpu="h100-80gb", kv_capacity=400_000),
    dict(session_turns=12, num_requests=240, rate=2.0, think_time=1.0, system_prompt_len=300,
         system_prompt_share=0.5, prompt_len="16:300", output_len="8:200", kv_capacity=60_000),
])
@pytest.mark.parametrize("policy", ["vllm-v1", "sarathi"])
def test_look_ups_walked_or_bisected_give_one_run(monkeypatch, fields, policy):
    """``BlockPool._prefix`` walks a chain of at most ``_WALKED_SEGMENTS`` segments and
    bisects a longer one: walking every chain, or bisecting every one, gives the same tables
    (long sessions make chains of more than 8 segments; the Mooncake trace's are short)."""
    import simulator.prefix_cache as prefix_cache
    if fields.get("trace") == "mooncake":
        fields = {**fields, "trace": str(require_shared(*MOONCAKE))}
    cfg = RunConfig(policy=policy, **fields).validate()
    tables = []
    for walked in (0, 1 << 30):
        monkeypatch.setattr(prefix_cache, "_WALKED_SEGMENTS", walked)
        result = simulate_run(cfg)
        assert result.summary["prefix_cache_hits"] > 0
        tables.append((result.requests.to_csv(), result.timeline.to_csv()))
    assert tables[0] == tables[1]
