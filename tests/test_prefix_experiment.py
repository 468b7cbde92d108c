"""The prefix-caching experiment runs (its quick grid, sessions only: no trace needed)."""

from __future__ import annotations

from experiments.prefix import run


def test_quick_session_sweep_hit_rate_grows_with_turns(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    assert run.main(["--quick", "--trace", str(tmp_path / "absent.jsonl")]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "Multi-turn sessions" in text and "Mooncake" not in text
    import pandas as pd
    frame = pd.read_csv(tmp_path / "sessions.csv")
    rates = frame["prefix_cache_hit_rate"].tolist()
    assert rates[0] == 0 and all(a < b for a, b in zip(rates, rates[1:]))
    assert (frame["completed"] == 160).all()
