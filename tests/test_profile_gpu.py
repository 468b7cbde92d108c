"""experiments/profile_gpu.py on the CPU with a tiny Llama-shaped model."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import pandas as pd
import pytest

from tests.conftest import ON_CI, ROOT, require_vllm

try:
    import torch
except ImportError:   # torch comes with the vllm extra, which CI installs
    if ON_CI:
        raise
    pytest.skip("torch not installed (pip install -e '.[vllm]')", allow_module_level=True)

sys.path.insert(0, str(ROOT / "experiments"))
import profile_gpu as pg  # noqa: E402

from simulator.cost.profile import ProfileCost  # noqa: E402
from simulator.hardware import gpu_spec  # noqa: E402


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = pg.main(["--tiny", "--device", "cpu", "--out", str(out), "--max-tokens", "64",
                        "--max-batch", "4", "--warmup", "0", "--repeats", "2"])
    assert code == 0
    return out, stdout.getvalue()


def test_writes_a_profile_the_profile_cost_model_loads(tiny_profile):
    out, stdout = tiny_profile
    mlp = pd.read_csv(out / "mlp.csv")
    assert list(mlp["num_tokens"]) == pg.token_grid(64)
    cost = ProfileCost(out / "mlp.csv", pg.TINY, gpu_spec("a100-80gb"))
    assert cost.dense_time(64) > 0 and cost.iteration_time(pg.Composition(
        prefill=((16, 0),), decode_kv=(8, 8)).shape()) > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device_type"] == "cpu" and meta["versions"]["torch"] == torch.__version__
    assert meta["model"]["name"] == "tiny-llama"
    its = pd.read_csv(out / "iterations.csv")
    assert len(its) == len(pg.compositions(64, 4)) and (its["median_s"] > 0).all()
    assert "d0 = " in stdout and "us per KV token" in stdout


def test_linear_fit_recovers_d0_d1_from_measurements():
    comps = pg.compositions(256, 16)
    rows = [{"composition": json.dumps({"prefill": c.prefill, "decode_kv": c.decode_kv}),
             "median_s": 0.02 + 3e-6 * c.shape().kv_tokens} for c in comps]
    fit = pg.fit_paper_linear(rows)
    assert fit["d0_s"] == pytest.approx(0.02, rel=1e-9)
    assert fit["d1_s_per_kv_token"] == pytest.approx(3e-6, rel=1e-9)
    assert fit["batches"] == len(comps)


def test_attention_matches_the_textbook_formula():
    """Chunked prefill over cached context, and batched decodes, against softmax(QK^T/sqrt d)V."""
    m = pg.TINY
    layers = pg.LlamaLayers(m, torch.device("cpu"), torch.float64, layers=1)
    comp = pg.Composition(prefill=((5, 3),), decode_kv=(4, 4, 6))
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
    layers = pg.LlamaLayers(pg.TINY, torch.device("cpu"), torch.float64, layers=1)
    x = torch.randn(3, pg.TINY.num_heads, pg.TINY.head_dim, dtype=torch.float64)
    y = layers.rope(x, torch.tensor([0, 5, 100]))
    assert torch.allclose(y[0], x[0])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_vllm_engine_is_refused_without_a_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        pg.main(["--tiny", "--engine", "vllm", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--engine vllm needs an NVIDIA GPU" in capsys.readouterr().err


def test_vllm_engine_timing_arithmetic_with_a_stand_in_llm(monkeypatch):
    """The --engine vllm path with vllm.LLM replaced by a stand-in on a fake clock: a prefill is
    one generate() with max_tokens=1; a decode step is (T(K+1) - T(1)) / K."""
    vllm = require_vllm()
    clock = [0.0]

    class StandInLLM:
        def __init__(self, **kwargs):
            assert kwargs["load_format"] == "dummy" and kwargs["skip_tokenizer_init"]

        def generate(self, batch, params, use_tqdm=False):
            n = len(batch)
            ctx = len(batch[0]["prompt_token_ids"])
            clock[0] += 0.01 + 1e-6 * n * ctx                         # the prefill step
            clock[0] += (params.max_tokens - 1) * (0.002 + 1e-7 * n * ctx)   # decode steps

    monkeypatch.setattr(vllm, "LLM", StandInLLM)
    monkeypatch.setattr(pg.time, "perf_counter", lambda: clock[0])
    rows = pg.profile_iterations_vllm(pg.TINY, 64, 4, repeats=1, dtype_name="float16")
    prefill = [r for r in rows if r["prefill_requests"]]
    decode = [r for r in rows if r["decode_requests"]]
    assert prefill and decode and len(prefill) + len(decode) == len(rows)
    for r in prefill:
        assert r["median_s"] == pytest.approx(0.01 + 1e-6 * r["prefill_tokens"])
    for r in decode:
        n = r["decode_requests"]
        ctx = r["decode_kv_tokens"] // n - pg.DECODE_STEPS // 2
        assert r["median_s"] == pytest.approx(0.002 + 1e-7 * n * ctx)
