"""servesim report and run --plot: valid PNG files, and a Markdown report that references them."""

from __future__ import annotations

import re

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
    assert "fluid" in capsys.readouterr().err     # says why the fluid bound is missing


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
