"""Fused RMSNorm, forward and backward, in the Hugging Face order: normalise in fp32, cast, then scale.

The PyTorch path (vc2/model.py RMSNorm, `rms_norm_ref` here) is 3-5 kernels in bf16: upcast, mean of
squares, rsqrt-multiply, downcast, weight multiply, each reading and writing the whole (N, D)
activation. Here one program per row reads x once and writes y once, keeping 1/rms per row (4 bytes) for
the backward, which is again one pass over the rows with the weight gradient summed per program.

Numerics: the same math as the reference, fp32 inside; the bf16 output rounds at the same two points
(after the normalisation, after the scale) so results match to about one bf16 ulp.
"""
import torch
import triton
import triton.language as tl

from .common import block, launch, register, warps


def rms_norm_ref(x, weight, eps: float):
    """The PyTorch reference: exactly vc2.model.RMSNorm.forward (tests/test_kernels.py checks they agree)."""
    if x.dtype == weight.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)
    return weight * torch.nn.functional.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, D, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    n = (x * rstd).to(X.dtype.element_ty)  # HF: back to the input dtype *before* the weight
    w = tl.load(W + cols, mask=mask, other=0.0)
    y = n.to(tl.float32) * w.to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, n_rows, D, rows_per_program,
                  BLOCK_D: tl.constexpr):
    # y = w * n, n = x * rstd:  dn = dy * w;  dx = rstd * (dn - n * mean(dn * n));  dw = sum_rows(dy * n)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = pid.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program):
        row = start + i
        m = mask & (row < n_rows)  # the last program's rows may run past the end: they load zeros
        x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row, mask=row < n_rows, other=0.0)
        n = x * rstd
        dn = dy * w
        dx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / D))
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=m)
        dw += dy * n.to(X.dtype.element_ty).to(tl.float32)  # the weight multiplied the *cast* n
    tl.store(DW_PART + pid * D + cols, dw, mask=mask)


@register("rms_norm")
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    x2 = x.reshape(-1, D)  # (N, D)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    BLOCK_D = block(D)
    launch(_rms_norm_fwd, (x2.shape[0],), x2, weight, y, rstd, x2.stride(0), y.stride(0), D, eps,
           BLOCK_D=BLOCK_D, num_warps=warps(BLOCK_D))
    return y.view(x.shape), rstd


@register("rms_norm_backward")
def _rms_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    x2, dy2 = x.reshape(-1, D).contiguous(), dy.reshape(-1, D).contiguous()
    n_rows = x2.shape[0]
    # A few hundred programs, each looping over its rows, so the (programs, D) fp32 partial weight
    # gradients stay small; one program per row would need an (N, D) buffer.
    programs = max(1, min(n_rows, 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
                          if x.is_cuda else 4))
    rows_per_program = triton.cdiv(n_rows, programs)
    dx = torch.empty_like(x2)
    dw_part = torch.empty(programs, D, dtype=torch.float32, device=x.device)
    BLOCK_D = block(D)
    launch(_rms_norm_bwd, (programs,), dy2, x2, weight, rstd, dx, dw_part, dy2.stride(0), x2.stride(0),
           dx.stride(0), n_rows, D, rows_per_program, BLOCK_D=BLOCK_D, num_warps=warps(BLOCK_D))
    return dx.view(x.shape), dw_part.sum(0).to(weight.dtype)


def _setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _rms_norm_backward(dy, x, weight, rstd)
    return dx, dw, None


_rms_norm.register_autograd(_backward, setup_context=_setup)


def rms_norm(x, weight, eps: float):
    """RMSNorm of x (..., D) with weight (D,): the Triton kernel; same result as `rms_norm_ref`."""
    return _rms_norm(x, weight, eps)[0]
