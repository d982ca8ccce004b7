"""Supervised fine-tuning loop: packed multi-turn conversations, FSDP2, sharded checkpoints, HF export.

    python run_train.py                                   # one process: embedded SmolLM2 + shipped sample data, CPU
    torchrun --nproc_per_node 2 run_train.py              # the same on 2 processes (FSDP2 over gloo on CPU)
    torchrun --nproc_per_node 8 run_train.py --preset viscoder2 --model Qwen2.5-Coder-7B-Instruct \\
        --data VisCode-Multi-679K.jsonl --out runs/viscoder2-7b    # the published recipe, 8 GPUs
    torchrun --nproc_per_node 8 run_train.py --preset viscoder2 --model Qwen2.5-Coder-32B-Instruct --dry-run
                                                          # load as training would, print the memory plan, exit
    python run_train.py --resume --out runs/demo          # continue from the newest complete checkpoint

The loop reads top to bottom: train() -> train_step() -> forward_backward_step(). Parallelism is applied
here, from outside the model, in torchtitan's order: the model is built on the meta device (no memory),
then activation checkpointing per block, torch.compile per block, FSDP2 `fully_shard` per block and once
on the root (the root group holds the embedding, the tied head and the final norm together, as FSDP2
requires for tied weights); only then is each rank's shard allocated and filled from the HF safetensors,
each rank reading only its own rows (vc2/checkpoint.py load_weights): no rank ever holds the full model.

The recipe does not depend on the number of ranks, so a run resumes on any number of them (DCP reshards
the checkpoint): a step is --global-batch packed rows, taken in a global order that is a function of
(seed, epoch); rank r of W runs rows r, r+W, ... of each step. A step with fewer rows than ranks (the
last of an epoch) gives the ranks without a row a zero-weight dummy row, so FSDP's collectives still
match and no row is dropped.

Loss normalisation: every optimizer step sums token losses over its rows and divides by the number of
supervised tokens of the whole step on *all* ranks (known in advance from the data cache, the same on
every rank), never a mean of per-row means. FSDP averages gradients over ranks, so each rank's loss is
scaled by world_size to turn that average back into the global sum (gloo has no PREMUL_SUM to do it in
the reduce).

Waiting: a rank that waits for another's long piece of work (the data cache written by local rank 0,
rank 0's HF export) waits on the file system, not in a collective, so NCCL's 10-minute timeout cannot
fire; ranks of different nodes meet after data preparation in a gloo barrier with its own timeout
(--startup-timeout), since a node with a cold cache may tokenize for much longer than a warm one.
"""
import argparse
import json
import math
import os
import random
import resource
import shutil
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import vc2
from vc2.config import ModelConfig
from vc2.data import epoch_order, pack_lengths, prepare_cache
from vc2.model import Transformer
from vc2.kernels import dispatch as kernels

DEFAULT_DATA = Path(__file__).parent / "assets" / "train_sample.jsonl"

PRESETS = {
    # the published VisCoder2 recipe (ms-swift full fine-tune): see README. 8 rows of 16,384 tokens per
    # step is one row per GPU on 8 GPUs.
    "viscoder2": dict(lr=5e-6, warmup_ratio=0.05, weight_decay=0.05, epochs=3, max_length=16384, dtype="bfloat16",
                      global_batch=8, activation_checkpointing=True),
    # a short CPU run that finishes in minutes on 2 cores with the embedded 135M model
    "cpu-demo": dict(lr=2e-5, warmup_ratio=0.1, weight_decay=0.05, epochs=1, max_length=1024, dtype="float32",
                     global_batch=4, max_steps=8, activation_checkpointing=False),
}

# Dense bf16 peak per GPU, TFLOP/s, from the vendor data sheets (SXM/HGX parts unless named); matched as
# substrings of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = [("GH200", 989), ("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989),
                    ("H800", 989), ("B200", 2250), ("B100", 1750), ("A100", 312), ("A800", 312), ("L40S", 362),
                    ("L40", 181), ("A6000", 155), ("L4", 121), ("A10", 125)]


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
    p.add_argument("--global-batch", type=int,
                   help="packed rows per optimizer step over all ranks (a multiple of the number of ranks; "
                        "each rank accumulates global-batch / ranks rows)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (bf16: FSDP mixed precision, fp32 master weights)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each block in backward to save activation memory")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each block (default: on for CUDA, off on CPU, where compiling costs more "
                        "than a short run gains)")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="shard with FSDP2 (default: when there is more than one process; --fsdp in one process "
                        "runs the sharded code path on a one-rank group)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep parameters, gradients and optimizer state in host memory (FSDP2 CPUOffloadPolicy; "
                        "the optimizer step runs on the CPU): for models whose sharded state does not fit the GPUs")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm, 0 = off (default: %(default)s)")
    p.add_argument("--loss-chunk", type=int, default=4096, help="tokens per cross-entropy chunk (default: %(default)s)")
    p.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=None,
                   help="Triton kernels for RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy "
                        "(default: on when CUDA and Triton are available; --kernels on CPU needs TRITON_INTERPRET=1)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps, 0 = only at epoch ends (default)")
    p.add_argument("--keep", type=int, default=2, help="complete checkpoints kept (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out "
                                                         "(on any number of ranks)")
    p.add_argument("--no-export", action="store_true", help="skip the HF-format export at epoch ends and the end")
    p.add_argument("--dry-run", action="store_true",
                   help="prepare the data and load the model exactly as training would, print the per-GPU memory "
                        "plan and every rank's measured peak memory (also OUT/dry_run.json), and exit")
    p.add_argument("--data-cache", default=None,
                   help="directory of tokenized-data caches (default: $VC2_DATA_CACHE or ~/.cache/vc2/data); "
                        "a cache is keyed by the data files, tokenizer, chat template and max length")
    p.add_argument("--data-workers", type=int, default=None,
                   help="processes that tokenize a cold cache (default: every core local rank 0 may use)")
    p.add_argument("--startup-timeout", type=float, default=6 * 3600,
                   help="seconds a rank waits for another's data cache or HF export (default: %(default)s)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak for MFU (default: looked up from the device name)")
    p.add_argument("--seed", type=int, default=0, help="data order and init seed (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed data row instead of skipping it")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset or ("viscoder2" if device == "cuda" else "cpu-demo")]
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for k, v in dict(max_steps=0, compile=device == "cuda").items():
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


def train_flops(cfg, n_tokens: int, n_supervised: int, sum_sq_doc_lengths: int) -> float:
    """FLOPs of one forward+backward over packed rows (3x the forward's 2 FLOPs per multiply-add).

    Matmuls: 6 x parameters per token, except the head, which vc2 runs only for supervised tokens
    (chunked_cross_entropy); the embedding lookup is no matmul. Attention: QK^T and AV, causal, inside each
    document: 6 x layers x heads x head_dim x n^2 for a document of n tokens, so sum(n_i^2) over the
    documents, not tokens x max_length (which overstated MFU x1.2 for 7B at 16K, x1.67 for 0.5B).
    """
    head = cfg.vocab_size * cfg.hidden_size
    body = cfg.n_params - head * (1 if cfg.tie_word_embeddings else 2)  # minus the embedding (and an untied head)
    attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * sum_sq_doc_lengths
    return 6 * body * n_tokens + 6 * head * n_supervised + attn


def peak_flops(device, override_tflops=None) -> float | None:
    """Dense bf16 peak FLOP/s of this GPU (None on CPU, or for an unknown GPU without --peak-tflops)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((t * 1e12 for key, t in PEAK_BF16_TFLOPS if key in name), None)


# --- parallelism, applied from outside the model ----------------------------------------------------

def apply_activation_checkpointing(model):
    """Recompute each block's forward in backward. Patches `forward` so parameter names stay unchanged."""
    from torch.utils.checkpoint import checkpoint
    for block in model.layers:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)


def apply_compile(model, fullgraph: bool = False, backend: str = "inductor"):
    """torch.compile each block's forward (after activation checkpointing, before FSDP, as torchtitan does).
    All blocks run the same code, so they share one compiled graph (plus one with dynamic shapes once row
    lengths vary); FSDP's hooks stay outside it. Patching `forward` keeps parameter names unchanged.
    fullgraph is off so that a third-party kernel dynamo cannot trace (an older flash-attn) costs a graph
    break, not the run; tests/test_train.py checks that vc2's own code compiles with fullgraph=True."""
    for block in model.layers:
        block.forward = torch.compile(block.forward, fullgraph=fullgraph, backend=backend)


def apply_fsdp(model, compute_dtype, cpu_offload: bool = False):
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    kw = dict(mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32))
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for block in model.layers:
        fully_shard(block, **kw)
    fully_shard(model, **kw)  # root group: embedding + tied head + final norm together


def build_model(model_dir, device, args, fsdp: bool):
    """Meta model -> activation checkpointing -> compile -> FSDP -> allocate this rank's shard -> fill it."""
    cfg = ModelConfig.from_hf(model_dir)
    with torch.device("meta"):
        model = Transformer(cfg)  # fp32 master weights; bf16 compute via FSDP mixed precision or autocast
    if args.activation_checkpointing:
        apply_activation_checkpointing(model)
    if args.compile:
        apply_compile(model)
    if fsdp:
        apply_fsdp(model, getattr(torch, args.dtype), args.cpu_offload)
    model.to_empty(device="cpu" if args.cpu_offload else device)
    if cfg.tie_word_embeddings and model.lm_head.weight is not model.embed.weight:
        model.tie_weights()  # to_empty gives a plain module one tensor per name; FSDP keeps the tie itself
    vc2.checkpoint.load_weights(model, model_dir)
    return model.train()


def memory_plan(cfg, world: int, args, fsdp: bool) -> dict[str, float]:
    """Bytes per GPU, by kind: an estimate from the shapes (measured peaks are printed beside it)."""
    shard = cfg.n_params / (world if fsdp else 1)
    cb = 2 if args.dtype == "bfloat16" else 4
    D, I, L, T = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, args.max_length
    H, K, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    root = cfg.vocab_size * D * (1 if cfg.tie_word_embeddings else 2) + D
    block = (cfg.n_params - root) / L
    plan = {"parameters (fp32)": 4 * shard, "gradients (fp32)": 4 * shard, "optimizer (AdamW, 2 x fp32)": 8 * shard}
    if args.cpu_offload:
        plan = {f"{k}, in host memory": 0.0 for k in plan}
    if fsdp:  # gathered for compute: the root group for the whole step, two blocks (current + prefetch); grads too
        plan["gathered params + grads"] = 2 * cb * (root + 2 * block)
    # one block's activations kept for backward (norms, qkv, rope'd q/k, attention out, o, MLP x3, residuals)
    per_block = T * cb * (5 * D + (H + 2 * K) * hd + (H + K) * hd + H * hd + 4 * I)
    plan["activations"] = (L * T * D * cb + per_block) if args.activation_checkpointing else L * per_block
    plan["logits chunk (fp32 + grad)"] = 2 * 4 * min(args.loss_chunk, T) * cfg.vocab_size
    return plan


def format_plan(plan, capacity, world, args, cfg) -> str:
    total = sum(plan.values())
    lines = [f"memory plan per GPU (estimate): {cfg.n_params / 1e9:.2f}B parameters, {world} rank(s), {args.dtype}, "
             f"max_length {args.max_length}, activation checkpointing {'on' if args.activation_checkpointing else 'off'}"]
    lines += [f"  {k:<34} {v / 2**30:8.2f} GiB" for k, v in plan.items()]
    lines.append(f"  {'total':<34} {total / 2**30:8.2f} GiB of {capacity / 2**30:.1f} GiB")
    if total > 0.95 * capacity:
        lines.append("  WARNING: this exceeds the device's memory; try --cpu-offload, more GPUs, or a shorter --max-length")
    return "\n".join(lines)


def device_capacity(device, local_world: int) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / local_world  # host RAM shared by the node's ranks


def peak_memory(device) -> dict:
    peak = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        peak["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
    return peak


def complete_checkpoints(ckpt_dir: Path):
    """Checkpoint dirs whose save finished (the rename from .tmp is the commit point), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(d for d in ckpt_dir.iterdir() if d.is_dir() and d.name.startswith("step_") and (d / "meta.json").is_file())


def wait_for_file(path: Path, accept, timeout: float, what: str):
    """Poll until `path` exists and accept(its text) is true (another rank's long work, e.g. an export)."""
    t0 = time.time()
    while not (path.is_file() and accept(path.read_text())):
        if time.time() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what} ({path})")
        time.sleep(0.5)


# --- one step ---------------------------------------------------------------------------------------

def to_device(row, device):
    """The row's tensors on the device; through pinned memory and without blocking on CUDA."""
    if device.type != "cuda":
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in row.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in row.items()}


DUMMY_ROW = {"input_ids": torch.zeros(2, dtype=torch.int64), "labels": torch.tensor([0, -100]),
             "position_ids": torch.arange(2), "cu_seqlens": torch.tensor([0, 2], dtype=torch.int32), "max_seqlen": 2}


def forward_backward_step(model, row, scale: float, autocast, loss_chunk: int):
    """Summed token loss of one packed row; backward of loss x scale. Returns the loss, detached, on device."""
    with autocast:
        loss = model(row["input_ids"][None], position_ids=row["position_ids"][None], cu_seqlens=row["cu_seqlens"],
                     max_seqlen=row["max_seqlen"], labels=row["labels"][None], loss_chunk=loss_chunk)
    (loss * scale).backward()
    return loss.detach()


def train_step(model, opt, rows, n_sup: int, lr: float, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over this rank's share of the step's global rows (None = a zero-weight dummy row)."""
    for g in opt.param_groups:
        g["lr"] = lr
    scale = ctx["world"] / max(1, n_sup)
    loss_sum = torch.zeros((), device=ctx["device"])
    for row in rows:
        dummy = row is None
        row = to_device(DUMMY_ROW if dummy else row, ctx["device"])
        loss = forward_backward_step(model, row, 0.0 if dummy else scale, ctx["autocast"], ctx["loss_chunk"])
        if not dummy:
            loss_sum += loss
    clip = ctx["grad_clip"] if ctx["grad_clip"] > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


# --- the run ----------------------------------------------------------------------------------------

def train(args):
    t_start = time.time()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = torch.device(args.device, local_rank if args.device == "cuda" else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    fsdp = args.fsdp if args.fsdp is not None else (world > 1 or args.cpu_offload)
    if world > 1 and not fsdp:
        raise ValueError("more than one process needs FSDP (drop --no-fsdp)")
    if args.cpu_offload and not fsdp:
        raise ValueError("--cpu-offload is FSDP2's offload policy (drop --no-fsdp)")
    master = rank == 0
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    def log(msg):
        if master:
            tqdm.write(msg)

    # --- process group: lazy NCCL init (no collective yet), and a gloo group with a long timeout for
    # the ranks of different nodes to meet after data preparation
    startup = None
    if fsdp:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "RANK" in os.environ:
            dist.init_process_group(backend)
        else:  # --fsdp in a plain `python` process: a one-rank group
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        startup = dist.new_group(backend="gloo", timeout=timedelta(seconds=args.startup_timeout))

    # --- data: tokenized once into a cache (local rank 0 writes; the others wait on the file)
    model_dir = vc2.checkpoint.resolve_model_path(args.model)
    tok = vc2.load_tokenizer(model_dir)
    if args.kernels is not None:
        kernels.set_mode("on" if args.kernels else "off")
    log(f"kernels: {'Triton' if kernels.use(torch.empty(0, device=device)) else 'PyTorch'} "
        f"(mode {kernels.get_mode()}, Triton {'found' if kernels.AVAILABLE else 'not installed'})")
    cache = prepare_cache(args.data, tok, args.max_length, root=args.data_cache, writer=local_rank == 0,
                          workers=args.data_workers, strict=args.strict, timeout=args.startup_timeout,
                          log=log if master else (lambda m: None))
    if startup is not None:
        dist.barrier(group=startup)
    log(f"data: {cache.report}")
    log(f"data: {len(cache)} conversations from {cache.path}, {cache.meta['dropped_too_long']} longer than "
        f"{args.max_length} dropped")
    if not len(cache):
        raise ValueError(f"{args.data}: no conversation fits max_length={args.max_length}")
    t_data = time.time() - t_start

    # --- model: meta -> parallelism -> each rank's shard, filled from the checkpoint
    model = build_model(model_dir, device, args, fsdp)
    cfg = model.config
    plan = memory_plan(cfg, world, args, fsdp)
    log(format_plan(plan, device_capacity(device, local_world), world, args, cfg))
    compute_dtype = getattr(torch, args.dtype)
    # one process without FSDP: bf16 compute comes from autocast (fp32 master weights either way)
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=not fsdp and compute_dtype != torch.float32)
    if args.dry_run:
        mine = {"rank": rank, **peak_memory(device)}
        peaks = [None] * world
        if startup is not None:
            dist.all_gather_object(peaks, mine, group=startup)
        else:
            peaks = [mine]
        for p in peaks:
            log("dry-run: rank {rank} measured peak: ".format(**p) + ", ".join(
                f"{k.removeprefix('peak_').removesuffix('_gb')} {v:.2f} GiB" for k, v in p.items() if k != "rank"))
        if master:
            out.mkdir(parents=True, exist_ok=True)
            (out / "dry_run.json").write_text(json.dumps({"plan_gib": {k: v / 2**30 for k, v in plan.items()},
                                                          "ranks": peaks, "data_s": t_data}, indent=1))
        if fsdp:
            dist.destroy_process_group()
        return out

    # --- the data order: packed once (lengths only), reshuffled per epoch; the same on every rank
    bins = pack_lengths(cache.lengths, args.max_length)
    n_rows, G = len(bins), args.global_batch
    if G % world:
        raise ValueError(f"--global-batch {G} is not a multiple of the {world} ranks")
    row_tokens = np.array([cache.lengths[b].sum() for b in bins])
    row_sup = np.array([cache.n_sup[b].sum() for b in bins])
    row_sq = np.array([(cache.lengths[b] ** 2).sum() for b in bins])
    steps_per_epoch = math.ceil(n_rows / G)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    log(f"data: {n_rows} packed rows of <= {args.max_length} tokens, packing efficiency "
        f"{row_tokens.sum() / (n_rows * args.max_length):.1%}; {G} rows per step ({G // world} per rank), "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps total")

    # --- optimizer: AdamW, no decay on norms and biases; the learning rate is set by hand every step.
    # Fused AdamW runs on CUDA parameters only; with --cpu-offload they live (and step) on the CPU.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    on_cuda = device.type == "cuda" and not args.cpu_offload
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=on_cuda, foreach=None if on_cuda else True)
    warmup = max(1, round(args.warmup_ratio * total_steps))

    # --- resume: model, optimizer, step and RNG from the newest complete checkpoint, on any number of ranks
    step = 0
    if args.resume and complete_checkpoints(ckpt_dir):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        last = complete_checkpoints(ckpt_dir)[-1]
        meta = json.loads((last / "meta.json").read_text())
        for k, now in (("global_batch", G), ("packed_rows", n_rows), ("seed", args.seed)):
            if k in meta and meta[k] != now:
                raise ValueError(f"{last}: saved with {k}={meta[k]}, this run has {now}; resuming would not "
                                 "continue the same data order")
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=str(last / "dcp"))  # reshards a checkpoint written by any number of ranks
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        step = meta["step"]
        rng_file = last / "rng.pt" if (last / "rng.pt").is_file() else last / "rng_rank0.pt"
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        log(f"resumed from {last} at step {step} (written by {meta.get('world_size', '?')} rank(s), now {world})")
    elif args.resume:
        log(f"--resume: no complete checkpoint in {ckpt_dir}, starting from scratch")

    def save_checkpoint(step, epoch, in_epoch_rows):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
        final = ckpt_dir / f"step_{step:07d}"
        tmp = ckpt_dir / f"step_{step:07d}.tmp"
        if master:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if fsdp:
            dist.barrier()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
        if fsdp:
            dist.barrier()
        if master:  # meta.json last, then the rename: a crash before it leaves only a .tmp dir, never a bad step_
            # RNG: every rank seeded alike and draws alike, so one state serves any number of ranks
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
            (tmp / "meta.json").write_text(json.dumps({
                "step": step, "epoch": epoch, "rows_done_in_epoch": in_epoch_rows, "world_size": world,
                "global_batch": G, "packed_rows": n_rows, "seed": args.seed, "data_cache": cache.path.name,
                "args": vars(args)}, default=str))
            os.replace(tmp, final)
            for old in complete_checkpoints(ckpt_dir)[:-args.keep]:
                shutil.rmtree(old)
        if fsdp:
            dist.barrier()
        log(f"checkpoint: {final}")

    def export_hf(name, step):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        final, marker = out / "hf" / name, out / "hf" / name / "vc2_export.json"
        if master:  # written aside, then renamed: the marker names the step, so nobody mistakes an old export
            tmp = out / "hf" / (name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            vc2.save_model(model, tmp, dtype=torch.bfloat16, state_dict=sd, tokenizer_dir=model_dir)
            (tmp / "vc2_export.json").write_text(json.dumps({"step": step}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            log(f"export: {final}")
        del sd
        if fsdp and not master:  # wait on the file: a large export can outlast NCCL's timeout
            wait_for_file(marker, lambda t: json.loads(t)["step"] == step, args.startup_timeout, f"rank 0's export {name}")

    # --- the loop
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.jsonl", "a") if master else None
    peak = peak_flops(device, args.peak_tflops)
    if device.type == "cuda" and peak is None:
        log(f"MFU: unknown peak for {torch.cuda.get_device_name(device)}; pass --peak-tflops to log it")
    ctx = {"world": world, "device": device, "autocast": autocast, "loss_chunk": args.loss_chunk,
           "grad_clip": args.grad_clip}
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not master, unit="step")
    orders = {}
    start_step = step
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders = {epoch: epoch_order(n_rows, args.seed, epoch)}
        global_rows = orders[epoch][in_epoch * G:(in_epoch + 1) * G]  # this step's rows, in the global order
        mine = global_rows[rank::world]
        n_micro = math.ceil(len(global_rows) / world)
        rows = [cache.row(bins[i]) for i in mine] + [None] * (n_micro - len(mine))
        n_sup = int(row_sup[global_rows].sum())
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, args.lr, warmup)
        loss_sum, grad_norm = train_step(model, opt, rows, n_sup, lr, ctx)
        step += 1

        # --- logging: the global mean loss of the step, throughput, MFU, memory (one sync per step)
        if fsdp:
            dist.all_reduce(loss_sum)
        loss = loss_sum.item() / max(1, n_sup)
        dt = time.perf_counter() - t0
        n_tokens = int(row_tokens[global_rows].sum())
        rec = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
               "tokens": n_tokens, "tok_per_s": n_tokens / dt, "step_s": dt, "time": time.time()}
        if peak:
            flops = train_flops(cfg, n_tokens, n_sup, int(row_sq[global_rows].sum()))
            rec["mfu"] = flops / dt / world / peak
        if step == start_step + 1:
            rec["startup_s"] = round(time.time() - t_start - dt, 2)  # process start -> first step begins
            rec["data_s"] = round(t_data, 2)
        rec.update(peak_memory(device))
        if master:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rec['tok_per_s']:.0f}",
                            **({"mfu": f"{rec['mfu']:.1%}"} if "mfu" in rec else {}))
            bar.update(1)

        # --- checkpoints and exports
        end_of_epoch = step % steps_per_epoch == 0
        stopping = args.stop_after and step - start_step >= args.stop_after
        if (args.save_every and step % args.save_every == 0) or end_of_epoch or step == total_steps or stopping:
            save_checkpoint(step, *divmod(step * G, steps_per_epoch * G))
        if not args.no_export and (end_of_epoch or step == total_steps):
            export_hf("final" if step == total_steps else f"epoch_{epoch + 1}", step)
        if stopping:
            log(f"--stop-after {args.stop_after}: leaving at step {step} of {total_steps}; continue with --resume")
            break
    bar.close()
    if logf:
        logf.close()
    if fsdp:
        dist.destroy_process_group()
    return out


def main(argv=None):
    args = parse_args(argv)
    train(args)


if __name__ == "__main__":
    main()
