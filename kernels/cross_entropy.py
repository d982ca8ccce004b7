"""Fused linear + cross-entropy: the summed loss of softmax(h @ W.T) and its gradients, one row chunk at a time.

At 16,384 tokens x 151,936 vocabulary the fp32 logits are 10 GB, and their gradient as much again. The
PyTorch path (vc2/model.py `chunked_cross_entropy`, `linear_cross_entropy_ref` here) already computes
logits for supervised positions only, a chunk at a time under activation checkpointing: per chunk it
materialises the logits, upcasts them to fp32, runs log_softmax, and in backward recomputes the logits
and writes their fp32 gradient. Here, per chunk of rows:
  1. logits = h_chunk @ W.T in the compute dtype (cuBLAS), the only vocabulary-wide tensor;
  2. one Triton program per row streams the row twice: an online max / sum-exp for the log-sum-exp and
     the row's loss, then softmax - onehot written *over the logits in place* (no fp32 copy);
  3. dh_chunk = dlogits @ W and dW += dlogits.T @ h_chunk (fp32 accumulator), still in the forward.
So the gradients are ready when the forward ends (the loss is the last op, so backward only scales
them by the incoming gradient), the head's matmuls run 3 times instead of 4 (no recompute), and peak
memory is one (chunk, V) logits buffer in the compute dtype plus the (V, D) fp32 weight-gradient
accumulator. This is the Liger-Kernel FusedLinearCrossEntropy design.

Loss: sum over rows whose label is not `ignore_index` (the trainer divides by the global count of
supervised tokens itself), in fp32, as the reference computes it.
"""
import torch
import triton
import triton.language as tl

from .common import block, launch, register, warps

IGNORE_INDEX = -100


def linear_cross_entropy_ref(hidden, weight, labels, ignore_index: int = IGNORE_INDEX):
    """The PyTorch reference: sum of CE(hidden @ weight.T, labels) over labels != ignore_index, fp32 logits.
    Materialises all (N, V) logits; vc2.model.chunked_cross_entropy computes the same sum in chunks."""
    logits = torch.nn.functional.linear(hidden.reshape(-1, hidden.shape[-1]), weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.nn.functional.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index, reduction="sum")


@triton.jit
def _ce_rows(LOGITS, stride, TARGET, LOSS, V, ignore_index, COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    y = tl.load(TARGET + row)
    valid = y != ignore_index
    # pass 1: log-sum-exp with a running max (fp32), one BLOCK_V slice of the row at a time
    m = -float("inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    z_y = tl.load(base + tl.where(valid, y, 0)).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - z_y, 0.0))
    if COMPUTE_GRAD:
        # pass 2: d loss / d logits = softmax - onehot(y), over the logits (an ignored row gets zeros)
        scale = tl.where(valid, 1.0, 0.0)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = cols < V
            z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(z - lse) - tl.where(cols == y, 1.0, 0.0)
            tl.store(base + cols, (p * scale).to(LOGITS.dtype.element_ty), mask=mask)


@register("linear_cross_entropy")
def _lce(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int, ignore_index: int,
         compute_grad: bool, block_v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, D = hidden.shape
    V = weight.shape[0]
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    dh = torch.empty_like(hidden) if compute_grad else hidden.new_empty(0)
    dw = torch.zeros(V, D, dtype=torch.float32, device=hidden.device) if compute_grad else hidden.new_empty(0)
    for s in range(0, n, chunk):
        h = hidden[s:s + chunk]                    # (c, D)
        logits = h @ weight.T                      # (c, V), the compute dtype
        row_loss = torch.empty(h.shape[0], dtype=torch.float32, device=hidden.device)
        launch(_ce_rows, (h.shape[0],), logits, logits.stride(0), labels[s:s + chunk].contiguous(), row_loss, V,
               ignore_index, COMPUTE_GRAD=compute_grad, BLOCK_V=block_v, num_warps=warps(block_v))
        loss = loss + row_loss.sum()
        if compute_grad:                           # logits now hold d loss / d logits
            dh[s:s + chunk] = logits @ weight      # (c, D)
            dw.add_(logits.T @ h)                  # (V, D), summed over chunks in fp32
    return loss, dh, dw


def _setup(ctx, inputs, output):
    ctx.compute_grad, ctx.weight_dtype = inputs[5], inputs[1].dtype
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, dloss, _ddh, _ddw):
    # the gradients were computed in the forward for an upstream gradient of 1: scale them (in fp32)
    assert ctx.compute_grad, "backward through linear_cross_entropy called with compute_grad=False"
    dh, dw = ctx.saved_tensors
    return (dh.float() * dloss).to(dh.dtype), (dw * dloss).to(ctx.weight_dtype), None, None, None, None, None


_lce.register_autograd(_backward, setup_context=_setup)


def linear_cross_entropy(hidden, weight, labels, chunk: int = 4096, ignore_index: int = IGNORE_INDEX,
                         block_v: int | None = None):
    """Sum of CE(hidden @ weight.T, labels) over labels != ignore_index, without materialising the logits.

    hidden (..., D) and labels (...) (already aligned: labels[t] is the target of position t); weight
    (V, D). Only supervised rows are gathered (as in chunked_cross_entropy), then processed `chunk` rows
    at a time. Under autocast the matmuls run in the autocast dtype, as F.linear's would. Returns fp32.
    """
    y = labels.reshape(-1)
    keep = (y != ignore_index).nonzero().squeeze(-1)  # a host sync, as in the PyTorch path
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)  # (n_sup, D)
    y = y.index_select(0, keep)
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        h, weight = h.to(dtype), weight.to(dtype)
    compute_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    block_v = block_v or block(weight.shape[0], cap=32768)
    return _lce(h, weight, y, chunk, ignore_index, compute_grad, block_v)[0]
