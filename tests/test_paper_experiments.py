"""Smoke test of the paper's experiments: every script's --quick mode writes its CSV, Markdown
table and plot; and the --cost option (the paper's own linear cost) moves the grids with the
fluid limit and writes to its own folder."""

from pathlib import Path

import pandas as pd
import pytest

from experiments.paper import common, exp1_single_type, run_all
from tests.conftest import require_shared


def test_quick_experiments_write_their_outputs(tmp_path, capsys):
    require_shared("traces", "sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    require_shared("traces", "AzureLLMInferenceTrace_conv.csv")
    run_all.main(["--quick", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path)])
    assert "all experiments" in capsys.readouterr().out
    for name in ("exp1", "exp1b", "exp2", "exp3", "exp4_sharegpt", "exp4_azure"):
        for ext in ("csv", "md", "png"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
        runs = pd.read_csv(tmp_path / f"{name}_runs.csv")
        assert (runs["unfinished"] == 0).all()          # every policy finishes every request
    exp1 = (tmp_path / "exp1.md").read_text()
    assert "lambda*" in exp1 and "wait (no patience: strict)" in exp1
    exp3 = pd.read_csv(tmp_path / "exp3.csv")
    assert set(exp3["policy"]) == {"vllm", "sarathi", "wait", "vllm (restart)"}


def test_quick_runs_without_out_never_write_over_the_committed_results(tmp_path, monkeypatch,
                                                                     capsys):
    results = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", results)
    monkeypatch.setattr(common.tempfile, "tempdir", str(tmp_path))
    for cost in ("roofline", "paper-linear"):
        out = common.parse_args("x", ["--quick", "--cost", cost]).out
        assert out.parent == tmp_path and out.name.startswith("servesim-quick-")
    assert "--quick without --out: writing to" in capsys.readouterr().err
    assert common.parse_args("x", ["--quick", "--out", "here"]).out.name == "here"
    seen = []
    monkeypatch.setattr(exp1_single_type, "main", lambda argv: seen.append(argv))
    for mod in ("exp1b_baseline_budgets", "exp2_two_types", "exp3_long_decode",
                "exp4_mixed_lengths"):
        monkeypatch.setattr(getattr(run_all, mod), "main", lambda argv: seen.append(argv))
    run_all.main(["--quick", "--jobs", "1"])
    folders = {argv[argv.index("--out") + 1] for argv in seen}
    assert len(seen) == 5 and len(folders) == 1       # every experiment into one folder
    assert Path(folders.pop()).parent == tmp_path and not results.exists()


def test_paper_linear_cost_is_the_papers_fit_per_iteration():
    eq, fit = common.fluid_for_types(["p512d20:1"], "paper-linear")
    assert fit.source == "exact"
    assert (fit.d0, fit.d1) == pytest.approx((0.276 / 21, 0.0115e-3 / 21))
    # Memory binds first: M* = d0 rho / (1 - d1 rho) = C at rho = C / (d0 + d1 C), and the engine
    # runs o = 20 iterations per request, w = o (l + (o - 1) / 2) KV tokens of work. C is the
    # capacity in whole 16-token blocks.
    w = 20 * (512 + 19 / 2)
    C = common.KV_CAPACITY // 16 * 16
    assert eq.max_rate_scale == pytest.approx(C / ((fit.d0 + fit.d1 * C) * w), rel=1e-9)


def test_non_default_cost_follows_its_fluid_limit_into_its_own_folder(tmp_path, monkeypatch):
    assert common.parse_args("x", []).out == common.RESULTS
    assert common.parse_args("x", ["--cost", "paper-linear"]).out == \
        common.RESULTS / "paper-linear"
    out = tmp_path / "paper-linear"
    exp1_single_type.main(["--quick", "--seeds", "0", "--jobs", "1", "--cost", "paper-linear",
                           "--out", str(out)])
    runs = pd.read_csv(out / "exp1_runs.csv")
    assert (runs["unfinished"] == 0).all()
    # The quick grid 12, 20, 24 req/s sits at fractions of the roofline limit; under the paper's
    # cost every point sits at the same fraction of that cost's (5.8x larger) limit.
    roofline = common.fluid_for_types(["p512d20:1"])[0].max_rate_scale
    paper = common.fluid_for_types(["p512d20:1"], "paper-linear")[0].max_rate_scale
    xs = sorted(set(runs["x"]))
    assert xs == pytest.approx([x * paper / roofline for x in (12.0, 20.0, 24.0)], rel=5e-3)
    md = (out / "exp1.md").read_text()
    assert "[paper-linear cost]" in md and f"largest stable x = {paper:.2f}" in md
    # The runs themselves use the paper's cost: at the top point WAIT delivers several times the
    # roofline replica's throughput bound (20 tokens x its limit).
    summary = pd.read_csv(out / "exp1.csv")
    top = summary[(summary["policy"] == "wait") & (summary["x"] == xs[-1])].iloc[0]
    assert top["output_throughput"] > 3 * 20 * roofline
