"""Which path runs: `use(x)` says whether an op on x runs as a Triton kernel; re-exports the kernels.

    kernels/rms_norm.py       fused RMSNorm (HF order: normalise in fp32, cast, scale), forward + backward
    kernels/rope.py           rotate-half RoPE on q and k in one launch, forward + backward
    kernels/swiglu.py         silu(gate) * up straight from the fused gate_up projection, forward + backward
    kernels/cross_entropy.py  fused linear + cross-entropy over supervised rows, chunked, never the full logits
    kernels/common.py         op registration (torch.library) and kernel launch

Import name: `vc2.kernels` (vc2/kernels is a symlink to this top-level directory, so wheels ship it
inside the vc2 package). The directory has no __init__.py on purpose: `kernels` is also the name of a
PyPI package (Hugging Face's kernel hub) that transformers probes for with `is_kernels_available()`, and
the repository root is on sys.path whenever vc2 runs from a checkout. Without __init__.py a top-level
`import kernels` finds either that real package (a regular package always wins over a namespace
directory) or, when it is not installed, an empty namespace that transformers reports as not installed.

vc2/model.py calls `use(x)` at each dispatch point: the kernel runs when Triton is importable and
  * mode "auto" (the default): x is a CUDA tensor;
  * mode "on": also on CPU tensors, which only works under the Triton interpreter (TRITON_INTERPRET=1 set
    before the kernels are imported; tests/conftest.py does it): that is how the CPU tests run them;
  * mode "off": never;
and x is fp32, bf16 or fp16 (fp64, used by exactness tests, always takes the PyTorch path). Otherwise
the PyTorch code runs, unchanged. Set the mode with `set_mode()` or the VC2_KERNELS environment variable;
the trainer's --kernels/--no-kernels flag sets it. Change it only between steps: activation checkpointing
recomputes each block during backward under the mode set *then*, and a block recomputed through the
other path fails torch.utils.checkpoint's metadata check.
"""
import os

import torch

try:
    import triton  # noqa: F401  (a CUDA torch brings its own; the CPU wheel does not)
except ImportError:
    AVAILABLE = False
else:
    AVAILABLE = True
    from .common import INTERPRET
    from .cross_entropy import linear_cross_entropy, linear_cross_entropy_ref
    from .rms_norm import rms_norm, rms_norm_ref
    from .rope import apply_rope, apply_rope_ref
    from .swiglu import swiglu, swiglu_ref

MODES = ("auto", "on", "off")
_mode = "auto"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def set_mode(mode: str):
    """'auto' (CUDA tensors), 'on' (also CPU tensors, under the interpreter) or 'off'."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"kernel mode {mode!r}: expected one of {MODES}")
    if mode == "on" and not AVAILABLE:
        raise ValueError("kernel mode 'on': Triton is not installed "
                         "(CPU: pip install -e \".[cpu-triton]\"; a CUDA build of torch brings its own)")
    _mode = mode


def get_mode() -> str:
    return _mode


def use(x: torch.Tensor) -> bool:
    """Whether the op on tensor x runs as a Triton kernel (see the module docstring)."""
    if _mode == "off" or not AVAILABLE or x.dtype not in _DTYPES:
        return False
    if x.is_cuda:
        return True
    if _mode == "on":
        if not INTERPRET:
            raise ValueError("vc2 kernels forced on for a CPU tensor, but Triton runs on CPU only under its "
                               "interpreter: set TRITON_INTERPRET=1 before vc2 is imported")
        return True
    return False


set_mode(os.environ.get("VC2_KERNELS", "auto"))
