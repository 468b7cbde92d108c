"""simulator/io.py: output files are written whole, with normal permissions (the umask's, not
mkstemp's owner-only 0600), and a failed write leaves the previous file as it was."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from simulator.config import RunConfig
from simulator.errors import ConfigError
from simulator.io import atomic_write, output_folder, write_json, write_text
from simulator.runner import simulate, write_outputs
from traces import fetch as F


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_run_outputs_get_the_umask_permissions(tmp_path, umask_022):
    result = simulate(RunConfig(num_requests=5, seed=1).validate())
    for fmt in ("csv", "parquet"):
        written = write_outputs(result, tmp_path / fmt, requests_format=fmt)
        assert {p.name for p in written} == {"summary.json", f"requests.{fmt}", "timeline.csv",
                                             "config.json", "manifest.json"}
        assert {p.name: mode(p) for p in written} == {p.name: 0o644 for p in written}
        assert sorted(os.listdir(tmp_path / fmt)) == sorted(p.name for p in written)


def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.json") == 0o600


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"run": 1})

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"run": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == '{\n  "run": 1\n}\n'
    assert os.listdir(tmp_path) == ["summary.json"]


def test_write_text_replaces_and_output_folder_refuses_a_file(tmp_path):
    write_text(tmp_path / "r.md", "one\n")
    write_text(tmp_path / "r.md", "two\n")
    assert (tmp_path / "r.md").read_text() == "two\n"
    assert output_folder(tmp_path / "new" / "deep").is_dir()
    with pytest.raises(ConfigError, match="out: cannot create output folder"):
        output_folder(tmp_path / "r.md" / "sub")


def test_a_fetched_trace_gets_the_umask_permissions(tmp_path, monkeypatch, umask_022):
    body = b"timestamp,x\n" * 10
    source = tmp_path / "src.csv"
    source.write_bytes(body)
    ds = F.Dataset("tiny", source.as_uri(), hashlib.sha256(body).hexdigest(), "CC0", "cite",
                   "test")
    monkeypatch.setitem(F.DATASETS, "tiny", ds)
    got = F.fetch("tiny", dest=tmp_path / "cache", url=source.as_uri())
    assert got.path.read_bytes() == body
    assert mode(got.path) == 0o644
    assert os.listdir(tmp_path / "cache") == [ds.filename]
