"""Packed-row attention on CPU: one SDPA call per document ("sdpa_loop", vc2's CPU default) vs one SDPA
call with an (N, N) block-diagonal causal mask ("sdpa_mask"), forward and forward+backward, same run.

    python bench/bench_attention.py
"""
import time

import torch

from vc2.model import attention


def timed(fn, reps=5):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3


def main():
    lengths = [300, 700, 148, 500, 400]  # five documents in one 2048-token row
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    N = int(cu[-1])
    print(f"N={N} tokens, {len(lengths)} documents, 14 query heads / 2 kv heads, head_dim 64")
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1, N, 14, 64, dtype=dtype, requires_grad=True)
        k = torch.randn(1, N, 2, 64, dtype=dtype, requires_grad=True)
        v = torch.randn(1, N, 2, 64, dtype=dtype, requires_grad=True)
        row = []
        for backend in ("sdpa_loop", "sdpa_mask"):
            with torch.no_grad():
                fwd = timed(lambda: attention(q, k, v, cu, backend=backend))
            fb = timed(lambda: attention(q, k, v, cu, backend=backend).sum().backward())
            row.append((backend, fwd, fb))
        (_, lf, lb), (_, mf, mb) = row
        print(f"{str(dtype):15s} fwd: loop {lf:6.1f} ms  mask {mf:6.1f} ms ({mf / lf:.2f}x) | "
              f"fwd+bwd: loop {lb:6.1f} ms  mask {mb:6.1f} ms ({mb / lb:.2f}x)")


if __name__ == "__main__":
    main()
