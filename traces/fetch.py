"""Known public traces: where to download them, their checksum, licence and citation
(``servesim trace fetch NAME``).

A download goes to a temporary file beside its destination, is checked against the published
SHA-256 (and the announced length), and only then renamed into place: an interrupted or altered
download never leaves a file that looks complete. An existing file with the right checksum is
not downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from traces.errors import WorkloadError
from traces.loaders.table import sha256_of

SPLITWISE = ("Pratyush Patel, Esha Choukse, Chaojie Zhang, Aashaka Shah, Inigo Goiri, Saeed "
             "Maleki, Ricardo Bianchini. Splitwise: Efficient Generative LLM Inference Using "
             "Phase Splitting. ISCA 2024.")
DYNAMOLLM = ("Jovan Stojkovic, Chaojie Zhang, Inigo Goiri, Josep Torrellas, Esha Choukse. "
             "DynamoLLM: Designing LLM Inference Clusters for Performance and Energy "
             "Efficiency. arXiv:2408.00741, 2024.")
MOONCAKE = ("Ruoyu Qin, Zheming Li, Weiran He, Mingxing Zhang, Yongwei Wu, Weimin Zheng, "
            "Xinran Xu. Mooncake: A KVCache-centric Architecture for LLM Serving. FAST 2025.")
BURSTGPT = ("Yuxin Wang, Yuhan Chen, Zeyu Li, Xueze Kang, Zhenheng Tang, Xin He, Rui Guo, Xin "
            "Wang, Qiang Wang, Amelie Chi Zhou, Xiaowen Chu. BurstGPT: A Real-world Workload "
            "Dataset to Optimize LLM Serving Systems. arXiv:2401.17644, 2024.")
AZURE_2023 = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/"
AZURE_2024 = "https://azurepublicdatasettraces.blob.core.windows.net/azurellminfererencetrace/"
BURSTGPT_DATA = "https://media.githubusercontent.com/media/HPMLL/BurstGPT/main/data/"


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    sha256: str | None        # None: no published checksum (the download's is printed)
    licence: str
    citation: str
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# Checksums: the Azure 2023 and Mooncake files as published (identical to ../shared/traces);
# BurstGPT's from the Git LFS pointers in HPMLL/BurstGPT (an LFS object id is its SHA-256).
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("azure-conv-2023", AZURE_2023 + "AzureLLMInferenceTrace_conv.csv",
            "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
            "CC-BY-4.0", SPLITWISE,
            "Azure LLM inference, conversation service, 1 hour of 2023-11-16 (19,366 requests)"),
    Dataset("azure-code-2023", AZURE_2023 + "AzureLLMInferenceTrace_code.csv",
            "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
            "CC-BY-4.0", SPLITWISE,
            "Azure LLM inference, code completion, 1 hour of 2023-11-16 (8,819 requests)"),
    Dataset("mooncake-conversation",
            "https://raw.githubusercontent.com/kvcache-ai/Mooncake/main/FAST25-release/traces/"
            "conversation_trace.jsonl",
            "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
            "Apache-2.0", MOONCAKE,
            "Kimi conversation service, 1 hour, with prefix-block hashes (12,031 requests)"),
    Dataset("burstgpt-1", BURSTGPT_DATA + "BurstGPT_1.csv",
            "4bb3783693d0a435686fbfc885615d2349bd067239079fa4b749f2e679e12122",
            "CC-BY-4.0", BURSTGPT,
            "BurstGPT, first 2 months, with failed requests (1.43 M requests, 52 MB)"),
    Dataset("burstgpt-without-fails-2", BURSTGPT_DATA + "BurstGPT_without_fails_2.csv",
            "56193aa9b2bb26128ded43d2d29a960df6bf5af062bcfc9b005f3fcaa4e6e501",
            "CC-BY-4.0", BURSTGPT,
            "BurstGPT, second 2 months, failures removed (3.78 M requests, 142 MB)"),
    Dataset("azure-conv-2024", AZURE_2024 + "AzureLLMInferenceTrace_conv_1week.csv", None,
            "CC-BY-4.0", DYNAMOLLM,
            "Azure LLM inference, conversation service, one week of May 2024"),
    Dataset("azure-code-2024", AZURE_2024 + "AzureLLMInferenceTrace_code_1week.csv", None,
            "CC-BY-4.0", DYNAMOLLM,
            "Azure LLM inference, code completion, one week of May 2024"),
)}


@dataclass(frozen=True)
class Fetched:
    dataset: Dataset
    path: Path
    sha256: str
    verified: bool            # matched a published checksum
    downloaded: bool          # False: the file was already there, intact


def default_cache() -> Path:
    """``$SERVESIM_CACHE/traces``, else ``$XDG_CACHE_HOME/servesim/traces``, else
    ``~/.cache/servesim/traces``."""
    if os.environ.get("SERVESIM_CACHE"):
        return Path(os.environ["SERVESIM_CACHE"]) / "traces"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "servesim" / "traces"


def dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise WorkloadError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def fetch(name: str, dest: str | Path | None = None, url: str | None = None,
          force: bool = False, timeout_s: float = 60.0) -> Fetched:
    """Download dataset ``name`` into ``dest`` (default: the cache folder) and verify it.

    ``url`` replaces the registry's (a mirror, or a local copy as ``file://``); the checksum
    is still the published one.
    """
    ds = dataset(name)
    folder = Path(dest) if dest is not None else default_cache()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkloadError(f"fetch {name}: cannot create folder {folder}: {e.strerror}")
    target = folder / ds.filename
    if target.is_file() and not force:
        digest = sha256_of(target)
        if ds.sha256 is None or digest == ds.sha256:
            return Fetched(ds, target, digest, ds.sha256 is not None, downloaded=False)
    source = url or ds.url
    digest = _download(name, source, target, ds.sha256, timeout_s)
    return Fetched(ds, target, digest, ds.sha256 is not None, downloaded=True)


def _download(name: str, url: str, target: Path, expected: str | None, timeout_s: float) -> str:
    # Opened by name (not mkstemp), so the file gets the umask's permissions, not 0600.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        h = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "xb") as out, \
                    urllib.request.urlopen(url, timeout=timeout_s) as response:
                announced = response.headers.get("Content-Length")
                for block in iter(lambda: response.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
                    size += len(block)
        except urllib.error.HTTPError as e:
            raise WorkloadError(f"fetch {name}: {url}: HTTP {e.code} {e.reason}")
        except urllib.error.URLError as e:
            raise WorkloadError(f"fetch {name}: cannot download {url}: {e.reason}")
        except (http.client.HTTPException, OSError, ValueError) as e:
            raise WorkloadError(f"fetch {name}: download of {url} failed: "
                                f"{type(e).__name__}: {e}")
        if announced is not None and announced.isdigit() and int(announced) != size:
            raise WorkloadError(f"fetch {name}: {url} announced {announced} bytes but sent "
                                f"{size}; the download was discarded")
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            raise WorkloadError(f"fetch {name}: {url} has SHA-256 {digest}, expected {expected}; "
                                f"the download was discarded (the upstream file may have "
                                f"changed)")
        os.replace(tmp, target)
        return digest
    finally:
        if tmp.exists():
            tmp.unlink()
