"""The Qwen2 / Llama decoder, written by hand to match Hugging Face `transformers` numerics.

    from vc2.config import PRESETS
    from vc2.model import Transformer
    model = Transformer(PRESETS["debug"])
    logits = model(input_ids)                                   # (B, T) -> (B, T, V)
    logits = model(packed_ids, position_ids=pos, cu_seqlens=cu)  # one packed row of several documents

This file is a readable one-device model. FSDP, activation checkpointing and torch.compile are applied
from the outside (vc2/train.py); weights are loaded by vc2/checkpoint.py.

Shape legend: B batch, T query length, S key length (cache), D hidden_size, H query heads,
K key/value heads, hd head_dim, V vocab rows, N total tokens of a packed row.

Numerics that must match HF exactly (see tests/test_model.py):
  * RMSNorm normalises in fp32, casts back to the input dtype, *then* multiplies by the weight.
  * RoPE tables (inv_freq, cos, sin) are computed in fp32 on every call and only the final cos/sin
    are cast to the activation dtype; there is no buffer a `model.to(bf16)` could silently cast.
  * rotate-half (NeoX) RoPE, applied to q and k after their bias.
  * GQA: kv head j serves query heads j*g .. j*g+g-1 (what repeat_interleave / enable_gqa does).
"""
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from vc2.config import ModelConfig
from vc2.kernels import dispatch as kernels  # Triton kernels, used on CUDA when available (kernels/dispatch.py)

# Optional GPU attention kernels. Both are CUDA-only; on CPU we use SDPA (see `attention`).
try:
    from flash_attn import flash_attn_varlen_func  # the flash-attn package (no wheels: built on GPU hosts)
except ImportError:
    flash_attn_varlen_func = None
try:
    from torch.nn.attention.varlen import varlen_attn  # PyTorch's own FA-varlen (2.10+), CUDA only
except ImportError:
    varlen_attn = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if kernels.use(x):
            return kernels.rms_norm(x, self.weight, self.eps)
        if x.dtype == self.weight.dtype == torch.float32:  # one fused op (same values as the HF order in fp32)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # HF order: normalise in fp32, cast back, *then* scale. Scaling before the cast rounds differently.
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


_INV_FREQ = {}  # (head_dim, theta, device) -> fp32 inverse frequencies; a plain cache, not a castable buffer


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """cos/sin tables (B, T, 1, hd) for integer positions (B, T), computed in fp32 as HF does."""
    key = (head_dim, theta, position_ids.device)
    if key not in _INV_FREQ:
        _INV_FREQ[key] = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device)
                                          .float() / head_dim))  # (hd/2,)
    freqs = position_ids.float()[..., None, None] * _INV_FREQ[key]  # (B, T, 1, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)                          # (B, T, 1, hd)
    if dtype == torch.float32:
        return emb.cos(), emb.sin()
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, T, n, hd); cos/sin (B, T, 1, hd). Rotate-half: pairs are (i, i + hd/2), not interleaved."""
    if kernels.use(x):
        return kernels.apply_rope(x, cos, sin)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def half_dtype(q) -> torch.dtype | None:
    """The fp16/bf16 dtype FlashAttention kernels should get for q: the autocast dtype when autocast is
    on (RoPE promotes q/k to fp32 under autocast while v stays bf16, and autocast covers neither
    flash-attn nor torch's varlen op), else q's own dtype when it is half (FSDP bf16 parameters),
    else None (an fp32 run)."""
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype if q.dtype in (torch.float16, torch.bfloat16) else None


def packed_backend(backend: str, is_cuda: bool, half: torch.dtype | None) -> str:
    """Resolve "auto" for a packed row: FlashAttention on CUDA in half precision (flash-attn, else torch's
    varlen op), else one SDPA call per document (CPU, and fp32 on CUDA: the flash kernels refuse fp32)."""
    if backend == "auto":
        if is_cuda and half is not None and flash_attn_varlen_func is not None:
            return "flash_attn"
        if is_cuda and half is not None and varlen_attn is not None:
            return "torch_varlen"
        return "sdpa_loop"
    if backend in ("flash_attn", "torch_varlen") and half is None:
        raise ValueError(f"attention backend {backend!r} needs fp16/bf16 inputs or autocast (got fp32); "
                         "use 'sdpa_loop' (what 'auto' picks for fp32)")
    return backend


def varlen_causal_kwargs(fn) -> tuple[dict, bool]:
    """(keyword arguments that make torch's `varlen_attn` causal, whether it takes `enable_gqa`).

    The op is new and its signature moved between releases: 2.13 asks for `window_size=(-1, 0)` and
    `enable_gqa=True` (keyword-only); earlier releases take `is_causal` and have no GQA flag (their
    FlashAttention call accepts fewer k/v heads as is). Read once per function object, by inspection.
    """
    if fn not in _VARLEN_KWARGS:
        params = inspect.signature(fn).parameters
        if "window_size" in params:
            kw = {"window_size": (-1, 0)}  # a tuple: the op compares with == (-1, 0); a list would be non-causal
        elif "is_causal" in params:
            kw = {"is_causal": True}
        else:
            raise RuntimeError(f"torch varlen_attn{inspect.signature(fn)}: no causal argument vc2 knows; "
                               "use set_attention_backend('sdpa_loop') or install flash-attn")
        _VARLEN_KWARGS[fn] = (kw, "enable_gqa" in params)
    return _VARLEN_KWARGS[fn]


_VARLEN_KWARGS = {}
if varlen_attn is not None:
    try:
        varlen_causal_kwargs(varlen_attn)  # read the signature now, outside any compiled region
    except RuntimeError:
        pass  # an unknown signature: the error is raised when the backend is used


def attention(q, k, v, cu_seqlens=None, max_seqlen=None, attn_mask=None, backend="auto"):
    """Causal attention. q (B, T, H, hd); k, v (B, S, K, hd) -> (B, T, H, hd).

    Three situations:
      * plain batch (no cu_seqlens, no mask): causal over each row.
      * packed row (B=1, cu_seqlens): causal inside each document, nothing across documents.
      * explicit boolean attn_mask (B, 1, T, S), True = may attend (e.g. a left-padded batch);
        the KV-cache path does not come here: the cache attends itself (vc2/engine.py).
    `backend` for packed rows: "auto" picks flash-attn varlen, then torch varlen, on CUDA in half precision
    (see half_dtype, packed_backend); otherwise "sdpa_loop" (one SDPA call per document). On the 2-core CPU
    (bench/bench_attention.py, 2048 tokens, 5 documents) the loop is ~2x faster than one SDPA call with an
    (N, N) block-diagonal mask ("sdpa_mask") in the forward pass; forward+backward was a tie in bf16 and
    the mask was faster (0.73x) in fp32, so a CPU training run may prefer set_attention_backend("sdpa_mask").
    `max_seqlen` (the longest document) should come from the data as a host int: reading it from
    cu_seqlens is a device->host sync (the model does it once per forward when it is not given).
    """
    B, T, H, hd = q.shape
    K = k.shape[2]
    if attn_mask is not None or cu_seqlens is None:
        # SDPA wants (B, n, T, hd)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn_mask, is_causal=attn_mask is None,
                                           enable_gqa=H != K)
        return y.transpose(1, 2)

    assert B == 1, "a packed batch is one row; cu_seqlens indexes into it"
    if not cu_seqlens.is_cuda and not torch.compiler.is_compiling():  # free on CPU; a sync on CUDA
        assert int(cu_seqlens[-1]) == T, f"cu_seqlens ends at {int(cu_seqlens[-1])} but the row has {T} tokens"
    half = half_dtype(q)
    backend = packed_backend(backend, q.is_cuda, half)
    if max_seqlen is None and backend in ("flash_attn", "torch_varlen"):
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if backend == "flash_attn":
        cu = cu_seqlens.to(torch.int32)
        y = flash_attn_varlen_func(q[0].to(half), k[0].to(half), v[0].to(half), cu, cu, max_seqlen, max_seqlen,
                                   causal=True)
        return y.unsqueeze(0)
    if backend == "torch_varlen":
        cu = cu_seqlens.to(torch.int32)
        kw, has_gqa_flag = varlen_causal_kwargs(varlen_attn)
        if has_gqa_flag:
            kw = {**kw, "enable_gqa": H != K}
        y = varlen_attn(q[0].to(half), k[0].to(half), v[0].to(half), cu, cu, max_seqlen, max_seqlen, **kw)
        return y.unsqueeze(0)
    if backend == "sdpa_loop":
        out = torch.empty_like(q)
        bounds = cu_seqlens.tolist()  # a host read: free on CPU; on CUDA only fp32 runs come here
        for s, e in zip(bounds[:-1], bounds[1:]):
            qd, kd, vd = (t[:, s:e].transpose(1, 2) for t in (q, k, v))  # (1, n, len, hd)
            out[:, s:e] = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=H != K).transpose(1, 2)
        return out
    if backend == "sdpa_mask":
        doc = torch.searchsorted(cu_seqlens[1:], torch.arange(T, device=q.device), right=True)  # (N,) doc index
        idx = torch.arange(T, device=q.device)
        mask = (doc[:, None] == doc[None, :]) & (idx[:, None] >= idx[None, :])  # (N, N)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=H != K).transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}")


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        D, H, K, hd = cfg.hidden_size, self.n_head, self.n_kv_head, self.head_dim
        # q, k and v in one matmul (rows: H*hd of q, then K*hd of k, then K*hd of v); checkpoint.py
        # splits/joins HF's separate q_proj/k_proj/v_proj. One GEMM instead of three saves per-call
        # overhead in decode and gives larger, faster GEMMs in training.
        self.qkv = nn.Linear(D, (H + 2 * K) * hd, bias=cfg.attention_bias)
        self.o = nn.Linear(H * hd, D, bias=False)
        self.backend = "auto"

    def forward(self, x, cos, sin, cu_seqlens=None, max_seqlen=None, kv_cache=None, attn_mask=None):
        B, T, _ = x.shape
        H, K, hd = self.n_head, self.n_kv_head, self.head_dim
        qk, v = self.qkv(x).split([(H + K) * hd, K * hd], dim=-1)
        qk = apply_rope(qk.view(B, T, H + K, hd), cos, sin)  # q and k side by side: one rotation for both
        q, k = qk.split([H, K], dim=2)                       # (B, T, H, hd), (B, T, K, hd)
        v = v.view(B, T, K, hd)                               # (B, T, K, hd)
        if kv_cache is not None:  # the cache stores k/v and attends over each row's cache (vc2/engine.py)
            y = kv_cache.attend(self.layer_idx, q, k, v)  # (B, T, H, hd)
        else:
            y = attention(q, k, v, cu_seqlens, max_seqlen, attn_mask, self.backend)  # (B, T, H, hd)
        return self.o(y.reshape(B, T, H * hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # gate and up projections in one matmul (rows: gate, then up), joined from HF's gate_proj/up_proj
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate_up = self.gate_up(x)
        if kernels.use(gate_up):
            return self.down(kernels.swiglu(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cu_seqlens=None, max_seqlen=None, kv_cache=None, attn_mask=None):
        # out-of-place adds: under FSDP2 an in-place op on a module output can drop its backward hook
        h = x + self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen, kv_cache, attn_mask)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        """Share the head with the embedding when the config says so (call again after assign-loading)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self, seed: int | None = None, std: float = 0.02):
        """HF-style init (normal(0, std) matrices, zero biases, unit norms): used for training from scratch
        and for tests. Loading a checkpoint overwrites everything."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():  # a tied head is visited once, via embed
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def forward(self, input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, kv_cache=None,
                attn_mask=None, return_hidden=False, labels=None, loss_chunk=4096):
        """input_ids (B, T) -> logits (B, T, V) in the weights' dtype (or the final hidden states (B, T, D)
        with return_hidden=True). With labels (B, T) (-100 = ignore, already aligned: labels[t] is the
        target of position t) it returns instead the *summed* cross-entropy, computed `loss_chunk` tokens
        at a time so the (tokens x vocab) fp32 logits never exist all at once (see chunked_cross_entropy).

        position_ids (B, T): defaults to 0..T-1 (required with a kv_cache).
        cu_seqlens (n_docs+1,) int32 with B == 1: a packed row; position_ids must restart at 0 per document.
        max_seqlen: its longest document as a host int (vc2.data gives it; computed here when missing).
        kv_cache: an object with .attend(layer_idx, q, k, v) -> attention output, which writes the new
        keys/values into the cache and attends over what each row has cached (vc2/engine.py); it needs
        position_ids. attn_mask (B, 1, T, S) bool: an explicit mask for a plain batch.
        """
        B, T = input_ids.shape
        if position_ids is None:
            assert kv_cache is None, "a kv_cache forward needs position_ids (each row's cache position)"
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        if cu_seqlens is not None and max_seqlen is None:  # one device->host read per forward, not per layer
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        x = self.embed(input_ids)  # (B, T, D)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.layers:
            x = block(x, cos, sin, cu_seqlens, max_seqlen, kv_cache, attn_mask)
        x = self.norm(x)
        if labels is not None:
            return chunked_cross_entropy(x, self.lm_head.weight, labels, loss_chunk)
        if return_hidden:
            return x
        return self.lm_head(x)  # (B, T, V)

    def set_attention_backend(self, backend: str):
        """'auto' | 'flash_attn' | 'torch_varlen' | 'sdpa_loop' | 'sdpa_mask' for packed rows."""
        for block in self.layers:
            block.attn.backend = backend


def _ce_chunk(h, weight, y):
    logits = F.linear(h, weight)  # (n, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32; fp64 stays fp64
    return F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")


def chunked_cross_entropy(hidden, weight, labels, chunk: int):
    """Sum of CE(hidden @ weight.T, labels) over labels != -100, computing logits for supervised positions
    only (the head is most of the FLOPs of a small model with a 152K vocabulary). Each chunk's logits are recomputed in
    backward (activation checkpointing) rather than kept, so at 16K tokens x 152K vocab we hold ~0.6 GB
    of fp32 logits per 1K-token chunk instead of ~10 GB (plus as much again for their gradient).
    With kernels on, the fused Triton version runs instead (kernels/cross_entropy.py)."""
    if kernels.use(hidden):
        return kernels.linear_cross_entropy(hidden, weight, labels, chunk)
    y = labels.reshape(-1)                    # (N,)
    keep = (y != -100).nonzero().squeeze(-1)  # only supervised positions need logits at all: in SFT the
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)  # prompts are often half the tokens
    y = y.index_select(0, keep)               # (n_sup,), h (n_sup, D)
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for s in range(0, y.shape[0], chunk):
        ys = y[s:s + chunk]
        if torch.is_grad_enabled():
            total = total + torch.utils.checkpoint.checkpoint(_ce_chunk, h[s:s + chunk], weight, ys, use_reentrant=False)
        else:
            total = total + _ce_chunk(h[s:s + chunk], weight, ys)
    return total


def packed_position_ids(cu_seqlens) -> torch.Tensor:
    """Per-document positions (1, N) for a packed row: 0..len-1 inside each document."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    return torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).to(cu_seqlens.device)

