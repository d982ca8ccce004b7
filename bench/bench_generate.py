"""Decode speed of vc2.generate vs transformers generate(), same weights, prompts and greedy settings,
measured in the same run with the two interleaved (this machine's timings drift between runs).

    python bench/bench_generate.py                    # debug, smollm2-135m, qwen0.5b-shape; batch 1 and 8; fp32 and bf16
    python bench/bench_generate.py --models debug --new-tokens 32 --repeats 3
    python bench/bench_generate.py --models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b --device cuda --dtypes bfloat16 --batch-sizes 1

Prints time-to-first-token (prefill + one token) and decode tokens/s (tokens after the first, all rows,
per second), the median of --repeats runs, and the vc2/HF ratio. vc2 runs on its engine (vc2/engine.py)
with prompt lookup off (plain decode). On CUDA it also prints decode tok/s with the CUDA graphs off,
the attention kernel the engine chose, and the share of the memory-bandwidth floor: one decode step
must read the weights and every row's KV cache, so (weight bytes + rows x cached tokens x KV bytes per
token) / measured device copy bandwidth is the fastest a step can be.
"""
import argparse
import statistics
import tempfile
import time

import torch

import vc2
from vc2.config import PRESETS
from vc2.engine import Engine


def build(name, dtype, device, tmp):
    """(vc2 model, HF model) with identical weights."""
    import transformers
    if name == "smollm2-135m":
        path = vc2.checkpoint.resolve_model_path(name)
    else:
        cfg = PRESETS[name]
        torch.manual_seed(0)
        hf_cfg = cfg.to_hf()
        hf_cfg["torch_dtype"] = "float32"
        config = transformers.AutoConfig.for_model(**hf_cfg)
        hf = transformers.AutoModelForCausalLM.from_config(config)
        path = f"{tmp}/{name}"
        hf.save_pretrained(path)
        del hf
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    ours = vc2.load_model(path, dtype=dtype, device=device)
    return ours, hf, path


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_ours(model, prompts, n, device, graphs=None):
    engine = Engine(model, slots=len(prompts), max_len=len(prompts[0]) + n, lookup_tokens=0, cuda_graphs=graphs)
    engine.generate(prompts, 2)  # capture this batch's CUDA graph (and warm the allocator) outside the timing
    sync(device)
    t = time.perf_counter()
    engine.generate(prompts, n)
    sync(device)
    return time.perf_counter() - t, engine.describe()["attention"]


def time_hf(model, prompts, n, device):
    ids = torch.tensor(prompts, device=device)  # equal-length prompts: no padding needed
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, eos_token_id=None, pad_token_id=0, repetition_penalty=1.0)
    sync(device)
    return time.perf_counter() - t


def bandwidth_floor_ms(model, device, rows=1, cached=0):
    """(Weight bytes + KV bytes read) / device-to-device copy bandwidth: the floor of one decode step."""
    cfg = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes = rows * cached * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * \
        next(model.parameters()).element_size()
    weight_bytes += kv_bytes
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync(device)
    gbps = 2 * x.numel() * 10 / (time.perf_counter() - t) / 1e9  # read + write
    return weight_bytes / (gbps * 1e9) * 1e3, gbps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="debug,smollm2-135m,qwen2.5-coder-0.5b",
                   help="comma-separated PRESETS names or smollm2-135m (default: %(default)s)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="default: %(default)s")
    p.add_argument("--batch-sizes", default="1,8", help="default: %(default)s")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per row (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=48, help="generated tokens per row (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell, median reported (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="default: %(default)s")
    args = p.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    header = f"{'model':<20} {'dtype':<9} {'B':>2} | {'TTFT ms vc2':>11} {'HF':>8} | {'decode tok/s vc2':>16} {'HF':>8} {'ratio':>6}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for dtype_name in args.dtypes.split(","):
                dtype = getattr(torch, dtype_name)
                ours, hf, _ = build(name, dtype, args.device, tmp)
                vocab = min(ours.config.vocab_size, getattr(ours, "n_real_tokens", None) or 10**9)
                for B in map(int, args.batch_sizes.split(",")):
                    g = torch.Generator().manual_seed(B)
                    prompts = torch.randint(0, vocab, (B, args.prompt_len), generator=g).tolist()
                    n = args.new_tokens
                    # warm up both (allocator, first-call costs), then interleave timed runs
                    cuda = args.device.startswith("cuda")
                    time_ours(ours, prompts, 2, args.device), time_hf(hf, prompts, 2, args.device)
                    t = {"o1": [], "on": [], "h1": [], "hn": [], "g1": [], "gn": []}
                    for _ in range(args.repeats):
                        t["o1"].append(time_ours(ours, prompts, 1, args.device)[0])
                        t["h1"].append(time_hf(hf, prompts, 1, args.device))
                        t["on"].append(time_ours(ours, prompts, n, args.device)[0])
                        t["hn"].append(time_hf(hf, prompts, n, args.device))
                        if cuda:  # the same engine with the CUDA graphs off
                            t["g1"].append(time_ours(ours, prompts, 1, args.device, graphs=False)[0])
                            t["gn"].append(time_ours(ours, prompts, n, args.device, graphs=False)[0])
                    m = {k: statistics.median(v) for k, v in t.items() if v}
                    ours_tps = B * (n - 1) / max(m["on"] - m["o1"], 1e-9)
                    hf_tps = B * (n - 1) / max(m["hn"] - m["h1"], 1e-9)
                    row = (f"{name:<20} {dtype_name:<9} {B:>2} | {m['o1'] * 1e3:>11.1f} {m['h1'] * 1e3:>8.1f} | "
                           f"{ours_tps:>16.1f} {hf_tps:>8.1f} {ours_tps / hf_tps:>5.2f}x")
                    if cuda:
                        eager_tps = B * (n - 1) / max(m["gn"] - m["g1"], 1e-9)
                        floor_ms, gbps = bandwidth_floor_ms(ours, args.device, B, args.prompt_len + n // 2)
                        reader = time_ours(ours, prompts, 1, args.device)[1]
                        row += (f"  graphs off {eager_tps:.1f} tok/s ({ours_tps / eager_tps:.2f}x on/off), "
                                f"floor {B * 1e3 / floor_ms:.0f} tok/s ({gbps:.0f} GB/s): "
                                f"{ours_tps / (B * 1e3 / floor_ms):.0%} of it, attention {reader}")
                    rows.append(row)
                    print(row, flush=True)
                del ours, hf
    print("\n" + header + "\n" + "-" * len(header) + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
