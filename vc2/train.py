"""Supervised fine-tuning loop: packed multi-turn conversations, FSDP2, sharded checkpoints, HF export.

    python run_train.py                                   # one process: embedded SmolLM2 + shipped sample data, CPU
    torchrun --nproc_per_node 2 run_train.py              # the same on 2 processes (FSDP2 over gloo on CPU)
    torchrun --nproc_per_node 8 run_train.py --preset viscoder2 --model Qwen2.5-Coder-7B-Instruct \\
        --data VisCode-Multi-679K.jsonl --out runs/viscoder2-7b    # the published recipe, 8 GPUs
    python run_train.py --resume --out runs/demo          # continue from the newest complete checkpoint

The loop is one plain function, top to bottom. Parallelism is applied here, from outside the model:
activation checkpointing per block, then FSDP2 `fully_shard` per block and once on the root (the root
group holds the embedding, the tied head and the final norm together, as FSDP2 requires for tied weights).

Loss normalisation: every optimizer step sums token losses over its micro-batches and divides by the
number of supervised tokens of the whole step on *all* ranks (all-reduced before the step starts), never
a mean of per-micro-batch means. FSDP averages gradients over ranks, so each rank's loss is scaled by
world_size to turn that average back into the global sum (gloo has no PREMUL_SUM to do it in the reduce).
"""
import argparse
import json
import math
import os
import random
import shutil
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import vc2
from vc2.data import IGNORE, load_conversations, pack, shard, tokenize
from vc2.kernels import dispatch as kernels

DEFAULT_DATA = Path(__file__).parent / "assets" / "train_sample.jsonl"

PRESETS = {
    # the published VisCoder2 recipe (ms-swift full fine-tune): see README
    "viscoder2": dict(lr=5e-6, warmup_ratio=0.05, weight_decay=0.05, epochs=3, max_length=16384, dtype="bfloat16",
                      grad_accum=1, activation_checkpointing=True),
    # a short CPU run that finishes in minutes on 2 cores with the embedded 135M model
    "cpu-demo": dict(lr=2e-5, warmup_ratio=0.1, weight_decay=0.05, epochs=1, max_length=1024, dtype="float32",
                     grad_accum=2, max_steps=8, activation_checkpointing=False),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="HF checkpoint dir or embedded name to fine-tune (default: %(default)s)")
    p.add_argument("--data", nargs="+", default=[str(DEFAULT_DATA)], help=".jsonl/.parquet files or dirs (default: the shipped sample)")
    p.add_argument("--out", default="runs/sft", help="run dir: checkpoints/, hf/ exports, log.jsonl (default: %(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named recipe; explicit flags override it (default: viscoder2 on GPU, cpu-demo on CPU)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-ratio", type=float, help="fraction of steps of linear warmup before the cosine decay")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (not applied to norms and biases)")
    p.add_argument("--epochs", type=int, help="passes over the data")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (schedule length too)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="leave after this many steps of this invocation (checkpointing first), keeping the full "
                        "schedule: for time-limited jobs, continued later with --resume (default: off)")
    p.add_argument("--max-length", type=int, help="packed row length in tokens; longer conversations are dropped")
    p.add_argument("--grad-accum", type=int, help="packed rows per rank per optimizer step")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (bf16: FSDP mixed precision, fp32 master weights)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each block in backward to save activation memory")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm, 0 = off (default: %(default)s)")
    p.add_argument("--loss-chunk", type=int, default=4096, help="tokens per cross-entropy chunk (default: %(default)s)")
    p.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=None,
                   help="Triton kernels for RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy "
                        "(default: on when CUDA and Triton are available; --kernels on CPU needs TRITON_INTERPRET=1)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps, 0 = only at epoch ends (default)")
    p.add_argument("--keep", type=int, default=2, help="complete checkpoints kept (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--no-export", action="store_true", help="skip the HF-format export at epoch ends and the end")
    p.add_argument("--seed", type=int, default=0, help="data order and init seed (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed data row instead of skipping it")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset or ("viscoder2" if device == "cuda" else "cpu-demo")]
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for k, v in dict(max_steps=0).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.device = device
    return args


def lr_at(step, total, peak, warmup):
    """Linear warmup to `peak`, then cosine to 0 over the remaining steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def flops_per_token(cfg, seq_len):
    """Training FLOPs per token: 6 x matmul params (the embedding lookup is not a matmul) + causal attention."""
    matmul_params = cfg.n_params - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)
    attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len  # QK^T and AV, causal half
    return 6 * matmul_params + attn


def apply_activation_checkpointing(model):
    """Recompute each block's forward in backward. Patches `forward` so parameter names stay unchanged."""
    from torch.utils.checkpoint import checkpoint
    for block in model.layers:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)


def complete_checkpoints(ckpt_dir: Path):
    """Checkpoint dirs whose save finished (the rename from .tmp is the commit point), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(d for d in ckpt_dir.iterdir() if d.is_dir() and d.name.startswith("step_") and (d / "meta.json").is_file())


def train(args):
    # --- distributed setup: torchrun sets RANK/WORLD_SIZE; plain python is one process, no FSDP
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0)) if args.device == "cuda" else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    master = rank == 0
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    def log(msg):
        if master:
            tqdm.write(msg)

    # --- model and tokenizer (fp32 master weights; bf16 compute via FSDP mixed precision or autocast)
    model_dir = vc2.checkpoint.resolve_model_path(args.model)
    tok = vc2.load_tokenizer(model_dir)
    model = vc2.load_model(model_dir, dtype=torch.float32, device=device)
    model.train()
    cfg = model.config
    if args.kernels is not None:
        kernels.set_mode("on" if args.kernels else "off")
    log(f"kernels: {'Triton' if kernels.use(torch.empty(0, device=device)) else 'PyTorch'} "
        f"(mode {kernels.get_mode()}, Triton {'found' if kernels.AVAILABLE else 'not installed'})")
    compute_dtype = getattr(torch, args.dtype)
    if args.activation_checkpointing:
        apply_activation_checkpointing(model)
    if distributed:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)  # root group: embedding + tied head + final norm together
    # one process: no FSDP, so bf16 compute comes from autocast (fp32 master weights either way)
    autocast = torch.autocast(device.type, dtype=compute_dtype,
                              enabled=not distributed and compute_dtype != torch.float32)

    # --- data: read, tokenize, and pack; the order of an epoch is a function of (seed, epoch)
    rows, report = load_conversations(args.data, strict=args.strict)
    log(f"data: {report}")
    docs, dropped = tokenize(rows, tok, args.max_length)
    if not docs:
        raise ValueError(f"{args.data}: no conversation fits max_length={args.max_length}")
    log(f"data: {len(docs)} conversations tokenized, {dropped} longer than {args.max_length} dropped")

    def epoch_rows(epoch):
        packed, eff = pack(docs, args.max_length, seed=args.seed + epoch)
        return shard(packed, rank, world), eff, len(packed)

    mine, efficiency, n_packed = epoch_rows(0)
    if not mine:
        raise ValueError(f"only {n_packed} packed rows for {world} ranks: use more data or a smaller --max-length")
    steps_per_epoch = math.ceil(len(mine) / args.grad_accum)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    log(f"data: {n_packed} packed rows of <= {args.max_length} tokens, packing efficiency {efficiency:.1%}, "
        f"{n_packed % world} left over for equal shards; {steps_per_epoch} steps/epoch, {total_steps} steps total")

    # --- optimizer: AdamW, no decay on norms and biases; the learning rate is set by hand every step
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    warmup = max(1, round(args.warmup_ratio * total_steps))

    # --- resume: model, optimizer, step, RNG and data position from the newest complete checkpoint
    step = 0
    if args.resume and complete_checkpoints(ckpt_dir):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        last = complete_checkpoints(ckpt_dir)[-1]
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=str(last / "dcp"))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        meta = json.loads((last / "meta.json").read_text())
        step = meta["step"]
        rng = torch.load(last / f"rng_rank{rank}.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        log(f"resumed from {last} at step {step}")
    elif args.resume:
        log(f"--resume: no complete checkpoint in {ckpt_dir}, starting from scratch")

    def save_checkpoint(step):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
        final = ckpt_dir / f"step_{step:07d}"
        tmp = ckpt_dir / f"step_{step:07d}.tmp"
        if master:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if distributed:
            dist.barrier()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / f"rng_rank{rank}.pt")
        if distributed:
            dist.barrier()
        if master:  # meta.json last, then the rename: a crash before it leaves only a .tmp dir, never a bad step_
            (tmp / "meta.json").write_text(json.dumps({"step": step, "world_size": world, "args": vars(args)}, default=str))
            os.replace(tmp, final)
            for old in complete_checkpoints(ckpt_dir)[:-args.keep]:
                shutil.rmtree(old)
        if distributed:
            dist.barrier()
        log(f"checkpoint: {final}")

    def export_hf(name):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if master:
            vc2.save_model(model, out / "hf" / name, dtype=torch.bfloat16, state_dict=sd, tokenizer_dir=model_dir)
            log(f"export: {out / 'hf' / name}")
        if distributed:
            dist.barrier()

    # --- the loop
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.jsonl", "a") if master else None
    flops_tok = flops_per_token(cfg, args.max_length)
    peak_flops = 989e12 if device.type == "cuda" else None  # H100 SXM dense bf16; MFU is logged on GPU only
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not master, unit="step")
    epoch_cached = {0: mine}
    start_step = step
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch not in epoch_cached:
            epoch_cached = {epoch: epoch_rows(epoch)[0]}
        batch = epoch_cached[epoch][in_epoch * args.grad_accum:(in_epoch + 1) * args.grad_accum]
        # the global count of supervised tokens for this step, over micro-batches and ranks
        n_sup = torch.tensor(float(sum(int((r["labels"] != IGNORE).sum()) for r in batch)), device=device)
        if distributed:
            dist.all_reduce(n_sup)
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, args.lr, warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum, n_tokens = 0.0, 0
        for row in batch:
            ids = row["input_ids"][None].to(device)
            with autocast:
                loss = model(ids, position_ids=row["position_ids"][None].to(device), cu_seqlens=row["cu_seqlens"].to(device),
                             labels=row["labels"][None].to(device), loss_chunk=args.loss_chunk)
            (loss * world / n_sup.clamp(min=1)).backward()
            loss_sum += loss.item()
            n_tokens += ids.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1

        # --- logging: the global mean loss of the step, throughput, memory
        stats = torch.tensor([loss_sum, float(n_tokens)], device=device)
        if distributed:
            dist.all_reduce(stats)
        dt = time.perf_counter() - t0
        rec = {"step": step, "epoch": epoch, "loss": stats[0].item() / max(1.0, n_sup.item()), "lr": lr,
               "grad_norm": float(grad_norm), "tokens": int(stats[1].item()), "tok_per_s": stats[1].item() / dt,
               "step_s": dt}
        if device.type == "cuda":
            rec["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            rec["mfu"] = rec["tok_per_s"] / world * flops_tok / peak_flops
        else:
            import resource
            rec["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if master:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{rec['tok_per_s']:.0f}")
            bar.update(1)

        # --- checkpoints and exports
        end_of_epoch = step % steps_per_epoch == 0
        stopping = args.stop_after and step - start_step >= args.stop_after
        if (args.save_every and step % args.save_every == 0) or end_of_epoch or step == total_steps or stopping:
            save_checkpoint(step)
        if not args.no_export and (end_of_epoch or step == total_steps):
            export_hf("final" if step == total_steps else f"epoch_{epoch + 1}")
        if stopping:
            log(f"--stop-after {args.stop_after}: leaving at step {step} of {total_steps}; continue with --resume")
            break
    bar.close()
    if logf:
        logf.close()
    if distributed:
        dist.destroy_process_group()
    return out


def main(argv=None):
    args = parse_args(argv)
    train(args)


if __name__ == "__main__":
    main()
