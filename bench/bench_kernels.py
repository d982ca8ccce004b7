"""Triton kernels (kernels/) vs their PyTorch references and vs torch.compile of the references, on a GPU.

    PYTHONPATH=. python bench/bench_kernels.py                 # every kernel, then 0.5B training, kernels on vs off
    PYTHONPATH=. python bench/bench_kernels.py --skip-train --out runs/bench   # kernels only; JSON to runs/bench/
    PYTHONPATH=. python bench/bench_kernels.py --smoke         # tiny shapes: checks this script runs (CPU: interpreter)

Per kernel, at the Qwen2.5-Coder-0.5B shape with 16,384 tokens in bf16: forward and forward+backward time
(median of interleaved repeats, CUDA events), achieved bandwidth as a fraction of a device-to-device copy
measured in the same run (the memory-bound kernels), TFLOP/s (the fused linear cross-entropy, at 16,384 x
151,936), peak memory above the inputs, and the kernel's max relative error against the PyTorch reference.
Then end-to-end training tokens/s and peak memory for the 0.5B model on one packed 16K-token row (fp32
master weights, bf16 autocast, activation checkpointing, AdamW: the trainer's single-GPU setup), with
the kernels on vs off, steps interleaved. Without CUDA it says so and exits 0 (unless --smoke).

`run(out_dir)` is the entry point for a GPU-check registry: it returns the results as a dict and writes
them to out_dir/bench_kernels.json.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def timed(fn, device):
    """Milliseconds for one call of fn (CUDA events on a GPU, wall clock on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def interleaved(fns, device, reps, warmup=2):
    """Median ms per side; every repeat runs all sides, in a rotating order, so drift hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            times[k].append(timed(fns[k], device))
    return {k: median(v) for k, v in times.items()}


def peak_gib(fn, device):
    """Peak memory allocated during fn, above what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def copy_gbps(device, reps):
    """Device-to-device copy bandwidth (read + write), the ceiling for the memory-bound kernels."""
    n = (1 << 28) if device.type == "cuda" else (1 << 20)  # 512 MiB of bf16 on a GPU
    x, y = torch.empty(n, dtype=torch.bfloat16, device=device), torch.empty(n, dtype=torch.bfloat16, device=device)
    ms = interleaved({"copy": lambda: y.copy_(x)}, device, reps)["copy"]
    return 2 * x.nbytes / ms / 1e6


@contextlib.contextmanager
def kernel_mode(mode):
    from vc2.kernels import dispatch as kernels
    before = kernels.get_mode()
    kernels.set_mode(mode)
    try:
        yield
    finally:
        kernels.set_mode(before)


def rel_err(got, want):
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()


# --- the cases: inputs, the three implementations, and the bytes each pass must move -----------------

def cases(shape, device, dtype):
    """[(name, fwd-inputs-factory, {side: fn(*inputs)}, fwd bytes, fwd+bwd bytes, fwd+bwd flops or None)]"""
    from vc2.kernels import dispatch as kernels
    from vc2.model import chunked_cross_entropy, rope_cos_sin
    N, D, H, K, hd, I, V = (shape[k] for k in ("N", "D", "H", "K", "hd", "I", "V"))
    b = BYTES[dtype]
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*s, scale=1.0, grad=True):
        return (torch.randn(*s, generator=g, device=device) * scale).to(dtype).requires_grad_(grad)

    def rms_inputs():
        return randn(N, D), (1 + randn(D, scale=0.1, grad=False)).requires_grad_()

    def rope_inputs():
        qkv = randn(1, N, (H + 2 * K) * hd)
        cos, sin = rope_cos_sin(torch.arange(N, device=device)[None], hd, 1e6, dtype)
        return qkv[..., :(H + K) * hd].view(1, N, H + K, hd), cos, sin  # the model's strided q|k view

    def swiglu_inputs():
        return (randn(N, 2 * I, scale=2.0),)

    def lce_inputs():
        labels = torch.randint(0, V, (N,), generator=g, device=device)
        return randn(N, D), randn(V, D, scale=0.02), labels

    def chunked_torch(h, w, y):  # vc2's PyTorch path: supervised rows, 4096-row chunks, checkpointed
        with kernel_mode("off"):
            return chunked_cross_entropy(h, w, y, 4096)

    rope_elems = N * (H + K) * hd
    return [
        ("rms_norm", rms_inputs,
         {"triton": lambda x, w: kernels.rms_norm(x, w, 1e-6), "torch": lambda x, w: kernels.rms_norm_ref(x, w, 1e-6),
          "compile": torch.compile(lambda x, w: kernels.rms_norm_ref(x, w, 1e-6))},
         2 * N * D * b, 5 * N * D * b, None),   # fwd: read x, write y; bwd: read x, dy, write dx
        ("rope", rope_inputs,
         {"triton": kernels.apply_rope, "torch": kernels.apply_rope_ref, "compile": torch.compile(kernels.apply_rope_ref)},
         2 * rope_elems * b, 4 * rope_elems * b, None),
        ("swiglu", swiglu_inputs,
         {"triton": kernels.swiglu, "torch": kernels.swiglu_ref, "compile": torch.compile(kernels.swiglu_ref)},
         3 * N * I * b, 8 * N * I * b, None),   # fwd: read 2I, write I; bwd: read 2I + I, write 2I
        ("linear_cross_entropy", lce_inputs,
         {"triton": lambda h, w, y: kernels.linear_cross_entropy(h, w, y, 4096),
          "torch": chunked_torch,
          "torch_full_logits": kernels.linear_cross_entropy_ref,
          "compile": torch.compile(kernels.linear_cross_entropy_ref)},
         None, None, 6 * N * V * D),            # useful FLOPs: logits, d hidden, d weight
    ]


def bench_case(name, make_inputs, sides, fwd_bytes, fb_bytes, flops, device, reps, copy):
    inputs = make_inputs()
    grad_inputs = [t for t in inputs if t.requires_grad]
    outs = {k: fn(*inputs) for k, fn in sides.items()}
    dout = torch.randn_like(outs["torch"].float()).to(outs["torch"].dtype) if outs["torch"].dim() else None
    errs = {k: rel_err(v, outs["torch"]) for k, v in outs.items() if k != "torch"}
    del outs

    def fwd(fn):
        def f():
            with torch.no_grad():
                fn(*inputs)
        return f

    def fwd_bwd(fn):
        def f():
            torch.autograd.grad(fn(*inputs), grad_inputs, dout)
        return f

    t_fwd = interleaved({k: fwd(fn) for k, fn in sides.items()}, device, reps)
    t_fb = interleaved({k: fwd_bwd(fn) for k, fn in sides.items()}, device, reps)
    mem = {k: peak_gib(fwd_bwd(fn), device) for k, fn in sides.items()}
    rows = {}
    for k in sides:
        r = {"fwd_ms": t_fwd[k], "fwd_bwd_ms": t_fb[k], "peak_gib": mem[k], "max_rel_err_vs_torch": errs.get(k, 0.0)}
        if fwd_bytes:
            r["fwd_bw_frac_of_copy"] = fwd_bytes / t_fwd[k] / 1e6 / copy
            r["fwd_bwd_bw_frac_of_copy"] = fb_bytes / t_fb[k] / 1e6 / copy
        if flops:
            r["fwd_bwd_tflops"] = flops / t_fb[k] / 1e9
        rows[k] = r
    for k, r in rows.items():
        extra = (f"  bw {r['fwd_bw_frac_of_copy']:.0%} / {r['fwd_bwd_bw_frac_of_copy']:.0%} of copy" if fwd_bytes
                 else f"  {r['fwd_bwd_tflops']:.0f} TFLOP/s" if flops else "")
        mem_s = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "-"
        print(f"  {name:<21} {k:<18} fwd {r['fwd_ms']:8.3f} ms ({t_fwd['torch'] / r['fwd_ms']:5.2f}x torch)  "
              f"fwd+bwd {r['fwd_bwd_ms']:8.3f} ms ({t_fb['torch'] / r['fwd_bwd_ms']:5.2f}x)  peak {mem_s}{extra}  "
              f"err {r['max_rel_err_vs_torch']:.1e}", flush=True)
    return rows


def bench_train(preset, tokens, device, reps):
    """One optimizer step on a packed row of `tokens` tokens, kernels on vs off, interleaved."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import make_docs
    from vc2.config import PRESETS
    from vc2.data import pack
    from vc2.model import Transformer
    from vc2.train import apply_activation_checkpointing
    cfg = PRESETS[preset]
    torch.manual_seed(0)
    model = Transformer(cfg).init_weights(seed=0).to(device)
    model.train()
    apply_activation_checkpointing(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    docs = make_docs(4 * tokens // 300 + 8, tokens, cfg.vocab_size)
    row = max(pack(docs, tokens, seed=0)[0], key=lambda r: len(r["input_ids"]))  # the fullest row
    ids, pos, cu, labels = (row[k].to(device) for k in ("input_ids", "position_ids", "cu_seqlens", "labels"))
    n_sup = int((labels != -100).sum())
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step(mode):
        def f():
            with kernel_mode(mode):  # backward too: activation checkpointing recomputes the blocks there
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    loss = model(ids[None], position_ids=pos[None], cu_seqlens=cu, labels=labels[None])
                (loss / n_sup).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return f

    t = interleaved({"on": step("on"), "off": step("off")}, device, reps)
    mem = {m: peak_gib(step(m), device) for m in ("on", "off")}
    res = {m: {"tok_per_s": len(ids) / t[m] * 1e3, "step_ms": t[m], "peak_gib": mem[m]} for m in ("on", "off")}
    print(f"  train {preset} {len(ids)} tokens ({len(cu) - 1} documents, {n_sup} supervised): "
          f"kernels on {res['on']['tok_per_s']:.0f} tok/s, off {res['off']['tok_per_s']:.0f} tok/s "
          f"({res['on']['tok_per_s'] / res['off']['tok_per_s']:.2f}x); peak "
          + (f"{mem['on']:.1f} vs {mem['off']:.1f} GiB" if mem["on"] is not None else "-"), flush=True)
    return res


def run(out_dir=None, smoke=False, skip_train=False, reps=None):
    """Benchmark on CUDA (or tiny shapes with --smoke); returns the results, also written to out_dir."""
    if not torch.cuda.is_available() and not smoke:
        print("bench_kernels: no CUDA device; the Triton kernels are benchmarked on GPUs only (nothing measured)")
        return {"skipped": "no CUDA"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from vc2.kernels import dispatch as kernels
    if not kernels.AVAILABLE:
        print("bench_kernels: Triton is not installed (nothing measured)")
        return {"skipped": "no Triton"}
    if smoke:
        shape, preset, tokens = dict(N=64, D=64, H=4, K=2, hd=16, I=96, V=1000), "debug", 128
        reps = reps or 2
    else:  # Qwen2.5-Coder-0.5B at 16K tokens
        shape, preset, tokens = dict(N=16384, D=896, H=14, K=2, hd=64, I=4864, V=151936), "qwen2.5-coder-0.5b", 16384
        reps = reps or 10
    print(f"bench_kernels: torch {torch.__version__}, triton {__import__('triton').__version__}, device "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (interpreter)'}, shape {shape}", flush=True)
    copy = copy_gbps(device, reps)
    print(f"  device copy: {copy:.0f} GB/s (read + write)", flush=True)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "shape": shape,
               "copy_gbps": copy, "kernels": {}}
    with kernel_mode("on"):
        for name, make_inputs, sides, fwd_b, fb_b, flops in cases(shape, device, torch.bfloat16):
            if device.type != "cuda":  # Inductor on CPU would compile C++ for minutes: trace with aot_eager
                sides["compile"] = torch.compile(sides["torch"], backend="aot_eager")
            results["kernels"][name] = bench_case(name, make_inputs, sides, fwd_b, fb_b, flops, device, reps, copy)
    if not skip_train:
        results["train"] = bench_train(preset, tokens, device, max(3, reps // 2))
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "bench_kernels.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="directory for bench_kernels.json (default: print only)")
    p.add_argument("--skip-train", action="store_true", help="kernels only, no end-to-end training step")
    p.add_argument("--reps", type=int, default=None, help="timed repeats per side (default: 10; smoke 2)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, to check the script itself; without CUDA it runs under the Triton interpreter")
    args = p.parse_args(argv)
    if args.smoke and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before vc2 (and so the kernels) is imported
    run(args.out, smoke=args.smoke, skip_train=args.skip_train, reps=args.reps)


if __name__ == "__main__":
    main()
