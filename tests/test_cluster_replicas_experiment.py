"""experiments/cluster_replicas.py rebuilds its tables and its plot from a hand-made CSV
(--tables-only): the counts and attainments land in the right cells, the plot's lines carry the
CSV's numbers, and a missing or incomplete CSV is one clear line and exit status 2."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import ROOT, load_experiment


def load():
    return load_experiment("cluster_replicas")


@pytest.fixture(scope="module")
def exp():
    return load()


def hand_made(exp) -> pd.DataFrame:
    """Every policy / router at 1x and 3x: counts that differ by combination, one search that
    found no count (NaN at 3x for sarathi / round-robin)."""
    rows = []
    for i, (policy, router) in enumerate((p, r) for p in exp.POLICIES for r in exp.ROUTERS):
        for k, base in ((1, 2), (3, 5)):
            lost = (policy, router, k) == ("sarathi", "round-robin", 3)
            rows.append({"speedup": k, "policy": policy, "router": router,
                         "replicas": math.nan if lost else base + i,
                         "attainment": math.nan if lost else 0.95,
                         "attainment_one_fewer": 0.5 + 0.01 * i,
                         "requests": 123, "seeds": 3})
    return pd.DataFrame(rows)


def test_tables_and_plot_come_from_the_csv(exp, tmp_path):
    table = hand_made(exp)
    table.to_csv(tmp_path / "cluster_replicas.csv", index=False)
    assert exp.main(["--tables-only", "--out", str(tmp_path),
                     "--trace", str(tmp_path / "absent.csv")]) == 0
    text = (tmp_path / "cluster_replicas.md").read_text()
    assert "At 1x" not in text                      # no trace, no description of it
    # The size comes from the CSV, not from the flags' defaults.
    assert "(first 123 requests)" in text and "3 seeds pooled" in text
    assert "| 1x | 2 | 3 | 4 | 5 | 6 | 7 |" in text
    assert "| 3x | 5 | 6 | 7 | > 64 | 9 | 10 |" in text
    assert "| 1x | 0.950 (0.500) | 0.950 (0.510) |" in text
    assert "| 3x | 0.950 (0.500) | 0.950 (0.510) | 0.950 (0.520) | - (0.530) |" in text
    assert (tmp_path / "cluster_replicas.png").stat().st_size > 0


def test_the_markdown_describes_the_trace_it_was_run_on(exp, tmp_path):
    hand_made(exp).assign(requests=4).to_csv(tmp_path / "cluster_replicas.csv", index=False)
    trace = tmp_path / "azure.csv"
    # Four requests 20 s apart (3 gaps over 60 s: 0.05 req/s; three in the first minute); the
    # fifth row lies past the run's 4 requests (from the CSV) and must not count.
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:00:00.0,100,10\n2023-11-16 18:00:20.0,200,20\n"
                     "2023-11-16 18:00:40.0,300,30\n2023-11-16 18:01:00.0,400,40\n"
                     "2023-11-16 18:01:01.0,9000,900\n")
    assert exp.main(["--tables-only", "--out", str(tmp_path), "--trace", str(trace)]) == 0
    text = (tmp_path / "cluster_replicas.md").read_text()
    assert ("At 1x these 4 requests span 1.0 minutes at 0.05 req/s on average (busiest minute "
            "0.05 req/s), prompts 250 and outputs 25 tokens on average") in text


def test_plot_lines_carry_the_csv(exp, tmp_path):
    table = hand_made(exp)
    fig = exp.plot(table, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    count, fewer = fig.axes
    lines = {line.get_label(): line for line in count.get_lines()}
    for policy in exp.POLICIES:
        for router in exp.ROUTERS:
            rows = table[(table.policy == policy) & (table.router == router)]
            line = lines[f"{policy} / {router}"]
            # Drawn beside its tick, never as far as the next speed-up.
            assert list(line.get_xdata().round()) == [1, 3]
            assert list(line.get_ydata()) == pytest.approx(list(rows.replicas), nan_ok=True)
    # The reference: the fewest replicas at 1x (2) scaled with the rate.
    assert list(lines["1x count x speed-up"].get_ydata()) == [2, 6]
    one_fewer = {line.get_label(): line for line in fewer.get_lines()}
    assert list(one_fewer["vllm-v1 / power-of-d"].get_ydata()) == pytest.approx([0.51, 0.51])


@pytest.mark.parametrize("frame, message", [
    (None, "not found"),
    (pd.DataFrame({"speedup": [1], "policy": ["vllm-v1"]}), "lacks the column(s) router"),
])
def test_a_missing_or_incomplete_csv_is_one_line_and_status_2(exp, tmp_path, capsys, frame,
                                                              message):
    if frame is not None:
        frame.to_csv(tmp_path / "cluster_replicas.csv", index=False)
    assert exp.main(["--tables-only", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("doc", ["docs/clusters.md", "experiments/README.md"])
def test_the_docs_table_is_the_committed_run(doc):
    """The replica table quoted in the docs is the one the committed run wrote."""
    results = (ROOT / "experiments" / "results" / "cluster_replicas.md").read_text()
    counts = results.split("SLO attainment at that count")[0]
    text = (ROOT / doc).read_text()
    quoted = [line for line in text.splitlines() if line.startswith("| ") and "x | " in line
              and line.split(" | ")[0][2:].rstrip("x").isdigit()]
    assert len(quoted) == 4
    for line in quoted:
        assert line in counts, f"{doc} is stale against cluster_replicas.md: {line}"
