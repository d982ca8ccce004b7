"""What every kernel module shares: how an op is registered with torch.library, and how a kernel is launched.

On a GPU each op is a `torch.library.triton_op`: torch.compile (Inductor) sees the Triton kernels inside
it and launches them from its own generated code. Under the Triton interpreter (TRITON_INTERPRET=1, the
CPU test path) `wrap_triton` hands back the raw interpreted kernel, which cannot run on the fake tensors
torch.compile traces with, so there the same function is registered as an opaque `custom_op` instead,
and its fake (shape-only) implementation is the function itself with the kernel launches skipped. The
op's schema, autograd formula and Python body are the same either way; what the interpreter cannot test
is Inductor inlining the kernels, which only a GPU run checks (tests/test_kernels.py, CUDA-only test).
"""
import os

import torch
import triton
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

# Read once, like Triton itself: @triton.jit consults the variable when each kernel is decorated.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def register(name: str):
    """Decorator: register `fn` as the operator vc2::<name> (a triton_op, or a custom_op when interpreting)."""
    def wrap(fn):
        if not INTERPRET:
            return torch.library.triton_op(f"vc2::{name}", fn, mutates_args=())
        op = torch.library.custom_op(f"vc2::{name}", fn, mutates_args=())
        op.register_fake(fn)  # `launch` does nothing on fake tensors: only the output allocations remain
        return op
    return wrap


def launch(kernel, grid, *args, **meta):
    """kernel[grid](*args, **meta), through wrap_triton so torch.compile can trace the launch."""
    if INTERPRET and any(is_fake(a) for a in args if isinstance(a, torch.Tensor)):
        return
    wrap_triton(kernel)[grid](*args, **meta)


def warps(block: int) -> int:
    """num_warps for a program that works on `block` elements at once (more warps for wider rows)."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def block(n: int, cap: int = 1 << 16) -> int:
    """The power-of-two block that covers a row of n elements (at most `cap`)."""
    return min(triton.next_power_of_2(max(n, 1)), cap)
