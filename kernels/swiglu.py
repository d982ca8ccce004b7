"""SwiGLU activation silu(gate) * up, forward and backward, reading the fused gate_up projection directly.

vc2/model.py computes gate and up with one matmul, so `gate_up` (..., 2I) holds gate in its first I
columns and up in the last I. The PyTorch path (`swiglu_ref`) is silu then multiply: it writes silu(gate)
to memory and reads it back, and its backward writes d(gate) and d(up) separately before the chunk's
backward copies them into one (..., 2I) gradient. Here the forward reads gate_up once and writes the
(..., I) product; the backward reads gate_up and dy once and writes the (..., 2I) gradient in place.
(The activation is recomputed in backward from gate_up, which autograd keeps anyway for the matmul.)

Numerics: fp32 inside, one rounding at the store; the bf16 reference rounds silu(gate) before the
multiply, so the two differ by about one bf16 ulp.
"""
import torch
import triton
import triton.language as tl

from .common import launch, register, warps

BLOCK = 1024  # columns per program; rows x ceil(I / BLOCK) programs


def swiglu_ref(gate_up):
    """The PyTorch reference: exactly what vc2.model.MLP applies between its two matmuls."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


@triton.jit
def _swiglu_fwd(GU, Y, stride_gu, stride_y, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    g = tl.load(GU + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu + I + cols, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DY, GU, DGU, stride_dy, stride_gu, stride_dgu, I, BLOCK: tl.constexpr):
    # y = g s(g) u:  dg = dy u s (1 + g (1 - s)),  du = dy g s
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GU + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu + I + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    dg = dy * u * s * (1.0 + g * (1.0 - s))
    du = dy * g * s
    tl.store(DGU + row * stride_dgu + cols, dg.to(DGU.dtype.element_ty), mask=mask)
    tl.store(DGU + row * stride_dgu + I + cols, du.to(DGU.dtype.element_ty), mask=mask)


def _rows(t):
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


@register("swiglu")
def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    assert gate_up.shape[-1] % 2 == 0, f"gate_up has an odd last dimension {gate_up.shape[-1]}"
    gu = _rows(gate_up)  # (N, 2I)
    I = gu.shape[1] // 2
    y = torch.empty(gu.shape[0], I, dtype=gate_up.dtype, device=gate_up.device)
    launch(_swiglu_fwd, (gu.shape[0], triton.cdiv(I, BLOCK)), gu, y, gu.stride(0), y.stride(0), I,
           BLOCK=BLOCK, num_warps=warps(BLOCK))
    return y.view(*gate_up.shape[:-1], I)


@register("swiglu_backward")
def _swiglu_backward(dy: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    gu, dy2 = _rows(gate_up), _rows(dy)
    I = gu.shape[1] // 2
    dgu = torch.empty(gu.shape, dtype=gate_up.dtype, device=gate_up.device)
    launch(_swiglu_bwd, (gu.shape[0], triton.cdiv(I, BLOCK)), dy2, gu, dgu, dy2.stride(0), gu.stride(0),
           dgu.stride(0), I, BLOCK=BLOCK, num_warps=warps(BLOCK))
    return dgu.view(gate_up.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dy):
    (gate_up,) = ctx.saved_tensors
    return _swiglu_backward(dy, gate_up)


_swiglu.register_autograd(_backward, setup_context=_setup)


def swiglu(gate_up):
    """silu(gate) * up for gate_up (..., 2I) = [gate | up]: the Triton kernel."""
    return _swiglu(gate_up)
