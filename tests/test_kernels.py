"""Triton kernels (kernels/) against their PyTorch references: values, gradients, registration, the model.

    python -m pytest tests/test_kernels.py

On CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by conftest.py before vc2 is
imported), 250-4,500x slower than PyTorch, so shapes are small: a few dozen programs per launch. On a GPU
the same tests run compiled on CUDA tensors, plus an Inductor compile test.

The interpreter's fp32 -> bf16 cast truncates (the GPU's rounds to nearest even), so on CPU every bf16
store can be one ulp off where a GPU would not be; the bf16 tolerances below allow for that.

Tolerances: fp32 kernels compute the same math as the reference in another order, so they agree to
float32 rounding (rtol 1e-5). bf16 kernels keep fp32 inside and round once, where the reference rounds
after each op; both are compared with the fp32 reference run on the same bf16-valued inputs, the error
measured as max |got - want| / max |want| and allowed 2^-6 = 1.6e-2 (two bf16 ulps of the largest
value), and the kernel must be at least roughly as close as the PyTorch bf16 path is (within 1.5x + 1 ulp).
"""
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vc2.config import PRESETS
from vc2.kernels import dispatch as kernels
from vc2.model import RMSNorm, Transformer, apply_rope, chunked_cross_entropy, packed_position_ids, rope_cos_sin

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16_TOL = 2 ** -6


@pytest.fixture(autouse=True)
def kernels_on():
    """Force the kernels on (CPU tensors need mode 'on'), and restore the mode afterwards."""
    before = kernels.get_mode()
    kernels.set_mode("on")
    yield
    kernels.set_mode(before)


@pytest.fixture
def kernel_calls(monkeypatch):
    """{kernel name: calls so far}: wraps the four kernels where vc2/model.py reaches them."""
    calls = {}

    def counted(name, fn):
        def wrapper(*args, **kw):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kw)
        return wrapper
    for name in ("rms_norm", "apply_rope", "swiglu", "linear_cross_entropy"):
        monkeypatch.setattr(kernels, name, counted(name, getattr(kernels, name)))
    return calls


def rel_err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1e-30)).item()


def check(got, want_fp32, ref_lowp=None, dtype=torch.float32, what=""):
    """fp32: assert_close at float32 rounding. bf16: relative max error under BF16_TOL, and not much worse
    than the PyTorch bf16 reference `ref_lowp` (when given)."""
    if dtype == torch.float32:
        torch.testing.assert_close(got, want_fp32, rtol=1e-5, atol=1e-5 * want_fp32.abs().max().item(), msg=what)
        return
    err = rel_err(got.float(), want_fp32)
    assert err < BF16_TOL, f"{what}: relative error {err:.2e} >= {BF16_TOL:.2e}"
    if ref_lowp is not None:
        ref_err = rel_err(ref_lowp.float(), want_fp32)
        assert err <= 1.5 * ref_err + 2 ** -8, f"{what}: kernel {err:.2e} vs PyTorch bf16 {ref_err:.2e}"


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


def grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


# --- the references are the model's own code ---------------------------------------------------------

def test_references_are_the_model_code():
    """The references the kernels are tested against are what vc2/model.py runs with kernels off."""
    kernels.set_mode("off")
    for dtype in (torch.float32, torch.bfloat16):
        x, w = rand(3, 5, 64, dtype=dtype), rand(64, dtype=dtype, seed=1)
        norm = RMSNorm(64, 1e-6).to(DEVICE, dtype)
        norm.weight.data.copy_(w)
        assert torch.equal(norm(x), kernels.rms_norm_ref(x, w, 1e-6))
        cos, sin = rope_cos_sin(torch.arange(5, device=DEVICE).expand(3, 5), 16, 1e4, dtype)
        qk = rand(3, 5, 4, 16, dtype=dtype, seed=2)
        assert torch.equal(apply_rope(qk, cos, sin), kernels.apply_rope_ref(qk, cos, sin))
    model = Transformer(PRESETS["debug"]).init_weights(seed=0).to(DEVICE)
    gu = rand(2, 7, 256, seed=3)
    assert torch.equal(model.layers[0].mlp.down(kernels.swiglu_ref(gu)), model.layers[0].mlp.down(
        torch.nn.functional.silu(gu[..., :128]) * gu[..., 128:]))
    h, lab = rand(2, 9, 64, seed=4), torch.randint(0, 512, (2, 9), device=DEVICE)
    lab[0, :4] = -100
    torch.testing.assert_close(chunked_cross_entropy(h, model.lm_head.weight, lab, 5),
                               kernels.linear_cross_entropy_ref(h, model.lm_head.weight, lab), rtol=1e-6, atol=1e-5)


# --- each kernel against its reference ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 200), (1, 1, 96), (4, 64)])  # D not a power of two; one row
def test_rms_norm(dtype, shape):
    D = shape[-1]
    x = rand(*shape, dtype=dtype).requires_grad_()
    w = (1 + rand(D, seed=1, scale=0.3)).to(dtype).requires_grad_()
    dy = rand(*shape, dtype=dtype, seed=2)
    y = kernels.rms_norm(x, w, 1e-6)
    dx, dw = grads(y, (x, w), dy)
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    y32 = kernels.rms_norm_ref(x32, w32, 1e-6)
    dx32, dw32 = grads(y32, (x32, w32), dy.float())
    y_lo = kernels.rms_norm_ref(x, w, 1e-6)
    dx_lo, dw_lo = grads(y_lo, (x, w), dy)
    assert y.dtype == y_lo.dtype and y.shape == x.shape
    check(y, y32, y_lo, dtype, "y")
    check(dx, dx32, dx_lo, dtype, "dx")
    check(dw, dw32, dw_lo, dtype, "dw")


def test_rms_norm_mixed_dtypes_follow_the_reference():
    """bf16 activations with an fp32 weight (autocast) give fp32 out, as weight * n.to(bf16) does."""
    x, w = rand(6, 48, dtype=torch.bfloat16), 1 + rand(48, seed=1, scale=0.3)
    y, ref = kernels.rms_norm(x, w, 1e-5), kernels.rms_norm_ref(x, w, 1e-5)
    assert y.dtype == ref.dtype == torch.float32
    # Both round the normalised x to bf16 before the fp32 scale, so they differ by at most one bf16 ulp
    # of it (2^-7 relative): where rsqrt rounding moves a value across a rounding boundary, and under the
    # interpreter, whose fp32 -> bf16 cast truncates where the GPU's rounds to nearest.
    assert ((y - ref).abs() <= 2 ** -7 * ref.abs() * 1.01).all()
    n = y / w  # the HF order: the fp32 weight scaled a bf16 value, so y / w is one (to fp32 rounding)
    torch.testing.assert_close(n, n.bfloat16().float(), rtol=2e-7, atol=0)
    if not kernels.INTERPRET:
        assert (y == ref).float().mean() > 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,K,hd", [(2, 5, 4, 2, 16), (1, 1, 3, 1, 24)])  # hd/2 = 12: not a power of two
def test_rope_on_the_strided_qk_view(dtype, B, T, H, K, hd):
    """As the model calls it: q and k side by side, a strided view into the fused qkv output."""
    qkv = rand(B, T, (H + 2 * K) * hd, dtype=dtype).requires_grad_()
    qk = qkv[..., :(H + K) * hd].view(B, T, H + K, hd)
    assert not qk.is_contiguous() or B * T == 1
    pos = torch.arange(100, 100 + T, device=DEVICE).expand(B, T)
    cos, sin = rope_cos_sin(pos, hd, 1e4, dtype)
    dy = rand(B, T, H + K, hd, dtype=dtype, seed=5)
    y = kernels.apply_rope(qk, cos, sin)
    (dqkv,) = grads(y, qkv, dy)
    qkv32 = qkv.detach().float().requires_grad_()
    cos32, sin32 = rope_cos_sin(pos, hd, 1e4, torch.float32)
    y32 = kernels.apply_rope_ref(qkv32[..., :(H + K) * hd].view(B, T, H + K, hd), cos32, sin32)
    (dqkv32,) = grads(y32, qkv32, dy.float())
    y_lo = kernels.apply_rope_ref(qk, cos, sin)
    (dqkv_lo,) = grads(y_lo, qkv, dy)
    assert y.dtype == dtype and dqkv.dtype == dtype
    assert dqkv[..., (H + K) * hd:].abs().max() == 0  # v gets no gradient from RoPE
    check(y, y32, y_lo, dtype, "y")
    check(dqkv, dqkv32, dqkv_lo, dtype, "dqkv")


def test_rope_mixed_dtypes_and_broadcast_tables():
    """bf16 q/k with fp32 tables give fp32 (as x * cos promotes); cos/sin of batch 1 broadcast over B."""
    x = rand(3, 4, 2, 8, dtype=torch.bfloat16)
    cos, sin = rope_cos_sin(torch.arange(4, device=DEVICE)[None], 8, 1e4, torch.float32)  # (1, T, 1, hd)
    y, ref = kernels.apply_rope(x, cos, sin), kernels.apply_rope_ref(x, cos, sin)
    assert y.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 200), (1, 2 * 1100)])  # I = 100; I = 1100 > one 1024 block; one row
def test_swiglu(dtype, shape):
    gu = rand(*shape, dtype=dtype, scale=2.0).requires_grad_()
    dy = rand(*shape[:-1], shape[-1] // 2, dtype=dtype, seed=1)
    y = kernels.swiglu(gu)
    (dgu,) = grads(y, gu, dy)
    gu32 = gu.detach().float().requires_grad_()
    y32 = kernels.swiglu_ref(gu32)
    (dgu32,) = grads(y32, gu32, dy.float())
    y_lo = kernels.swiglu_ref(gu)
    (dgu_lo,) = grads(y_lo, gu, dy)
    assert y.dtype == dgu.dtype == dtype
    check(y, y32, y_lo, dtype, "y")
    check(dgu, dgu32, dgu_lo, dtype, "dgate_up")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V,block_v,chunk", [(1000, 128, 7), (512, 512, 4096), (300, 64, 1)])
def test_linear_cross_entropy(dtype, V, block_v, chunk):
    """Vocabulary not a multiple of the block, ragged chunks, one-row chunks, ignored positions."""
    h = rand(2, 11, 48, dtype=dtype).requires_grad_()
    w = rand(V, 48, dtype=dtype, seed=1, scale=0.3).requires_grad_()
    labels = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    labels[0, :4] = -100
    labels[1, -1] = -100
    loss = kernels.linear_cross_entropy(h, w, labels, chunk=chunk, block_v=block_v)
    dh, dw = grads(loss * 0.37, (h, w), None)  # a non-unit upstream gradient (the trainer's 1/n scaling)
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    loss32 = kernels.linear_cross_entropy_ref(h32, w32, labels)
    dh32, dw32 = grads(loss32 * 0.37, (h32, w32), None)
    loss_lo = kernels.linear_cross_entropy_ref(h, w, labels)
    dh_lo, dw_lo = grads(loss_lo * 0.37, (h, w), None)
    assert loss.dtype == torch.float32 and dh.dtype == dw.dtype == dtype
    assert (dh[0, :4] == 0).all() and (dh[1, -1] == 0).all()  # ignored positions get no gradient
    check(loss, loss32, loss_lo, dtype, "loss")
    check(dh, dh32, dh_lo, dtype, "dh")
    check(dw, dw32, dw_lo, dtype, "dw")
    with torch.no_grad():  # the loss-only path (no gradient pass, no gradient buffers)
        torch.testing.assert_close(kernels.linear_cross_entropy(h, w, labels, chunk=chunk, block_v=block_v), loss)


def test_linear_cross_entropy_ignore_index_inside_the_kernel():
    """The op itself skips ignore_index rows (the wrapper also drops them before the matmul)."""
    from vc2.kernels.cross_entropy import _lce
    h, w = rand(6, 16), rand(200, 16, seed=1, scale=0.3)
    y = torch.tensor([3, -100, 7, 199, -100, 0], device=DEVICE)
    loss, dh, dw = _lce(h, w, y, 4, -100, True, 64)
    keep = y != -100
    ref = torch.nn.functional.cross_entropy(h[keep] @ w.T, y[keep], reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert (dh[~keep] == 0).all() and dh[keep].abs().min() > 0
    # no supervised row at all: zero loss, zero gradients (a packed row of prompts only)
    h2 = rand(1, 3, 16).requires_grad_()
    loss0 = kernels.linear_cross_entropy(h2, w, torch.full((1, 3), -100, device=DEVICE))
    loss0.backward()
    assert loss0.item() == 0 and (h2.grad == 0).all()


def test_linear_cross_entropy_under_autocast():
    """fp32 master weights under bf16 autocast: the matmuls run in bf16, as F.linear's would."""
    h = rand(2, 6, 32).requires_grad_()
    w = rand(300, 32, seed=1, scale=0.3).requires_grad_()
    labels = torch.randint(0, 300, (2, 6), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = kernels.linear_cross_entropy(h, w, labels, chunk=5, block_v=128)
        ref = kernels.linear_cross_entropy_ref(h, w, labels)
    dh, dw = grads(loss, (h, w), None)
    rh, rw = grads(ref, (h, w), None)
    assert dw.dtype == torch.float32  # flows back through the autocast cast to the fp32 master weight
    assert rel_err(loss, ref) < 1e-4  # both see the same bf16 logits; fp32 softmax either side
    check(dh, rh, dtype=torch.bfloat16, what="dh")
    check(dw, rw, dtype=torch.bfloat16, what="dw")


# --- registration: torch.library checks, torch.compile ---------------------------------------------

def test_ops_pass_opcheck():
    """Schema, fake (shape) implementation and autograd registration of every op (torch.library.opcheck)."""
    from vc2.kernels.cross_entropy import _lce
    from vc2.kernels.rms_norm import _rms_norm
    from vc2.kernels.rope import _rope_op
    from vc2.kernels.swiglu import _swiglu
    x = rand(3, 32).requires_grad_()
    w = (1 + rand(32, seed=1, scale=0.1)).requires_grad_()
    torch.library.opcheck(_rms_norm, (x, w, 1e-6))
    qk = rand(1, 3, 2, 8).requires_grad_()
    cos, sin = rope_cos_sin(torch.arange(3, device=DEVICE)[None], 8, 1e4, torch.float32)
    torch.library.opcheck(_rope_op, (qk, cos, sin))
    torch.library.opcheck(_swiglu, (rand(3, 16).requires_grad_(),))
    h, W = rand(4, 8).requires_grad_(), rand(40, 8, seed=1).requires_grad_()
    y = torch.tensor([1, 5, -100, 39], device=DEVICE)
    torch.library.opcheck(_lce, (h, W, y, 3, -100, True, 16),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def _block_like(x, w, qk, cos, sin, gu):
    """What a compiled decoder block calls: norm, RoPE, SwiGLU."""
    return kernels.rms_norm(x, w, 1e-6).sum() + kernels.apply_rope(qk, cos, sin).sum() + kernels.swiglu(gu).sum()


def _block_inputs():
    x, w = rand(4, 32).requires_grad_(), (1 + rand(32, seed=1, scale=0.1)).requires_grad_()
    qk = rand(1, 4, 3, 8, seed=2).requires_grad_()
    cos, sin = rope_cos_sin(torch.arange(4, device=DEVICE)[None], 8, 1e4, torch.float32)
    gu = rand(4, 64, seed=3).requires_grad_()
    return x, w, qk, cos, sin, gu


def test_torch_compile_traces_through_the_kernels():
    """fullgraph=True: no graph break at the ops, and forward + backward equal eager. On CPU this uses the
    aot_eager backend: dynamo and AOTAutograd trace the ops through their fake implementations and
    autograd formulas; Inductor inlining of the Triton kernels is GPU-only (the next test)."""
    inputs = _block_inputs()
    eager = _block_like(*inputs)
    eager_grads = torch.autograd.grad(eager, [inputs[i] for i in (0, 1, 2, 5)])
    torch._dynamo.reset()
    compiled = torch.compile(_block_like, fullgraph=True, backend="aot_eager")(*inputs)
    comp_grads = torch.autograd.grad(compiled, [inputs[i] for i in (0, 1, 2, 5)])
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(comp_grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inductor compiles Triton kernels for CUDA only")
def test_inductor_compiles_the_kernels_on_cuda():
    from vc2.kernels.cross_entropy import _lce
    inputs = _block_inputs()
    eager = _block_like(*inputs)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(_block_like, fullgraph=True)(*inputs), eager)
    h, W = rand(64, 32, dtype=torch.bfloat16), rand(1000, 32, dtype=torch.bfloat16, seed=1)
    y = torch.randint(0, 1000, (64,), device=DEVICE)
    f = torch.compile(lambda h, W, y: _lce(h, W, y, 16, -100, False, 256)[0], fullgraph=True)
    torch.testing.assert_close(f(h, W, y), _lce(h, W, y, 16, -100, False, 256)[0])


# --- the switch ---------------------------------------------------------------------------------------

def test_dispatch_modes(monkeypatch):
    cpu32, cpu64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    kernels.set_mode("off")
    assert not kernels.use(cpu32)
    kernels.set_mode("auto")
    assert not kernels.use(cpu32)  # auto: CUDA tensors only
    kernels.set_mode("on")
    monkeypatch.setattr(kernels, "INTERPRET", True)  # as on the CPU test machine
    assert kernels.use(cpu32) and not kernels.use(cpu64)  # fp64 always takes the PyTorch path
    with pytest.raises(ValueError, match="kernel mode 'fast'"):
        kernels.set_mode("fast")
    monkeypatch.setattr(kernels, "INTERPRET", False)  # a CPU machine without the interpreter
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernels.use(cpu32)


def test_transformers_probe_for_the_pypi_kernels_package_is_not_fooled(monkeypatch):
    """The repository root is on sys.path in a checkout: its kernels/ directory must not pass for Hugging
    Face's `kernels` package (transformers' is_kernels_available), nor shadow it when it is installed."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    assert Path(kernels.__file__).resolve().parent == ROOT / "kernels"  # vc2.kernels is that directory
    assert not (ROOT / "kernels" / "__init__.py").exists()  # so a top-level `import kernels` is a namespace...
    spec = importlib.util.find_spec("kernels")
    try:
        hf_kernels = importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        hf_kernels = None
    if hf_kernels is None:
        assert spec.origin is None and set(spec.submodule_search_locations) == {str(ROOT / "kernels")}
    else:  # ...which loses to the real package wherever that is on sys.path
        assert Path(spec.origin).parent != ROOT / "kernels"
    from transformers.utils import import_utils
    import_utils.is_kernels_available.cache_clear()
    available = import_utils.is_kernels_available()
    if hf_kernels is None:
        assert available is False
    assert not any(m.startswith("kernels.") for m in sys.modules)  # the probe imported none of our modules


# --- the model, kernels on vs off ---------------------------------------------------------------------

def _model_run(model, ids, pos, cu, labels):
    logits = model(ids, position_ids=pos, cu_seqlens=cu)
    loss = model(ids, position_ids=pos, cu_seqlens=cu, labels=labels, loss_chunk=13)
    loss.backward()
    g = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return logits.detach(), loss.detach(), g


def _debug_model(dtype):
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    with torch.no_grad():  # non-trivial norms and biases, so their gradients are tested too
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.1)
    return model.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_with_kernels_equals_model_without(dtype, kernel_calls):
    """Debug config, one packed row of three documents: logits, summed loss and every parameter's gradient.
    fp32: kernels on == off to float32 rounding. bf16: both are compared with the fp32 model; the kernel
    model's error must stay small and within 3x the PyTorch bf16 model's (measured here: 0.4-2.7x; the
    interpreter's truncating bf16 stores account for the upper end)."""
    cu = torch.tensor([0, 9, 23, 30], dtype=torch.int32, device=DEVICE)
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    labels = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    labels[0, :5] = labels[0, 9:14] = -100
    pos = packed_position_ids(cu)
    model = _debug_model(dtype)
    kernels.set_mode("off")
    ref = _model_run(model, ids, pos, cu, labels)
    ref32 = ref if dtype == torch.float32 else _model_run(_debug_model(torch.float32), ids, pos, cu, labels)
    assert not kernel_calls
    kernels.set_mode("on")
    got = _model_run(model, ids, pos, cu, labels)
    L = PRESETS["debug"].num_hidden_layers
    assert kernel_calls == {"rms_norm": 2 * (2 * L + 1), "apply_rope": 2 * L, "swiglu": 2 * L, "linear_cross_entropy": 1}
    if dtype == torch.float32:
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=2e-5, msg="logits")
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5, msg="loss")
        for n in ref[2]:
            torch.testing.assert_close(got[2][n], ref[2][n], rtol=1e-4, atol=1e-4 * ref[2][n].abs().max().item(), msg=n)
        return
    assert rel_err(got[0], ref32[0]) < BF16_TOL, "logits"
    assert rel_err(got[1], ref32[1]) < 1e-4, "loss"  # a sum of fp32 per-token losses
    for n in ref[2]:  # an ulp per op compounds through two layers and the backward
        err, torch_err = rel_err(got[2][n], ref32[2][n]), rel_err(ref[2][n], ref32[2][n])
        assert err < 4e-2 and err < 3 * torch_err + 2 ** -8, f"{n}: kernels {err:.2e}, PyTorch bf16 {torch_err:.2e}"


# --- the trainer's flag -------------------------------------------------------------------------------

def test_trainer_flag_runs_the_kernels_and_matches(tmp_path, tokenizer_dir, capsys, kernel_calls):
    """`run_train.py --kernels` trains with the Triton path (here: interpreted), to the same losses as
    --no-kernels (fp32, 2 steps of a debug model)."""
    import json

    import vc2
    from test_train import conversation
    from vc2.train import main as train_main
    vc2.save_model(Transformer(PRESETS["debug"]).init_weights(seed=0), tmp_path / "model", tokenizer_dir=tokenizer_dir)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(6)))
    losses = {}
    for flag in ("--no-kernels", "--kernels"):
        out = tmp_path / flag.strip("-")
        train_main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.jsonl"), "--out", str(out),
                    "--preset", "cpu-demo", "--lr", "3e-3", "--max-length", "256", "--max-steps", "2", "--global-batch", "1",
                    "--no-export", "--device", DEVICE, "--data-cache", str(tmp_path / "cache"), flag])
        losses[flag] = [json.loads(l)["loss"] for l in (out / "log.jsonl").read_text().splitlines()]
        assert ("kernels: Triton" if flag == "--kernels" else "kernels: PyTorch") in capsys.readouterr().out
    assert set(kernel_calls) == {"rms_norm", "apply_rope", "swiglu", "linear_cross_entropy"}
    assert len(losses["--kernels"]) == 2
    torch.testing.assert_close(losses["--kernels"], losses["--no-kernels"], rtol=1e-5, atol=1e-6)


def test_decode_with_kernels_matches_without(kernel_calls):
    """The decode hot path (KV cache, one token per step, left-padded ragged batch): same greedy tokens,
    and the same next-token logits of the prompt to float32 rounding."""
    from vc2.engine import Engine
    model = Transformer(PRESETS["debug"]).init_weights(seed=5).to(DEVICE).eval()
    prompts = [[5, 9, 200, 31, 7], [44, 2 + 100]]

    def greedy():  # no prompt lookup: one forward per new token, so every decode step is counted below
        return [r.out for r in Engine(model, slots=2, lookup_tokens=0).generate(prompts, 6)]
    kernels.set_mode("off")
    ref = greedy()
    with torch.no_grad():
        ref_logits = model(torch.tensor([prompts[0]], device=DEVICE))
    assert not kernel_calls
    kernels.set_mode("on")
    got = greedy()
    with torch.no_grad():
        got_logits = model(torch.tensor([prompts[0]], device=DEVICE))
    torch.testing.assert_close(got_logits, ref_logits, rtol=1e-5, atol=2e-5)
    assert got == ref
    assert kernel_calls["apply_rope"] > 6 * PRESETS["debug"].num_hidden_layers  # every decode step used them


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what the benchmark does without CUDA")
def test_bench_kernels_says_no_cuda_and_exits_cleanly(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_kernels
    assert bench_kernels.run() == {"skipped": "no CUDA"}
    bench_kernels.main([])
    assert "no CUDA" in capsys.readouterr().out
