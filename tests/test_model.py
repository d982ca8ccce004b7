"""Model numerics: parity with `transformers`, packed rows, attention backends, a golden-logits file.

    python -m pytest tests/test_model.py
"""
from pathlib import Path

import pytest
import torch

import vc2
from vc2.config import PRESETS
from vc2.model import Transformer, attention, packed_position_ids
from conftest import make_hf_model

GOLDEN = Path(__file__).parent / "assets" / "golden_debug_logits.pt"


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("n_kv_head", [4, 2, 1])  # GQA ratios 1, 2, 4
def test_logits_match_transformers_fp32(tmp_path, model_type, tied, n_kv_head):
    hf, path = make_hf_model(tmp_path, model_type, tied=tied, n_head=4, n_kv_head=n_kv_head)
    ours = vc2.load_model(path, dtype=torch.float32)
    ids = torch.randint(0, 320, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    # fp32: both sides run the same math in a different op order; |logits| ~ 1, so 1e-5 is float32 rounding.
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_logits_match_transformers_bf16(tmp_path, model_type):
    hf, path = make_hf_model(tmp_path, model_type, tied=False, n_head=4, n_kv_head=2)
    hf = hf.to(torch.bfloat16)
    ours = vc2.load_model(path, dtype=torch.bfloat16)
    ids = torch.randint(0, 320, (2, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = hf(ids).logits.float(), ours(ids).float()
    # bf16 has 8 mantissa bits: kernels may accumulate in different orders, so allow a few bf16 ulps.
    torch.testing.assert_close(got, ref, atol=3e-2, rtol=2e-2)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95


def test_explicit_position_ids_match_transformers(tmp_path):
    hf, path = make_hf_model(tmp_path, "qwen2")
    ours = vc2.load_model(path, dtype=torch.float32)
    ids = torch.randint(0, 320, (2, 12))
    pos = torch.arange(100, 112).expand(2, 12)  # a continuation at position 100
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, position_ids=pos), hf(ids, position_ids=pos).logits, atol=2e-5, rtol=1e-5)


def test_rope_tables_stay_fp32_after_cast():
    """model.to(bf16) must not degrade RoPE at long positions (there is no buffer to cast)."""
    from vc2.model import rope_cos_sin
    pos = torch.tensor([[4000]])
    cos, _ = rope_cos_sin(pos, 64, 1e6, torch.float64)
    cos_bf16, _ = rope_cos_sin(pos, 64, 1e6, torch.bfloat16)
    # error of the bf16 *output* rounding only (~4e-3), not of bf16 phases (which would be O(1))
    assert (cos_bf16.double() - cos).abs().max() < 8e-3
    model = Transformer(PRESETS["debug"]).to(torch.bfloat16)
    assert not list(model.buffers()), "a buffer here could be silently cast by .to(dtype)"


def _packed_batch(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return docs, torch.cat(docs).unsqueeze(0), cu


@pytest.mark.parametrize("backend", ["sdpa_loop", "sdpa_mask"])
def test_packed_equals_separate_documents(backend):
    model = Transformer(PRESETS["debug"]).init_weights(seed=0).double()
    model.set_attention_backend(backend)
    docs, ids, cu = _packed_batch([5, 17, 1, 9], 512)
    with torch.no_grad():
        packed = model(ids, position_ids=packed_position_ids(cu), cu_seqlens=cu)[0]
        separate = torch.cat([model(d.unsqueeze(0))[0] for d in docs])
    torch.testing.assert_close(packed, separate, atol=1e-10, rtol=1e-10)  # float64: exact up to op order
    # and packing without cu_seqlens (plain causal over the row) really is different: the test can fail
    with torch.no_grad():
        leaky = model(ids, position_ids=packed_position_ids(cu))[0]
    assert (leaky - separate).abs().max() > 1e-3


def test_attention_backends_agree():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 40, 8, 16, generator=g)
    k, v = torch.randn(1, 40, 2, 16, generator=g), torch.randn(1, 40, 2, 16, generator=g)
    cu = torch.tensor([0, 7, 30, 40], dtype=torch.int32)
    ref = attention(q, k, v, cu, backend="sdpa_loop")
    torch.testing.assert_close(attention(q, k, v, cu, backend="sdpa_mask"), ref, atol=1e-6, rtol=1e-5)
    if torch.cuda.is_available():  # flash-attn / torch varlen exist only on CUDA machines
        qc, kc, vc, cc = (t.cuda().bfloat16() if t.is_floating_point() else t.cuda() for t in (q, k, v, cu))
        for backend in ["flash_attn", "torch_varlen"]:
            if backend == "flash_attn" and vc2.model.flash_attn_varlen_func is None:
                continue
            if backend == "torch_varlen" and vc2.model.varlen_attn is None:
                continue
            torch.testing.assert_close(attention(qc, kc, vc, cc, backend=backend).float().cpu(), ref, atol=2e-2, rtol=2e-2)


def test_packed_malformed_cu_seqlens_is_caught():
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    ids = torch.randint(0, 512, (1, 10))
    with pytest.raises(AssertionError, match="cu_seqlens ends at 9"):
        model(ids, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))


def golden_inputs():
    model = Transformer(PRESETS["debug"]).init_weights(seed=1234)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(99))
    return model, ids


def test_golden_logits():
    """Catches refactors that change numerics. Regenerate deliberately with:
    python -c "import sys; sys.path.insert(0, 'tests'); import test_model; test_model.write_golden()"
    """
    model, ids = golden_inputs()
    with torch.no_grad():
        got = model(ids)
    want = torch.load(GOLDEN)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def write_golden():
    model, ids = golden_inputs()
    with torch.no_grad():
        torch.save(model(ids), GOLDEN)
