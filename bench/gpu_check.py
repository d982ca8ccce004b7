"""The whole GPU path of vc2 in one command, for the few minutes a GPU machine is lent.

    PYTHONPATH=. python3 bench/gpu_check.py                      # every section, ~5 min on one H200
    PYTHONPATH=. python3 bench/gpu_check.py --only attention,cross_entropy --out /tmp/gpu-check
    PYTHONPATH=. python3 bench/gpu_check.py --list

Prints one line per check, PASS / FAIL / SKIP with its figures, and a table at the end; every line is
also appended to OUT/gpu_check.jsonl the moment it is known (and OUT/summary.json rewritten after
each section), so a run cut short still reports what it reached. Without CUDA it says so and exits 0.
Exit status: 1 if any check failed, else 0.

It needs only what a bare GPU machine has: torch (2.11 or later, CUDA), triton, transformers (for the
generation comparison), safetensors, tokenizers, numpy, pillow, tqdm; no network, no flash-attn (its
lines SKIP). Everything it trains on is made here: a byte-level BPE tokenizer trained in seconds on
synthetic VisCode-like conversations (bench/bench_data.py), and a randomly initialised checkpoint of the
Qwen2.5-Coder-0.5B shape.

Sections are a registry, SECTIONS[name] = function(ctx), run in order; later work adds its own with
@section("name") (kernels, decoding, ...). A section reports through ctx.check(...); an exception in a
section is one FAIL line, and the next section runs.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {}


def section(name):
    def register(fn):
        SECTIONS[name] = fn
        return fn
    return register


class Context:
    """What sections share: the output dir, the device, lazily built assets, and the report."""

    def __init__(self, out: Path):
        self.out = out
        self.device = torch.device("cuda")
        self.rows = []
        self.section = None
        self._assets = {}
        self.jsonl = open(out / "gpu_check.jsonl", "a")

    def check(self, name, ok, detail="", skip=False, **figures):
        status = "SKIP" if skip else ("PASS" if ok else "FAIL")
        row = {"section": self.section, "check": name, "status": status, "detail": detail, **figures,
               "time": round(time.time(), 1)}
        self.rows.append(row)
        print(f"{status:<4}  {self.section:<14} {name:<34} {detail}", flush=True)
        self.jsonl.write(json.dumps(row, default=str) + "\n")
        self.jsonl.flush()
        os.fsync(self.jsonl.fileno())
        return ok

    def asset(self, name, build):
        if name not in self._assets:
            self._assets[name] = build()
        return self._assets[name]

    # --- shared assets: data, tokenizer, a 0.5B-shape checkpoint ---------------------------------

    def data(self, n=1200):
        def build():
            import random
            sys.path.insert(0, str(ROOT / "bench"))
            from bench_data import make_conversation
            rng = random.Random(0)
            path = self.out / f"synthetic-{n}.jsonl"
            with open(path, "w") as f:
                for i in range(n):
                    f.write(json.dumps(make_conversation(rng, i)) + "\n")
            return path
        return self.asset(f"data{n}", build)

    def tokenizer_dir(self):
        return self.asset("tokenizer", lambda: build_tokenizer(self.out / "tokenizer", self.data()))

    def checkpoint(self):
        def build():
            import vc2
            from vc2.config import PRESETS
            from vc2.model import Transformer
            model = Transformer(PRESETS["qwen2.5-coder-0.5b"]).init_weights(seed=0)
            return vc2.save_model(model, self.out / "ckpt-0.5b", dtype=torch.bfloat16, tokenizer_dir=self.tokenizer_dir())
        return self.asset("ckpt", build)


def build_tokenizer(path: Path, data: Path, vocab_size=4096) -> Path:
    """A byte-level BPE with Qwen2's split regex and ChatML tokens, trained on the synthetic data."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    texts = (m["content"] for line in open(data) for m in json.loads(line)["messages"])
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    path.mkdir(parents=True, exist_ok=True)
    tk.save(str(path / "tokenizer.json"))
    template = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
                "Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}"
                "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}")
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    return path


def run_train(ctx, name, *flags, timeout=300):
    """run_train.py in a subprocess (its own CUDA context and process group); returns (log records, tail)."""
    out = ctx.out / name
    cmd = [sys.executable, str(ROOT / "run_train.py"), "--model", str(ctx.checkpoint()), "--data", str(ctx.data()),
           "--out", str(out), "--data-cache", str(ctx.out / "data-cache"), "--no-export", *flags]
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    (ctx.out / f"{name}.log").write_text(p.stdout + p.stderr)
    if p.returncode:
        return None, f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"[:300]
    log = out / "log.jsonl"
    recs = [json.loads(l) for l in log.read_text().splitlines()] if log.is_file() else []
    return recs, f"{time.time() - t:.0f} s"


def falling(recs) -> bool:
    losses = [r["loss"] for r in recs]
    return bool(losses) and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


# --- sections -----------------------------------------------------------------------------------------

@section("env")
def env(ctx):
    """The machine: GPU, triton, flash-attn, torch's varlen op and its signature, the peak FLOP/s for MFU."""
    import vc2.model as M
    from vc2.train import peak_flops
    props = torch.cuda.get_device_properties(ctx.device)
    ctx.check("device", props.major >= 8, f"{props.name}, sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB "
              f"(FlashAttention needs sm80+)", torch=torch.__version__, cuda=torch.version.cuda)
    try:
        import triton
        ctx.check("triton", True, triton.__version__)
    except ImportError:
        ctx.check("triton", False, "not importable (torch.compile's GPU backend needs it)")
    ctx.check("flash-attn", True, "installed" if M.flash_attn_varlen_func else "not installed: torch varlen is used",
              skip=M.flash_attn_varlen_func is None)
    if M.varlen_attn is None:
        ctx.check("torch varlen_attn", True, "absent from this torch", skip=True)
    else:
        import inspect
        kw, gqa = M.varlen_causal_kwargs(M.varlen_attn)
        ctx.check("torch varlen_attn", True, f"causal via {kw}, enable_gqa flag: {gqa}; {inspect.signature(M.varlen_attn)}"[:200])
    peak = peak_flops(ctx.device)
    ctx.check("peak bf16 TFLOP/s", peak is not None, f"{peak / 1e12:.0f}" if peak else f"unknown for {props.name}")


def _reference_attention(q, k, v, cu):
    import torch.nn.functional as F
    out = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qd, kd, vd = (t[0, s:e].double().transpose(0, 1) for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=qd.shape[0] != kd.shape[0]).transpose(0, 1))
    return torch.cat(out)[None]


@section("attention")
def attention_backends(ctx):
    """Each packed-attention backend present vs a float64 reference, forward and backward, GQA, bf16."""
    import vc2.model as M
    from vc2.model import attention
    g = torch.Generator(device="cuda").manual_seed(0)
    for H, K, hd in [(14, 2, 64), (28, 4, 128)]:
        lengths = [1, 37, 512, 1000, 2547]
        cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device="cuda")
        T = int(cu[-1])
        q = torch.randn(1, T, H, hd, device="cuda", generator=g, dtype=torch.bfloat16)
        k = torch.randn(1, T, K, hd, device="cuda", generator=g, dtype=torch.bfloat16)
        v = torch.randn(1, T, K, hd, device="cuda", generator=g, dtype=torch.bfloat16)
        dy = torch.randn(1, T, H, hd, device="cuda", generator=g, dtype=torch.bfloat16)
        leaves = [t.double().requires_grad_() for t in (q, k, v)]
        ref = _reference_attention(*leaves, cu)
        ref.backward(dy.double())
        ref_grads = [t.grad for t in leaves]
        for backend in ["flash_attn", "torch_varlen", "sdpa_loop"]:
            name = f"{backend} H{H}/K{K} hd{hd}"
            if backend == "flash_attn" and M.flash_attn_varlen_func is None:
                ctx.check(name, True, "flash-attn not installed", skip=True)
                continue
            if backend == "torch_varlen" and M.varlen_attn is None:
                ctx.check(name, True, "torch has no varlen_attn", skip=True)
                continue
            xs = [t.clone().requires_grad_() for t in (q, k, v)]
            y = attention(*xs, cu, max(lengths), backend=backend)
            y.backward(dy)
            err = (y.double() - ref).abs().max().item() / ref.abs().max().item()
            gerr = max((x.grad.double() - r).abs().max().item() / r.abs().max().item() for x, r in zip(xs, ref_grads))
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(5):
                attention(*xs, cu, max(lengths), backend=backend).backward(dy)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / 5 * 1e3
            ctx.check(name, err < 2e-2 and gerr < 5e-2, f"max rel err out {err:.1e}, grads {gerr:.1e}; fwd+bwd {ms:.2f} ms "
                      f"({T} tokens)", err=err, grad_err=gerr, ms=ms)
    # the crash of issue 12: under bf16 autocast q/k arrive in fp32 and v in bf16; 'auto' must still work
    from vc2.config import PRESETS
    from vc2.model import Transformer, packed_position_ids
    model = Transformer(PRESETS["debug"]).init_weights(seed=0).cuda()
    ids = torch.randint(0, 512, (1, 300), device="cuda")
    cu = torch.tensor([0, 100, 300], dtype=torch.int32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, position_ids=packed_position_ids(cu), cu_seqlens=cu, max_seqlen=200, labels=ids)
    loss.backward()
    chosen = M.packed_backend("auto", True, torch.bfloat16)
    ctx.check("autocast fp32 q/k + bf16 v", math.isfinite(loss.item()), f"auto -> {chosen}, loss {loss.item():.3f}")
    model.set_attention_backend("auto")
    with torch.no_grad():
        y = model(ids, position_ids=packed_position_ids(cu), cu_seqlens=cu, max_seqlen=200)
    ctx.check("fp32 weights, no autocast", bool(torch.isfinite(y).all()), f"auto -> {M.packed_backend('auto', True, None)}")


@section("cross_entropy")
def cross_entropy(ctx):
    """chunked_cross_entropy at 16K tokens x 151,936 vocab: value vs full fp32 logits, and its peak memory."""
    from vc2.model import chunked_cross_entropy
    g = torch.Generator(device="cuda").manual_seed(1)
    N, D, V = 16384, 896, 151936
    h = (torch.randn(N, D, device="cuda", generator=g) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(V, D, device="cuda", generator=g) * 0.02).bfloat16().requires_grad_()
    y = torch.randint(0, V, (N,), device="cuda", generator=g)
    y[torch.rand(N, device="cuda", generator=g) < 0.5] = -100
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = chunked_cross_entropy(h[None], w, y[None], 4096)
    loss.backward()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    gh, gw = h.grad.float(), w.grad.float()
    h.grad = w.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ref = torch.nn.functional.cross_entropy((h.float() @ w.float().T), y, ignore_index=-100, reduction="sum")
    ref.backward()
    full_peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    rel = abs(loss.item() - ref.item()) / abs(ref.item())
    gerr = (gh - h.grad.float()).abs().max().item() / h.grad.float().abs().max().item()
    ctx.check("value and grads", rel < 1e-3 and gerr < 5e-2, f"loss rel err {rel:.1e}, grad rel err {gerr:.1e}")
    ctx.check("peak memory", peak < 0.5 * full_peak, f"chunked {peak:.2f} GiB vs full fp32 logits {full_peak:.2f} GiB "
              f"(loss + backward, {N} tokens x {V})", chunked_gib=peak, full_gib=full_peak)


@section("load_meta")
def load_meta(ctx):
    """The trainer's loader: meta -> fully_shard -> to_empty -> load_weights on a one-process NCCL group."""
    import argparse as ap
    import torch.distributed as dist
    import vc2
    from vc2.train import build_model
    ckpt = ctx.checkpoint()
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        args = ap.Namespace(activation_checkpointing=True, compile=False, dtype="bfloat16", cpu_offload=False)
        model = build_model(ckpt, ctx.device, args, fsdp=True)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        size = 4 * model.config.n_params / 2**30
        ref = vc2.load_model(ckpt, dtype=torch.float32)
        same = all(torch.equal(p.full_tensor().cpu(), q) for p, q in zip(model.parameters(), ref.parameters()))
        ctx.check("parameters equal load_model", same, f"{sum(1 for _ in ref.parameters())} tensors, exact")
        ctx.check("peak GPU memory of the load", peak < 1.15 * size, f"{peak:.2f} GiB for {size:.2f} GiB of fp32 parameters")
        del model, ref
    finally:
        dist.destroy_process_group()
    torch.cuda.empty_cache()
    recs, detail = run_train(ctx, "dry_run", "--preset", "viscoder2", "--dry-run", timeout=180)
    res = json.loads((ctx.out / "dry_run" / "dry_run.json").read_text()) if recs is not None else None
    if res is None:
        ctx.check("run_train --dry-run", False, detail)
        return
    plan = sum(res["plan_gib"].values())
    r0 = res["ranks"][0]
    ctx.check("run_train --dry-run", True, f"plan {plan:.1f} GiB at 16K; measured peak {r0.get('peak_allocated_gb', 0):.2f} GiB "
              f"allocated after loading", plan_gib=res["plan_gib"], peaks=res["ranks"])


@section("train_single")
def train_single(ctx):
    """One process, no FSDP: bf16 autocast over fp32 weights (the path that used to crash in attention)."""
    recs, detail = run_train(ctx, "single", "--preset", "viscoder2", "--max-length", "2048", "--global-batch", "2",
                             "--max-steps", "6", "--lr", "5e-4", "--no-compile")
    if recs is None:
        ctx.check("0.5B, 6 steps, bf16 autocast", False, detail)
        return
    ctx.check("0.5B, 6 steps, bf16 autocast", falling(recs), f"loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f} ({detail})",
              losses=[r["loss"] for r in recs])


@section("train_fsdp")
def train_fsdp(ctx):
    """The FSDP2 path on one GPU (a one-process group): bf16 parameters; then with CPU offload."""
    recs, detail = run_train(ctx, "fsdp", "--preset", "viscoder2", "--max-length", "2048", "--global-batch", "2",
                             "--max-steps", "6", "--lr", "5e-4", "--no-compile", "--fsdp")
    if recs is None:
        ctx.check("0.5B, 6 steps, --fsdp", False, detail)
    else:
        ctx.check("0.5B, 6 steps, --fsdp", falling(recs), f"loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f} ({detail})",
                  losses=[r["loss"] for r in recs])
    recs, detail = run_train(ctx, "offload", "--preset", "viscoder2", "--max-length", "2048", "--global-batch", "2",
                             "--max-steps", "3", "--lr", "5e-4", "--no-compile", "--cpu-offload")
    if recs is None:
        ctx.check("0.5B, 3 steps, --cpu-offload", False, detail)
    else:
        ctx.check("0.5B, 3 steps, --cpu-offload", falling(recs), f"loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f}, "
                  f"peak {recs[-1].get('peak_allocated_gb', 0):.2f} GiB on the GPU ({detail})")


@section("mfu_16k")
def mfu_16k(ctx):
    """20 steps of one 16K-token row: torch.compile per block, activation checkpointing, bf16; MFU, memory."""
    recs, detail = run_train(ctx, "mfu16k", "--preset", "viscoder2", "--max-length", "16384", "--global-batch", "1",
                             "--max-steps", "20", "--lr", "1e-4", timeout=420)
    if recs is None:
        ctx.check("0.5B, 20 steps at 16K", False, detail)
        return
    steady = recs[5:] or recs
    mfu = statistics.median(r.get("mfu", float("nan")) for r in steady)
    tps = statistics.median(r["tok_per_s"] for r in steady)
    mem = max(r.get("peak_allocated_gb", 0) for r in recs)
    ok = all(math.isfinite(r["loss"]) for r in recs) and mfu > 0
    ctx.check("0.5B, 20 steps at 16K", ok, f"{tps:,.0f} tok/s, MFU {mfu:.1%} (median of steps 6-20), peak {mem:.1f} GiB, "
              f"first step {recs[0]['step_s']:.0f} s incl. compile ({detail})", mfu=mfu, tok_per_s=tps, peak_gib=mem)


@section("kernels")
def kernels_section(ctx):
    """bench/bench_kernels.py: each Triton kernel vs PyTorch and torch.compile, the fused cross-entropy at
    16K x 151,936, and a 0.5B training step with kernels on vs off (its own JSON in the out dir)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_kernels
    res = bench_kernels.run(out_dir=ctx.out, skip_train=False)
    if "skipped" in res:
        ctx.check("Triton kernels", True, res["skipped"], skip=True)
        return
    for name, r in res.get("kernels", {}).items():  # per kernel: times, bandwidth, memory, error vs reference
        ctx.check(f"kernel {name}", r.get("ok", True), json.dumps(r, default=str)[:150], figures=r)
    if "train" in res:
        ctx.check("0.5B step, kernels on vs off", res["train"].get("ok", True),
                  json.dumps(res["train"], default=str)[:150], figures=res["train"])


@section("generate")
def generate(ctx):
    """vc2.generate decode tok/s vs transformers generate(), 0.5B shape, bf16, greedy, same weights."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import transformers  # noqa: F401
    except ImportError:
        ctx.check("decode vs transformers", True, "transformers not installed", skip=True)
        return
    import tempfile
    from bench_generate import build, time_hf, time_ours
    with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
        ours, hf, _ = build("qwen2.5-coder-0.5b", torch.bfloat16, "cuda", tmp)
        for B in (1, 8):
            prompts = torch.randint(0, 150000, (B, 64), generator=torch.Generator().manual_seed(B)).tolist()
            n = 64
            time_ours(ours, prompts, 2, "cuda"), time_hf(hf, prompts, 2, "cuda")
            t = {k: [] for k in ("o1", "on", "h1", "hn")}
            for _ in range(2):
                t["o1"].append(time_ours(ours, prompts, 1, "cuda"))
                t["h1"].append(time_hf(hf, prompts, 1, "cuda"))
                t["on"].append(time_ours(ours, prompts, n, "cuda"))
                t["hn"].append(time_hf(hf, prompts, n, "cuda"))
            m = {k: statistics.median(v) for k, v in t.items()}
            ours_tps = B * (n - 1) / max(m["on"] - m["o1"], 1e-9)
            hf_tps = B * (n - 1) / max(m["hn"] - m["h1"], 1e-9)
            ctx.check(f"decode batch {B}", True, f"vc2 {ours_tps:,.0f} tok/s, transformers {hf_tps:,.0f} tok/s, "
                      f"ratio {ours_tps / hf_tps:.2f}x", vc2_tps=ours_tps, hf_tps=hf_tps)


# --- main -----------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-check", help="where the JSON and scratch files go (default: %(default)s)")
    p.add_argument("--only", default=None, help="comma-separated sections to run (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="print the sections and exit")
    args = p.parse_args()
    if args.list:
        for name, fn in SECTIONS.items():
            print(f"{name:<14} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    names = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        msg = f"SKIP: no CUDA device (torch {torch.__version__}); nothing to check on this machine"
        print(msg)
        (out / "summary.json").write_text(json.dumps({"status": "SKIP", "detail": msg}))
        return 0
    ctx = Context(out)
    t0 = time.time()
    for name in names:
        ctx.section = name
        t = time.time()
        try:
            SECTIONS[name](ctx)
        except Exception as e:  # one FAIL line; the next section still runs
            (out / f"{name}.traceback.txt").write_text(traceback.format_exc())
            ctx.check("section", False, f"{type(e).__name__}: {e}"[:300])
        ctx.rows.append({"section": name, "check": "(time)", "status": "", "detail": f"{time.time() - t:.0f} s"})
        (out / "summary.json").write_text(json.dumps(ctx.rows, indent=1, default=str))
        torch.cuda.empty_cache()
    rows = [r for r in ctx.rows if r["check"] != "(time)"]
    print(f"\n{'status':<6} {'section':<14} {'check':<34} detail")
    for r in rows:
        print(f"{r['status']:<6} {r['section']:<14} {r['check']:<34} {r['detail']}")
    n_fail = sum(r["status"] == "FAIL" for r in rows)
    print(f"\n{len(rows)} checks: {sum(r['status'] == 'PASS' for r in rows)} PASS, {n_fail} FAIL, "
          f"{sum(r['status'] == 'SKIP' for r in rows)} SKIP in {time.time() - t0:.0f} s; JSON in {out}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
