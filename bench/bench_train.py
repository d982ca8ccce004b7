"""Training throughput: vc2 (packed rows, per-document attention, chunked CE) vs transformers'
Qwen2ForCausalLM in a plain PyTorch loop (padded batches, its SDPA attention), same model shape, same
conversations, same optimizer, measured in one run (each side in its own subprocess, for peak memory).

    python bench/bench_train.py                                # debug size and the 0.5B shape with 2 layers, CPU
    python bench/bench_train.py --shapes qwen2.5-coder-0.5b:24 --device cuda --dtype bfloat16 --max-length 16384

Reports real (non-padding) tokens per second and peak memory (RSS on CPU, allocated on CUDA) and the ratio.
On CUDA it also reports vc2's MFU: model FLOPs with attention counted per document (vc2.train.train_flops)
over the GPU's dense bf16 peak (looked up by device name, or --peak-tflops).
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

import torch

SHAPES_HELP = "PRESET[:LAYERS] (comma-separated): a vc2 preset, optionally with fewer layers"


def make_docs(n_docs, max_len, vocab, seed=0):
    """Synthetic conversations: lengths spread like SFT data (many short, some long); the second half
    of each is 'assistant' (supervised), as labels already shifted."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        n = min(max_len, int(rng.lognormvariate(5.8, 0.7)) + 16)
        ids = [rng.randrange(vocab) for _ in range(n)]
        labels = [-100] * (n // 2) + ids[n // 2 + 1:] + [-100]
        docs.append((ids, labels))
    return docs


def build_config(spec):
    from vc2.config import PRESETS
    name, _, layers = spec.partition(":")
    cfg = PRESETS[name]
    if layers:
        from dataclasses import replace
        cfg = replace(cfg, num_hidden_layers=int(layers))
    return cfg


def worker(side, spec, args):
    """One side of the comparison; prints a JSON line with tokens/s and peak memory."""
    from vc2.data import pack
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cfg = build_config(spec)
    docs = make_docs(args.docs, args.max_length, cfg.vocab_size)
    if side == "vc2":
        from vc2.model import Transformer
        model = Transformer(cfg).init_weights(seed=0).to(device)
        rows, eff = pack(docs, args.max_length, seed=0)
        batches = [[r] for r in rows]
    else:
        import transformers
        hf_cfg = cfg.to_hf()
        hf_cfg["torch_dtype"] = "float32"
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_cfg),
                                                              attn_implementation="sdpa").to(device)
        # padded batches with the same token budget per step as a packed row: conversations in data
        # order, as many as fit in B x longest <= max_length (padding included), at most --hf-batch
        batches, cur = [], []
        for d in docs:
            longest = max([len(d[0])] + [len(c[0]) for c in cur])
            if cur and ((len(cur) + 1) * longest > args.max_length or len(cur) == args.hf_batch):
                batches.append(cur)
                cur = []
            cur.append(d)
        if cur:
            batches.append(cur)
    model.train()
    from vc2.train import peak_flops, train_flops
    flops = [0.0]  # model FLOPs of the timed steps (vc2 side): per-document attention, head on supervised tokens
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(batch):
        if side == "vc2":
            n_sup = sum(int((r["labels"] != -100).sum()) for r in batch)
            for r in batch:
                with autocast:
                    loss = model(r["input_ids"][None].to(device), position_ids=r["position_ids"][None].to(device),
                                 cu_seqlens=r["cu_seqlens"].to(device), max_seqlen=r["max_seqlen"],
                                 labels=r["labels"][None].to(device))
                (loss / n_sup).backward()
            real = sum(len(r["input_ids"]) for r in batch)
            flops[0] += sum(train_flops(cfg, len(r["input_ids"]), int((r["labels"] != -100).sum()),
                                        int((r["doc_lengths"] ** 2).sum())) for r in batch)
        else:
            L = max(len(d[0]) for d in batch)
            ids = torch.tensor([d[0] + [0] * (L - len(d[0])) for d in batch], device=device)
            att = torch.tensor([[1] * len(d[0]) + [0] * (L - len(d[0])) for d in batch], device=device)
            # HF shifts labels itself: give it unshifted targets (token t supervises position t-1)
            lab = torch.tensor([[-100] + d[1][:-1] + [-100] * (L - len(d[0]))
                                for d in batch], device=device)
            with autocast:
                out = model(input_ids=ids, attention_mask=att, labels=lab)
            out.loss.backward()
            real = sum(len(d[0]) for d in batch)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return real

    for b in batches[:args.warmup]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, t0, flops[0] = 0, time.perf_counter(), 0.0
    for b in batches[args.warmup:args.warmup + args.steps]:
        tokens += step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    mem = (torch.cuda.max_memory_allocated() if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    res = {"side": side, "shape": spec, "tok_per_s": tokens / dt, "peak_gb": mem, "tokens": tokens}
    peak = peak_flops(device, args.peak_tflops)
    if peak and side == "vc2":
        res["mfu"] = flops[0] / dt / peak
    print(json.dumps(res))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="debug,qwen2.5-coder-0.5b:2", help=SHAPES_HELP + " (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=2048, help="packed row length / padded token budget (default: %(default)s)")
    p.add_argument("--hf-batch", type=int, default=8, help="max conversations per padded HF batch (default: %(default)s)")
    p.add_argument("--docs", type=int, default=160, help="synthetic conversations (default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="default: %(default)s")
    p.add_argument("--device", default="cpu", help="default: %(default)s")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak for MFU (default: looked up from the CUDA device name)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        side, spec = args.worker.split("@")
        return worker(side, spec, args)

    base = [a for a in sys.argv[1:]]
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, max_length {args.max_length}")
    lines = []
    for spec in args.shapes.split(","):
        res = {}
        for side in ("hf", "vc2"):
            cmd = [sys.executable, __file__, *base, "--worker", f"{side}@{spec}"]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if out.returncode != 0:
                sys.exit(f"{side} {spec} failed:\n{out.stderr[-3000:]}")
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
        o, h = res["vc2"], res["hf"]
        line = (f"{spec:<26} | tok/s vc2 {o['tok_per_s']:>9.0f}  HF {h['tok_per_s']:>9.0f}  ratio {o['tok_per_s'] / h['tok_per_s']:.2f}x"
                f" | peak GB vc2 {o['peak_gb']:.2f}  HF {h['peak_gb']:.2f}" + (f" | MFU {o['mfu']:.1%}" if "mfu" in o else ""))
        print(line, flush=True)
        lines.append(line)


if __name__ == "__main__":
    main()
