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


# --- what reaches the GPU kernels (intercepted on CPU: the kernels themselves are CUDA-only) ---------

def _fake_kernel(calls, form):
    """A stand-in for flash_attn_varlen_func / torch varlen_attn with the real signature `form`: it records
    the dtypes and flags it was given and computes per-document causal attention in fp32 (differentiably),
    returning q's dtype as the real kernels do."""
    def compute(q, k, v, cu, max_q, causal):
        assert isinstance(max_q, int) and max_q == int((cu[1:] - cu[:-1]).max()), max_q
        assert cu.dtype == torch.int32 and causal is True
        out = []
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
            qd, kd, vd = (t[s:e].float().transpose(0, 1) for t in (q, k, v))
            out.append(torch.nn.functional.scaled_dot_product_attention(
                qd, kd, vd, is_causal=True, enable_gqa=qd.shape[0] != kd.shape[0]).transpose(0, 1))
        return torch.cat(out).to(q.dtype)

    if form == "flash_attn":
        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                   softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                   alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
            calls.append((q.dtype, k.dtype, v.dtype))
            return compute(q, k, v, cu_seqlens_q, max_seqlen_q, causal)
        return flash_attn_varlen_func
    if form == "varlen_2.13":  # torch 2.13: causal is window_size=(-1, 0); GQA needs enable_gqa=True
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
            calls.append((query.dtype, key.dtype, value.dtype))
            assert enable_gqa == (query.shape[1] != key.shape[1])
            return compute(query, key, value, cu_seq_q, max_q, window_size == (-1, 0) and isinstance(window_size, tuple))
        return varlen_attn
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append((query.dtype, key.dtype, value.dtype))  # the older form: is_causal, no GQA flag
        return compute(query, key, value, cu_seq_q, max_q, is_causal)
    return varlen_attn


@pytest.mark.parametrize("form", ["flash_attn", "varlen_2.13", "varlen_old"])
@pytest.mark.parametrize("how", ["autocast", "bf16_weights"])
def test_flash_kernels_get_one_half_dtype(monkeypatch, form, how):
    """Under bf16 autocast RoPE gives fp32 q/k while v is bf16: the flash kernels must still get one half
    dtype. Runs the model forward and backward with the kernel intercepted; the result must equal the
    per-document SDPA path under the same precision."""
    import vc2.model as M
    calls = []
    fake = _fake_kernel(calls, form)
    monkeypatch.setattr(M, "flash_attn_varlen_func" if form == "flash_attn" else "varlen_attn", fake)
    backend = "flash_attn" if form == "flash_attn" else "torch_varlen"
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    if how == "bf16_weights":
        model = model.to(torch.bfloat16)
    docs, ids, cu = _packed_batch([5, 17, 1, 9], 512)
    labels = torch.randint(0, 512, ids.shape, generator=torch.Generator().manual_seed(5))

    def loss_and_grads(backend):
        model.set_attention_backend(backend)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
            loss = model(ids, position_ids=packed_position_ids(cu), cu_seqlens=cu, max_seqlen=17, labels=labels)
        loss.backward()
        return loss.detach().float(), model.layers[0].attn.qkv.weight.grad.float().clone()

    ref_loss, ref_grad = loss_and_grads("sdpa_loop")
    loss, grad = loss_and_grads(backend)
    assert len(calls) == PRESETS["debug"].num_hidden_layers
    assert set(calls) == {(torch.bfloat16,) * 3}, calls  # one half dtype for q, k and v, in every layer
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)  # bf16: a few ulps of op-order difference
    torch.testing.assert_close(grad, ref_grad, rtol=5e-2, atol=5e-2 * ref_grad.abs().max().item())


def test_fp32_never_reaches_flash_kernels(monkeypatch):
    import vc2.model as M
    from vc2.model import packed_backend
    monkeypatch.setattr(M, "flash_attn_varlen_func", _fake_kernel([], "flash_attn"))
    monkeypatch.setattr(M, "varlen_attn", _fake_kernel([], "varlen_2.13"))
    # "auto" on CUDA: flash-attn first, then torch varlen, only in half precision; fp32 takes SDPA
    assert packed_backend("auto", True, torch.bfloat16) == "flash_attn"
    assert packed_backend("auto", True, None) == "sdpa_loop"
    assert packed_backend("auto", False, torch.bfloat16) == "sdpa_loop"
    monkeypatch.setattr(M, "flash_attn_varlen_func", None)
    assert packed_backend("auto", True, torch.float16) == "torch_varlen"
    monkeypatch.setattr(M, "varlen_attn", None)
    assert packed_backend("auto", True, torch.bfloat16) == "sdpa_loop"
    # forcing a flash kernel on fp32 inputs without autocast is refused, not passed on to crash in the kernel
    q = torch.randn(1, 6, 4, 8)
    with pytest.raises(ValueError, match="needs fp16/bf16"):
        attention(q, q[:, :, :2], q[:, :, :2], torch.tensor([0, 6], dtype=torch.int32), 6, backend="torch_varlen")


def test_varlen_signature_forms_are_detected():
    from vc2.model import varlen_causal_kwargs
    new, old = _fake_kernel([], "varlen_2.13"), _fake_kernel([], "varlen_old")
    assert varlen_causal_kwargs(new) == ({"window_size": (-1, 0)}, True)
    assert varlen_causal_kwargs(old) == ({"is_causal": True}, False)
    with pytest.raises(RuntimeError, match="no causal argument"):
        varlen_causal_kwargs(lambda q, k, v, cu_q, cu_k, max_q, max_k: None)
    if vc2.model.varlen_attn is not None:  # the installed torch's own op (2.13 in CI) is one of the two forms
        kw, _ = varlen_causal_kwargs(vc2.model.varlen_attn)
        assert kw in ({"window_size": (-1, 0)}, {"is_causal": True})


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
