"""Smoke test of the paper's experiments: every script's --quick mode writes its CSV, Markdown
table and plot."""

import pandas as pd

from experiments.paper import run_all
from tests.conftest import require_shared


def test_quick_experiments_write_their_outputs(tmp_path, capsys):
    require_shared("traces", "sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    require_shared("traces", "AzureLLMInferenceTrace_conv.csv")
    run_all.main(["--quick", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path)])
    assert "all four" in capsys.readouterr().out
    for name in ("exp1", "exp2", "exp3", "exp4_sharegpt", "exp4_azure"):
        for ext in ("csv", "md", "png"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
        runs = pd.read_csv(tmp_path / f"{name}_runs.csv")
        assert (runs["unfinished"] == 0).all()          # every policy finishes every request
    exp1 = (tmp_path / "exp1.md").read_text()
    assert "lambda*" in exp1 and "wait (no patience: strict)" in exp1
    exp3 = pd.read_csv(tmp_path / "exp3.csv")
    assert set(exp3["policy"]) == {"vllm", "sarathi", "wait", "vllm (restart)"}
