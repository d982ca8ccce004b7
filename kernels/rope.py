"""Rotary position embedding (rotate-half / NeoX pairs (i, i + hd/2)), forward and backward, one launch.

vc2/model.py rotates q and k together: its qkv projection is one matmul, and `qk` (B, T, H + K, hd) is a
strided view of it. The PyTorch path (`apply_rope_ref`) is chunk, negate, cat and two multiply-adds,
with a full-size temporary for the rotated half and, for a strided input, a copy first. Here one program
per token reads that token's H + K heads straight from the strided view, and its cos/sin row once for
all heads, and writes the rotated heads: one read and one write of q and k. The backward is the same
rotation by the opposite angle (the transpose of a rotation), so it is the same kernel with a flag.

Numerics: fp32 inside, one rounding at the store. In bf16 the reference rounds after each multiply and
the add, so the two differ by about one bf16 ulp; in fp32 they agree to rounding.
"""
import torch
import triton
import triton.language as tl

from .common import block, launch, register, warps


def apply_rope_ref(x, cos, sin):
    """The PyTorch reference: exactly vc2.model.apply_rope. x (B, T, n, hd); cos/sin (B, T, 1, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@triton.jit
def _rope(X, COS, SIN, Y, T, n_heads, half, sx_b, sx_t, sx_h, sc_b, sc_t, ss_b, ss_t, sy_b, sy_t, sy_h,
          BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b, t = pid // T, pid % T
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < n_heads) & (d < half)
    dmask = d < half
    c_row, s_row = COS + b * sc_b + t * sc_t, SIN + b * ss_b + t * ss_t
    c1 = tl.load(c_row + d, mask=dmask, other=0.0).to(tl.float32)  # (1, half): shared by all heads
    c2 = tl.load(c_row + half + d, mask=dmask, other=0.0).to(tl.float32)
    s1 = tl.load(s_row + d, mask=dmask, other=0.0).to(tl.float32)
    s2 = tl.load(s_row + half + d, mask=dmask, other=0.0).to(tl.float32)
    x_row = X + b * sx_b + t * sx_t + h * sx_h
    x1 = tl.load(x_row + d, mask=mask, other=0.0).to(tl.float32)  # (heads, half)
    x2 = tl.load(x_row + half + d, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # dx1 = dy1 c1 + dy2 s2,  dx2 = dy2 c2 - dy1 s1
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:  # y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    y_row = Y + b * sy_b + t * sy_t + h * sy_h
    tl.store(y_row + d, y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(y_row + half + d, y2.to(Y.dtype.element_ty), mask=mask)


def _rotate(x, cos, sin, out_dtype, backward: bool):
    B, T, n, hd = x.shape
    assert hd % 2 == 0, f"head_dim {hd} must be even for rotate-half RoPE"
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.expand(B, T, 1, hd), sin.expand(B, T, 1, hd)  # stride 0 where cos/sin broadcast
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin.stride(-1) != 1:
        sin = sin.contiguous()
    y = torch.empty((B, T, n, hd), dtype=out_dtype, device=x.device)
    BLOCK_H, BLOCK_HALF = block(n), block(hd // 2)
    launch(_rope, (B * T,), x, cos, sin, y, T, n, hd // 2, x.stride(0), x.stride(1), x.stride(2),
           cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), y.stride(0), y.stride(1), y.stride(2),
           BLOCK_H=BLOCK_H, BLOCK_HALF=BLOCK_HALF, BACKWARD=backward, num_warps=warps(BLOCK_H * BLOCK_HALF * 2))
    return y


@register("rope")
def _rope_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _rotate(x, cos, sin, torch.result_type(x, cos), backward=False)  # dtype as x * cos would give


@register("rope_backward")
def _rope_backward_op(dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, x_dtype: torch.dtype) -> torch.Tensor:
    return _rotate(dy, cos, sin, x_dtype, backward=True)


def _setup(ctx, inputs, output):
    x, cos, sin = inputs
    ctx.save_for_backward(cos, sin)
    ctx.x_dtype = x.dtype


def _backward(ctx, dy):
    cos, sin = ctx.saved_tensors
    # cos/sin are functions of integer positions: no gradient flows to them (asserted in `apply_rope`)
    return _rope_backward_op(dy, cos, sin, ctx.x_dtype), None, None


_rope_op.register_autograd(_backward, setup_context=_setup)


def apply_rope(x, cos, sin):
    """Rotate x (B, T, n, hd) by the angles in cos/sin (B or 1, T, 1, hd): the Triton kernel."""
    assert not (cos.requires_grad or sin.requires_grad), "the RoPE kernel has no gradient for cos/sin"
    return _rope_op(x, cos, sin)
