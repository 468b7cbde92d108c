"""experiments/disagg.py on a tiny grid: its points measure what they say (a light load meets
every objective; the transfer is the link's closed form), and its tables and plot are written
from its CSV."""

from __future__ import annotations


import pandas as pd
import pytest

from conftest import load_experiment
from simulator.hardware import model_spec


def load():
    return load_experiment("disagg")


def test_points_at_light_load_meet_the_slo_and_price_the_transfer():
    exp = load()
    fields = {"prompt_len": "2048", "output_len": "16"}
    agg = exp.point(fields, exp.CLUSTERS["aggregated 4"], 1.0, 40, 0, exp.SLO_MS)
    pd_ = exp.point(fields, exp.CLUSTERS["3P+1D"], 1.0, 40, 0, exp.SLO_MS)
    for row in (agg, pd_):
        assert row["completed"] == 40
        assert row["slo_attainment"] == row["ttft_attainment"] == row["tpot_attainment"] == 1.0
    assert "mean_transfer_ms" not in agg
    kv = model_spec(exp.BASE["model"]).kv_bytes_per_token
    transfer_ms = 2048 * kv * 8 / 200e9 * 1e3
    assert pd_["mean_transfer_ms"] == pytest.approx(transfer_ms, rel=1e-9)
    # The client's TPOT spreads the transfer (and any link wait) over the 15 later tokens.
    assert pd_["p90_tpot_ms"] > pd_["p90_decode_tpot_ms"]
    assert agg["p90_tpot_ms"] == pytest.approx(agg["p90_decode_tpot_ms"], rel=1e-9)


def test_capacity_is_the_last_rate_before_the_first_miss():
    exp = load()
    curve = pd.DataFrame({"rate": [4, 8, 12, 16], "x": [0.95, 0.91, 0.5, 0.97]})
    assert exp.capacity(curve, "x") == 8      # a later recovery does not count
    assert exp.capacity(curve.assign(x=[0.2, 1, 1, 1]), "x") == 0


def test_tables_and_plot_come_from_the_csv(tmp_path):
    exp = load()
    rows = []
    for cluster in exp.CLUSTERS:
        for rate, att in ((4.0, 1.0), (8.0, 0.5)):
            rows.append({"workload": "p2048d128", "cluster": cluster, "rate": rate, "seed": 0,
                         "slo_ttft_ms": 1000.0, "slo_tpot_ms": 30.0, "requests": 10,
                         "ttft_attainment": att, "tpot_attainment": 1.0, "slo_attainment": att,
                         "p90_ttft_ms": 100.0, "p90_tpot_ms": 15.0})
    pd.DataFrame(rows).to_csv(tmp_path / "disagg.csv", index=False)
    pd.DataFrame([{"kv_link_gbps": 10.0, "seed": 0, "slo_attainment": 0.25,
                   "p90_ttft_ms": 150.0, "p90_tpot_ms": 20.0, "p90_e2el_ms": 3000.0,
                   "mean_transfer_ms": 214.7, "mean_link_wait_ms": 190.0}]).to_csv(
        tmp_path / "disagg_link.csv", index=False)
    assert exp.main(["--tables-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "disagg.md").read_text()
    assert "| 3P+1D | 4 | 8 | 4 |" in text          # TTFT, TPOT, both
    assert "| 10 | 0.250 | 150 | 20.0 | 3,000 | 214.7 | 190.0 |" in text
    assert (tmp_path / "disagg.png").stat().st_size > 0
