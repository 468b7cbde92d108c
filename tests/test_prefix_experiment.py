"""The prefix-caching experiment runs (its quick grid): the session sweep (no trace needed) and
a small hand-made Mooncake-format trace, each writing its CSV, its figure and results.md."""

from __future__ import annotations

import json

import pandas as pd

from experiments.prefix import run


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_session_sweep_hit_rate_grows_with_turns(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    assert run.main(["--quick", "--trace", str(tmp_path / "absent.jsonl")]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "Multi-turn sessions" in text and "Mooncake" not in text
    assert "(sessions.png)" in text and _png(tmp_path / "sessions.png")
    assert not (tmp_path / "mooncake.png").exists()
    frame = pd.read_csv(tmp_path / "sessions.csv")
    on, off = frame[frame["prefix_caching"]], frame[~frame["prefix_caching"]]
    rates = on["prefix_cache_hit_rate"].tolist()
    assert rates[0] == 0 and all(a < b for a, b in zip(rates, rates[1:]))
    # Closed loop, nothing evicted: the simulated hit rate is the closed form.
    assert (on["prefix_cache_hit_rate"] - on["expected_hit_rate"]).abs().max() < 1e-12
    assert off["prefix_cache_hit_rate"].isna().all() and off["expected_hit_rate"].isna().all()
    assert (frame["completed"] == 160).all()
    # Against load: every (turns, load) with the cache on and off, all served; a hit never
    # beyond the closed form (a closed loop; at the lightest load nothing is evicted); the
    # cache's saved prefill gives every later turn its first token sooner.
    assert "against offered load" in text and _png(tmp_path / "sessions_load.png")
    load = pd.read_csv(tmp_path / "sessions_load.csv")
    assert len(load) == 2 * 3 * len(run.LOADS) and (load["completed"] == 160).all()
    on = load[load["prefix_caching"]].set_index(["turns", "request_rate"])
    off = load[~load["prefix_caching"]].set_index(["turns", "request_rate"])
    assert (on["prefix_cache_hit_rate"] <= on["expected_hit_rate"] + 1e-12).all()
    lightest = on.xs(min(run.LOADS), level="request_rate")
    assert (lightest["prefix_cache_hit_rate"] - lightest["expected_hit_rate"]).abs().max() < 1e-12
    assert (on["mean_ttft_ms"] < off.loc[on.index, "mean_ttft_ms"]).all()


def test_quick_mooncake_part_writes_its_figure(tmp_path, monkeypatch):
    """Eight conversations of five turns in Mooncake's format (each turn's hash_ids extend the
    previous turn's): the three configurations, with the unbounded cache's hit rate at most its
    closed form, and the figure."""
    records, next_id = [], 100
    for conv in range(8):
        ids = []
        for turn in range(5):
            ids = ids + [next_id, next_id + 1]
            next_id += 2
            records.append({"timestamp": 1000 * (conv + 10 * turn), "input_length": 512 * len(ids),
                            "output_length": 32, "hash_ids": ids})
    records.sort(key=lambda r: r["timestamp"])
    trace = tmp_path / "tiny_mooncake.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "results"
    monkeypatch.setattr(run, "RESULTS", out)
    monkeypatch.setattr(run, "sessions", lambda quick: pd.DataFrame(
        {"prefix_caching": [True, False], "turns": [1, 1], "prefix_cache_hit_rate": [0.0, None],
         "expected_hit_rate": [0.0, None], "mean_ttft_ms": [1.0, 1.0], "p90_ttft_ms": [1.0, 1.0],
         "mean_e2el_ms": [1.0, 1.0]}))
    assert run.main(["--quick", "--trace", str(trace)]) == 0
    assert "(mooncake.png)" in (out / "results.md").read_text() and _png(out / "mooncake.png")
    frame = pd.read_csv(out / "mooncake.csv")
    assert frame["prefix_caching"].tolist() == [False, True, True]
    unbounded = frame.iloc[2]
    # Turn k repeats 2(k-1) of its 2k blocks: (0 + 2 + 4 + 6 + 8) / (2 + 4 + 6 + 8 + 10) = 2/3.
    assert unbounded["expected_hit_rate"] == 20 / 30
    assert 0 < unbounded["prefix_cache_hit_rate"] <= unbounded["expected_hit_rate"] + 1e-12
    assert (frame["completed"] == 40).all()
