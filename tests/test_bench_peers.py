"""experiments/bench_peers.py: servesim's part runs on a tiny workload with no peers installed
(each reported missing, servesim's row still printed and written), a peer that fails is named
in the table, and every tool is given the very requests servesim serves."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

from conftest import ROOT, load_experiment, require_shared
from experiments.peers.workloads import requests_of, servesim_flags, workload_fields, write_inputs


def run_bench(tmp_path, capsys, *args):
    bench = load_experiment("bench_peers")
    out = tmp_path / "peers.md"
    assert bench.main(["--only", "W1", "--num-requests", "40", "--reps", "1", "--no-warmup",
                       "--out", str(out), *args]) == 0
    return bench, capsys.readouterr().out, out.read_text()


def cpu_cells(text: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith("| W1 |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_no_peers_reports_each_missing_and_prints_servesim_row(tmp_path, capsys):
    empty = tmp_path / "peers"
    empty.mkdir()
    bench, printed, written = run_bench(tmp_path, capsys, "--peers-dir", str(empty))
    for tool in bench.TOOLS[1:]:
        assert re.search(rf"^peer {tool.name} missing \(no {empty / tool.folder}/", printed, re.M)
    name, requests, servesim = cpu_cells(written)
    assert (name, requests) == ("W1", "40")
    assert float(servesim) > 0                            # a measured CPU time, not a dash
    assert "| workload | requests | servesim CPU s |" in written
    assert written in printed                             # the printed table is the file's


def fake_vllm_simulation(tmp_path, script: str):
    """A vllm_simulation folder whose "python" is ``script`` (a shell script)."""
    peer = tmp_path / "peers" / "vllm_simulation"
    (peer / ".venv" / "bin").mkdir(parents=True)
    (peer / "simulation").mkdir()
    (peer / "simulation" / "vllm_simulator.py").write_text("")
    fake = peer / ".venv" / "bin" / "python"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    return tmp_path / "peers"


def test_failing_peer_is_named_and_servesim_still_measured(tmp_path, capsys):
    peers = fake_vllm_simulation(tmp_path, "echo 'their simulator broke' >&2\nexit 3\n")
    _, printed, written = run_bench(tmp_path, capsys, "--peers-dir", str(peers),
                                    "--tool", "vllm_simulation")
    _, _, servesim, vllm_simulation = cpu_cells(written)
    assert float(servesim) > 0 and vllm_simulation == "failed"
    assert "vllm_simulation on W1: exit 3: their simulator broke" in written


def test_peer_past_the_timeout_is_stopped_and_named(tmp_path, capsys):
    peers = fake_vllm_simulation(tmp_path, "exec sleep 120\n")
    _, _, written = run_bench(tmp_path, capsys, "--peers-dir", str(peers),
                              "--tool", "vllm_simulation", "--timeout", "20")
    assert cpu_cells(written)[3] == "failed"
    assert "vllm_simulation on W1: stopped after the --timeout of 20 s" in written


def servesim_requests(fields: dict, folder) -> list[tuple[float, int, int]]:
    subprocess.run([sys.executable, "-m", "simulator", "run", *servesim_flags(fields), "-o",
                    str(folder)], cwd=ROOT, check=True, capture_output=True)
    with open(folder / "requests.csv", newline="") as f:
        return [(float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"]))
                for r in csv.DictReader(f)]


def test_peers_get_the_requests_servesim_serves(tmp_path):
    fields = workload_fields("W1", num_requests=30)
    requests = requests_of(fields)
    assert requests == servesim_requests(fields, tmp_path / "run")
    paths = write_inputs(requests, tmp_path / "inputs")
    with open(paths["vidur"], newline="") as f:
        rows = [(float(r["arrived_at"]), int(r["num_prefill_tokens"]),
                 int(r["num_decode_tokens"])) for r in csv.DictReader(f)]
    assert rows == requests                               # floats written exactly (repr)


def test_azure_workload_is_the_truncated_trace(tmp_path):
    trace = require_shared("traces", "AzureLLMInferenceTrace_conv.csv")
    fields = workload_fields("W3", num_requests=200, azure_trace=trace)
    requests = requests_of(fields)
    assert len(requests) == 200 and max(p + o for _, p, o in requests) <= 4096
    assert requests == servesim_requests(fields, tmp_path / "run")
