"""servesim report and run --plot: valid PNG files, and a Markdown report that references them."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from PIL import Image

from simulator.cli import main
from simulator.report.build import stable_rates

SPEC = """\
name: report-test
base: {num_requests: 200, prompt_len: "64:256", output_len: "32:128", kv_capacity: 6000}
axes:
  policy: [vllm, sarathi]
  rate: [3, 12, 40]
  seed: [0, 1]
save: {requests: true, timeline: true}
"""


def check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert w >= 600 and h >= 300            # readable size
        # Not a blank canvas: a drawn figure has many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20


def referenced_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC)
    assert main(["sweep", str(spec), "--out", str(tmp / "res"), "-j", "1", "-q"]) == 0
    return tmp / "res"


def test_sweep_report_writes_pngs_and_markdown(sweep_dir, capsys):
    assert main(["report", str(sweep_dir), "--at-rate", "11"]) == 0
    md_path = sweep_dir / "report.md"
    md = md_path.read_text()
    images = referenced_images(md)
    names = {p.split("/")[-1] for p in images}
    assert {"latency_vs_rate.png", "throughput_vs_rate.png", "latency_cdf_rate_12.png",
            "timeline_vllm_12.png", "timeline_sarathi_12.png"} <= names
    for rel in images:
        check_png(md_path.parent / rel)
    # Every figure written is referenced, and the tables show every policy and rate.
    assert {p.name for p in (sweep_dir / "figures").glob("*.png")} == names
    assert "| rate | vllm | sarathi |" in md
    for rate in ("| 3 |", "| 12 |", "| 40 |"):
        assert rate in md
    # Every point carries the fluid model's throughput bound (scheduler/fluid.py), the
    # throughput figure draws it, and no note says it is missing.
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert table["fluid.throughput_bound"].notna().all()
    assert "fluid" not in capsys.readouterr().err


@pytest.mark.parametrize("x", ["policy", "error", "nowhere"])
def test_report_x_must_be_a_numeric_column(sweep_dir, capsys, x):
    assert main(["report", str(sweep_dir), "--x", x]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"--x {x!r}" in err


def test_report_x_without_values_is_one_line(sweep_dir, tmp_path, capsys):
    import shutil
    res = tmp_path / "res"
    shutil.copytree(sweep_dir, res)
    t = pd.read_parquet(res / "results.parquet")
    t["unmeasured"] = float("nan")
    t.to_parquet(res / "results.parquet")
    assert main(["report", str(res), "--x", "unmeasured"]) == 2
    assert "--x 'unmeasured': no successful point has a value" in capsys.readouterr().err


def test_report_to_another_folder(sweep_dir, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(sweep_dir), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for rel in referenced_images(md):
        check_png(out / rel)


def test_stable_rates_reads_the_grid(sweep_dir):
    import pandas as pd
    from simulator.report.build import aggregate
    t = pd.read_parquet(sweep_dir / "results.parquet")
    t["series"] = t["policy"]
    agg = aggregate(t, "rate", ["latency_first_half_ms", "latency_second_half_ms"])
    rates = stable_rates(agg, "rate")
    # This replica serves about 16 req/s: 3 req/s is well below, 40 far above.
    assert rates == {"vllm": "12 (unstable from 40)", "sarathi": "12 (unstable from 40)"}


def test_run_plot_and_run_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "-n", "200", "--rate", "8", "--out", str(out), "--plot", "-q"]) == 0
    for name in ("timeline.png", "latency_cdf.png"):
        check_png(out / "figures" / name)
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert referenced_images(md) == ["figures/timeline.png", "figures/latency_cdf.png"]
    assert "| completed | 200 |" in md


def test_bad_report_input(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a sweep results folder" in capsys.readouterr().err
    assert main(["run", "-n", "5", "--plot", "--no-timeline"]) == 2
    assert "--plot draws the timeline" in capsys.readouterr().err


@pytest.mark.parametrize("files, words", [
    ({"summary.json": '{"completed": 3,'}, "summary.json: not valid JSON"),       # cut short
    ({"summary.json": "[1, 2]"}, "summary.json: expected a JSON object"),
    ({"summary.json": "{}", "requests.csv": "a,b\n1,2\n1,2,3,4\n"}, "requests.csv: cannot read"),
    ({"summary.json": "{}", "requests.csv": "a,b\n1,2\n"}, "requests.csv: no column"),
    ({"results.parquet": "not parquet"}, "results.parquet: cannot read"),
])
def test_damaged_report_input_is_one_line(tmp_path, capsys, files, words):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err


def test_fluid_bound_is_drawn_when_the_results_carry_it(sweep_dir, tmp_path):
    import shutil

    import pandas as pd

    from simulator.report.build import sweep_report
    res = tmp_path / "res"
    shutil.copytree(sweep_dir, res)
    t = pd.read_parquet(res / "results.parquet")
    # As a sweep records it from the fluid model: Thr* at the offered rate and the
    # largest stable scaling of that rate (here: 20 req/s is the limit).
    t["fluid.throughput_bound"] = t["rate"] * 80.0
    t["fluid.max_rate_scale"] = 20.0 / t["rate"]
    t.to_parquet(res / "results.parquet")
    report = sweep_report(res)
    assert not any("fluid" in n for n in report.notes)
    check_png(res / "figures" / "throughput_vs_rate.png")


def test_throughput_figure_draws_the_bound_capped_at_the_stable_limit():
    import pandas as pd

    from simulator.report import figures
    from simulator.report.figures import col
    from simulator.sweep.fluid_bound import bounded_throughput
    assert bounded_throughput(800.0, 2.0) == 800.0           # inside the stable region
    assert bounded_throughput(800.0, 0.5) == 400.0           # past it: capped
    assert bounded_throughput(800.0, None) == 800.0          # no limit
    rows = []
    for rate in (10.0, 20.0, 40.0):
        row = {"series": "p", "rate": rate}
        for m, v in (("request_throughput", rate), ("output_throughput", 50 * rate),
                     ("fluid_bound", bounded_throughput(50 * rate, 20 / rate))):
            row.update({col(m, "mean"): v, col(m, "min"): v, col(m, "max"): v,
                        col(m, "count"): 1})
        rows.append(row)
    fig = figures.throughput_vs_rate(pd.DataFrame(rows), "rate", "rate (req/s)", "fluid_bound")
    right = fig.axes[1]
    bound = next(line for line in right.get_lines() if line.get_label() == "fluid bound")
    assert list(bound.get_ydata()) == [500.0, 1000.0, 1000.0]
    assert right.get_ylabel() == "output throughput (tokens/s)"


def test_sweep_points_carry_the_fluid_bound():
    from simulator.config import build_config
    from simulator.sweep.worker import PointTask, run_point
    cfg = build_config({}, dict(types=["p512d20:12"], kv_capacity=137000, num_requests=50,
                                timeline=False))
    out = run_point(PointTask(0, "k", cfg.to_dict()))
    assert out.status == "ok"
    # Thr* = sum_j lambda_j o_j output tokens per second.
    assert out.summary["fluid"]["throughput_bound"] == pytest.approx(12 * 20)


def test_a_session_sweeps_rate_axis_is_labelled_in_sessions(tmp_path, monkeypatch):
    """With sessions the swept rate starts sessions (each brings session_turns requests)."""
    import simulator.report.figures as figures
    spec = tmp_path / "spec.yaml"
    spec.write_text('name: sessions\nbase: {num_requests: 40, session_turns: 2, think_time: 0.5, '
                    'prompt_len: "32:64", output_len: "8:16"}\naxes:\n  rate: [1, 2]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "res"), "-j", "1", "-q"]) == 0
    labels = []
    original = figures.latency_vs_rate
    monkeypatch.setattr(figures, "latency_vs_rate",
                        lambda agg, x, label: labels.append(label) or original(agg, x, label))
    assert main(["report", str(tmp_path / "res")]) == 0
    assert labels == ["session start rate (sessions/s)"]
    table = pd.read_parquet(tmp_path / "res" / "results.parquet")
    assert (table["offered_rate"] == 2 * table["workload.session_rate"]).all()
