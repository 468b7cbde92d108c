"""``trace fetch`` against a local HTTP server on 127.0.0.1 and file:// URLs (never the
internet): verified downloads, cache hits, and downloads that must leave nothing behind."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading

import pytest

from simulator.cli import main
from tests.conftest import require_shared
from traces import WorkloadError
from traces import fetch as F


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):       # keep test output quiet
        pass

    def do_GET(self):
        if self.path.startswith("/short/"):
            # Announce more bytes than are sent: a connection cut mid-download.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def small_dataset(monkeypatch):
    body = b"timestamp,x\n" * 100
    ds = F.Dataset("tiny", "https://example.invalid/data/tiny.csv",
                   hashlib.sha256(body).hexdigest(), "CC0", "A. Author. Tiny. 2025.", "test")
    monkeypatch.setitem(F.DATASETS, "tiny", ds)
    return ds, body


def test_download_verifies_and_then_hits_the_cache(server, small_dataset, tmp_path):
    root, base = server
    ds, body = small_dataset
    (root / "tiny.csv").write_bytes(body)
    dest = tmp_path / "cache"
    got = F.fetch("tiny", dest, url=f"{base}/tiny.csv")
    assert got.path == dest / "tiny.csv" and got.path.read_bytes() == body
    assert got.verified and got.downloaded and got.sha256 == ds.sha256
    (root / "tiny.csv").unlink()           # a second fetch must not need the server
    again = F.fetch("tiny", dest, url=f"{base}/tiny.csv")
    assert again.path == got.path and not again.downloaded and again.verified


def test_checksum_mismatch_keeps_nothing(server, small_dataset, tmp_path):
    root, base = server
    ds, body = small_dataset
    (root / "tiny.csv").write_bytes(body + b"changed\n")
    dest = tmp_path / "cache"
    with pytest.raises(WorkloadError, match=rf"fetch tiny: {base}/tiny.csv has SHA-256 [0-9a-f]{{64}}, "
                                            rf"expected {ds.sha256}; the download was discarded"):
        F.fetch("tiny", dest, url=f"{base}/tiny.csv")
    assert list(dest.iterdir()) == []


def test_a_cut_connection_or_missing_file_keeps_nothing(server, small_dataset, tmp_path):
    root, base = server
    dest = tmp_path / "cache"
    with pytest.raises(WorkloadError, match="fetch tiny: download of .*/short/tiny.csv failed"
                                            "|announced 1000 bytes but sent 10"):
        F.fetch("tiny", dest, url=f"{base}/short/tiny.csv")
    with pytest.raises(WorkloadError, match=r"fetch tiny: .*/missing.csv: HTTP 404"):
        F.fetch("tiny", dest, url=f"{base}/missing.csv")
    assert list(dest.iterdir()) == []


def test_file_url_and_corrupt_cached_copy_is_replaced(small_dataset, tmp_path):
    ds, body = small_dataset
    src = tmp_path / "mirror" / "tiny.csv"
    src.parent.mkdir()
    src.write_bytes(body)
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "tiny.csv").write_bytes(b"half a fil")         # an earlier, damaged copy
    got = F.fetch("tiny", dest, url=src.as_uri())
    assert got.downloaded and got.path.read_bytes() == body


def test_unknown_dataset_and_default_cache(monkeypatch, tmp_path):
    with pytest.raises(WorkloadError, match="unknown dataset 'azure'; known: azure-conv-2023, "):
        F.fetch("azure", tmp_path)
    monkeypatch.setenv("SERVESIM_CACHE", str(tmp_path / "c"))
    assert F.default_cache() == tmp_path / "c" / "traces"
    monkeypatch.delenv("SERVESIM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert F.default_cache() == tmp_path / "x" / "servesim" / "traces"


def test_registry_has_the_required_traces_with_checksums():
    for name in ("azure-conv-2023", "azure-code-2023", "mooncake-conversation"):
        ds = F.DATASETS[name]
        assert ds.url.startswith("https://") and len(ds.sha256) == 64
        assert ds.licence and ds.citation


@pytest.mark.shared
def test_cli_fetch_of_azure_conv_verifies_the_published_checksum(server, tmp_path, capsys):
    root, base = server
    shutil.copy(require_shared("traces", "AzureLLMInferenceTrace_conv.csv"), root)
    dest = tmp_path / "cache"
    assert main(["trace", "fetch", "azure-conv-2023", "--dest", str(dest), "--url",
                 f"{base}/AzureLLMInferenceTrace_conv.csv"]) == 0
    out = capsys.readouterr()
    assert out.out == f"{dest / 'AzureLLMInferenceTrace_conv.csv'}\n"
    assert "downloaded; SHA-256 2f1e5b66" in out.err and "(verified)" in out.err
    assert "licence: CC-BY-4.0" in out.err and "Splitwise" in out.err
    # The fetched file replays like the reference copy.
    assert main(["trace", "stats", str(dest / "AzureLLMInferenceTrace_conv.csv"), "--json"]) == 0
    assert '"requests": 19366' in capsys.readouterr().out


def test_cli_fetch_errors_exit_2(small_dataset, tmp_path, capsys):
    assert main(["trace", "fetch", "nope", "--dest", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("servesim: error: unknown dataset 'nope'")
    assert main(["trace", "fetch"]) == 0
    assert "mooncake-conversation" in capsys.readouterr().out
