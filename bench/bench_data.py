"""The training-data pipeline at scale: synthetic VisCode-like conversations -> token cache -> packed rows.

    python bench/bench_data.py                      # 200K conversations under /tmp/vc2-bench-data (~1 GB JSONL)
    python bench/bench_data.py --n 20000 --stages speed,scaling

Stages (each in its own process, so peak memory is its own):
  speed    per-core tokenizing speed (CPU time) on the same 3,000 conversations, interleaved, cold tokenizer each time:
           the pre-cache pipeline (load_conversations + render_chat + per-token label loop, vc2 at b61c0f7)
           vs one cache worker (JSON + checks + render_chats + flat arrays); ids and labels checked equal
  scaling  the cache build on 20,000 conversations with 1 worker and with every core (ratio = speed-up)
  cold     the cache build on all N conversations with every core: time, peak RSS (writer and workers)
  warm     a fresh process, warm cache: time from start until rank 0 of 8 holds its first packed row, and RSS
  ranks    2 processes at once as ranks 0 and 1 (warm): each one's RSS after its first 100 rows
  train    `torchrun --nproc_per_node 2 run_train.py` on the warm cache (a tiny model with the embedded
           tokenizer, 1 step): its startup_s, i.e. process start -> first optimizer step begins
The synthetic conversations (make_conversation) mimic VisCode-Multi: a plotting request in one of eight
languages with optional CSV data, an answer with prose and a code block of log-normally many lines
(~2,000 tokens mean with the embedded SmolLM2 tokenizer, a long tail past 16K), and 18% self-debug
corrections (error feedback, then the full corrected program).
"""
import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the a of to and in for with on by per each from as at axis title label legend color bar line scatter "
         "pie histogram heatmap box area chart plot figure data value values series month year region sales "
         "revenue profit growth rate temperature count share total mean median average top bottom left right "
         "grid font size width height red blue green orange purple grey navy teal gold black white light dark "
         "show use make draw create render display add set put keep sort group stack normalise compare "
         "highlight quarterly weekly daily annual population energy emissions rainfall traffic users visits "
         "score rating price cost budget spend income expenses survey response latency throughput errors").split()
LANGS = ["python", "vegalite", "svg", "html", "latex", "mermaid", "lilypond", "asymptote"]
NAMES = ["Alpha", "Beta", "Gamma", "Delta", "North", "South", "East", "West", "Q1", "Q2", "Q3", "Q4", "Tokyo",
         "Paris", "Lima", "Oslo", "Cairo", "Perth", "Quito", "Seoul", "Accra", "Hanoi", "Dakar", "Riga"]


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _ident(rng):
    return "_".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))


def _code_line(rng, lang):
    a, b = _ident(rng), _ident(rng)
    num = round(rng.uniform(-1000, 1000), rng.randint(0, 3))
    if lang == "python":
        return rng.choice([f"{a} = [{', '.join(str(round(rng.uniform(0, 500), 1)) for _ in range(rng.randint(3, 12)))}]",
                           f"ax.plot({a}, {b}, color=\"{rng.choice(WORDS)}\", linewidth={rng.randint(1, 4)}, label=\"{rng.choice(NAMES)}\")",
                           f"ax.set_title(\"{_sentence(rng, 5)}\")", f"for i, {a} in enumerate({b}):",
                           f"    ax.text(i, {a} + {num}, f\"{{{a}:.1f}}\", ha=\"center\")", f"df[\"{a}\"] = df[\"{b}\"] * {num}"])
    if lang in ("svg", "html"):
        return rng.choice([f"<rect x=\"{rng.randint(0, 800)}\" y=\"{rng.randint(0, 600)}\" width=\"{rng.randint(5, 90)}\" "
                           f"height=\"{rng.randint(5, 300)}\" fill=\"#{rng.randrange(16**6):06x}\"/>",
                           f"<text x=\"{rng.randint(0, 800)}\" y=\"{rng.randint(0, 600)}\" font-size=\"{rng.randint(8, 24)}\">{rng.choice(NAMES)} {num}</text>",
                           f"  <div class=\"{a}\" style=\"width:{rng.randint(10, 900)}px\">{_sentence(rng, 4)}</div>",
                           f"const {a} = {json.dumps([round(rng.uniform(0, 99), 2) for _ in range(rng.randint(3, 10))])};"])
    if lang == "vegalite":
        return f"  {{\"{a}\": \"{rng.choice(NAMES)}\", \"{b}\": {num}}},"
    if lang == "latex":
        return rng.choice([f"  \\addplot coordinates {{({rng.randint(0, 50)},{num}) ({rng.randint(0, 50)},{num * 2})}};",
                           f"  \\node at ({rng.uniform(0, 9):.2f},{rng.uniform(0, 9):.2f}) {{{rng.choice(NAMES)}}};",
                           f"  \\draw[{rng.choice(WORDS)}, thick] ({rng.randint(0, 9)},{rng.randint(0, 9)}) -- ({rng.randint(0, 9)},{rng.randint(0, 9)});"])
    if lang == "mermaid":
        return f"    {a}[\"{rng.choice(NAMES)} {rng.randint(1, 99)}\"] --> {b}"
    if lang == "lilypond":
        return "  " + " ".join(rng.choice("cdefgab") + rng.choice(["", "'", ","]) + rng.choice(["4", "8", "2", "16"]) for _ in range(8))
    return f"draw(({rng.randint(0, 100)},{num})--({rng.randint(0, 100)},{rng.randint(0, 100)}), {rng.choice(WORDS)});"


def make_conversation(rng: random.Random, i: int) -> dict:
    """One VisCode-Multi-style row {uuid, messages, language} (see the module docstring)."""
    lang = rng.choice(LANGS)
    n_lines = max(4, int(rng.lognormvariate(math.log(32), 0.8)))
    n_data = rng.randint(0, 30)
    user = f"{_sentence(rng, rng.randint(8, 30))} Use {lang}. " + " ".join(_sentence(rng, rng.randint(5, 15)) for _ in range(rng.randint(1, 5)))
    if n_data:
        user += "\n\nThe data is shown below:\n\n" + "\n".join(
            ",".join([rng.choice(NAMES)] + [str(round(rng.uniform(0, 1e4), 2)) for _ in range(4)]) for _ in range(n_data))
    code = "\n".join(_code_line(rng, lang) for _ in range(n_lines))
    msgs = [{"role": "user", "content": user},
            {"role": "assistant", "content": f"{_sentence(rng, rng.randint(6, 25))}\n\n```{lang}\n{code}\n```"}]
    if rng.random() < 0.18:  # a self-debug correction: error feedback, then the whole fixed program
        err = (f"Traceback (most recent call last):\n  File \"plot.py\", line {rng.randint(1, n_lines)}, in <module>\n"
               f"    {_code_line(rng, lang)}\n{rng.choice(['NameError', 'ValueError', 'TypeError', 'KeyError'])}: {_sentence(rng, 8)}")
        msgs += [{"role": "user", "content": f"The code above failed with this error:\n```\n{err}\n```\n"
                                              "Please fix the problem and reply with the complete corrected code."},
                 {"role": "assistant", "content": f"{_sentence(rng, rng.randint(8, 20))}\n\n```{lang}\n{code}\n{_code_line(rng, lang)}\n```"}]
    return {"uuid": f"syn-{i}", "messages": msgs, "language": lang}


def write_data(path: Path, n: int, seed: int = 0):
    if path.is_file():
        return
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for i in range(n):
            f.write(json.dumps(make_conversation(rng, i)) + "\n")
    os.replace(tmp, path)


def rss_gb() -> dict:
    """Peak RSS of this process, and its current anonymous / file-backed RSS (/proc), in GiB."""
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon", "RssFile")):
            out[line.split(":")[0].lower() + "_gb"] = int(line.split()[1]) / 2**20
    return out


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# --- stages (each runs in a fresh process; prints one JSON line) -------------------------------------

def stage_speed(args):
    import numpy as np
    from tokenizers import Tokenizer as HFTokenizer
    import vc2
    import vc2.data as data
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per side
    tok = vc2.load_tokenizer(args.model)
    subset = Path(args.dir) / "speed-3000.jsonl"
    with open(args.data) as f, open(subset, "w") as g:
        for _, line in zip(range(3000), f):
            g.write(line)
    n = sum(1 for _ in open(subset))

    def baseline():  # vc2's tokenize() before the cache: render_chat (offsets walk) + per-token label loop
        rows, _ = data.load_conversations(subset)
        docs = []
        for row in rows:
            ids, mask = tok.render_chat(row["messages"])
            if len(ids) > args.max_length:
                continue
            docs.append((ids, [ids[t + 1] if mask[t + 1] else data.IGNORE for t in range(len(ids) - 1)] + [data.IGNORE]))
        return docs

    def cache_worker():  # what one cache worker does with its chunk of the file
        data._worker_init(tok, args.max_length, pool=False)
        return data._tokenize_chunk((str(subset), "jsonl", 0, subset.stat().st_size))

    times = {"baseline": [], "cache_worker": []}
    for _ in range(args.repeats):
        for name, fn in (("baseline", baseline), ("cache_worker", cache_worker)):
            tok.tk = HFTokenizer.from_file(str(tok.path))  # cold BPE cache for each measurement
            tok.__dict__.pop("_independent", None)
            t = time.process_time()  # CPU time of this (single-threaded) process: what "per core" means,
            res = fn()               # and much less disturbed by other jobs on a shared machine than wall time
            times[name].append((time.process_time() - t) / n * 1e3)
            if name == "baseline":
                docs = res
            else:
                chunk = res
    ids = np.concatenate([np.asarray(d[0]) for d in docs])
    labels = np.concatenate([np.asarray(d[1]) for d in docs])
    assert np.array_equal(ids, chunk["ids"]), "the cache's ids differ from render_chat's"
    assert np.array_equal(labels, data.shifted_labels(chunk["ids"], chunk["mask"], chunk["lengths"])), "labels differ"
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"conversations": n, "mean_tokens": float(len(ids) / len(docs)), "ms_per_conv": med, "all_ms": times,
            "speedup_per_core": med["baseline"] / med["cache_worker"]}


def stage_build(args, n_rows=None, workers=None):
    import vc2
    from vc2.data import prepare_cache
    tok = vc2.load_tokenizer(args.model)
    src = Path(args.data)
    if n_rows:
        src = Path(args.dir) / f"subset-{n_rows}.jsonl"
        if not src.is_file():
            with open(args.data) as f, open(src, "w") as g:
                for _, line in zip(range(n_rows), f):
                    g.write(line)
    root = Path(args.dir) / f"cache-w{workers}-n{n_rows}" if n_rows else Path(args.dir) / "cache"
    if n_rows:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    cache = prepare_cache(src, tok, args.max_length, root=root, workers=workers, log=lambda m: None)
    dt = time.perf_counter() - t
    m = cache.meta
    return {"rows": m["rows"], "docs": m["docs"], "tokens": m["tokens"], "dropped": m["dropped_too_long"],
            "workers": m["workers"], "seconds": dt, "worker_cpu_s": m["worker_cpu_s"], "built_s": m["build_s"], "writer": rss_gb(),
            "largest_worker_peak_rss_gb": m["worker_peak_rss_gb"], "cache_bytes": sum(f.stat().st_size for f in cache.path.iterdir())}


def stage_warm(args, rank=0, world=8, rows=1):
    t0 = time.perf_counter()
    base = rss_gb()
    import vc2
    from vc2.data import epoch_order, pack_lengths, prepare_cache
    tok = vc2.load_tokenizer(args.model)
    after_imports = rss_gb()
    cache = prepare_cache(args.data, tok, args.max_length, root=Path(args.dir) / "cache", writer=False,
                          timeout=1, log=lambda m: None)
    t_open = time.perf_counter() - t0
    bins = pack_lengths(cache.lengths, args.max_length)
    t_pack = time.perf_counter() - t0
    order = epoch_order(len(bins), 0, 0)
    mine = order[rank::world]
    first = [cache.row(bins[i]) for i in mine[:rows]]
    t_first = time.perf_counter() - t0
    assert first and len(first[0]["input_ids"]) <= args.max_length
    return {"rank": rank, "world": world, "rows_built": rows, "packed_rows": len(bins), "open_s": t_open,
            "pack_s": t_pack - t_open, "first_batch_s": t_first, "rss_at_start": base, "rss_after_imports": after_imports,
            "rss_end": rss_gb()}


def stage_train(args):
    """torchrun 2 ranks on the warm cache with a tiny model; returns the first step's startup_s."""
    import tempfile
    from dataclasses import replace
    import vc2
    from vc2.config import PRESETS
    from vc2.model import Transformer
    src = vc2.checkpoint.resolve_model_path(args.model)
    tok = vc2.load_tokenizer(src)
    with tempfile.TemporaryDirectory() as d:
        cfg = replace(PRESETS["debug"], vocab_size=tok.vocab_size)
        vc2.save_model(Transformer(cfg).init_weights(seed=0), Path(d) / "model", tokenizer_dir=src)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).resolve().parents[1] / "run_train.py"), "--model", str(Path(d) / "model"),
               "--data", args.data, "--data-cache", str(Path(args.dir) / "cache"), "--out", str(Path(d) / "out"),
               "--max-length", str(args.max_length), "--max-steps", "1", "--global-batch", "2", "--no-export",
               "--device", "cpu", "--preset", "cpu-demo"]
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr[-3000:])
        rec = json.loads((Path(d) / "out" / "log.jsonl").read_text().splitlines()[0])
        return {"launch_to_first_step_s": rec["time"] - rec["step_s"] - t, "startup_s": rec["startup_s"],
                "data_s": rec["data_s"], "first_step_s": rec["step_s"], "peak_rss_gb_rank0": rec["peak_rss_gb"]}


def run_stage(args, name, *extra):
    cmd = [sys.executable, __file__, "--n", str(args.n), "--dir", args.dir, "--model", args.model,
           "--max-length", str(args.max_length), "--repeats", str(args.repeats), "--worker", name, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"stage {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="synthetic conversations (default: %(default)s)")
    p.add_argument("--dir", default="/tmp/vc2-bench-data", help="data, caches and scratch files (default: %(default)s)")
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer (default: the embedded %(default)s)")
    p.add_argument("--max-length", type=int, default=16384, help="the recipe's row length (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the speed stage (default: %(default)s)")
    p.add_argument("--stages", default="speed,scaling,cold,warm,ranks,train", help="default: %(default)s")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    args.data = str(Path(args.dir) / f"synthetic-{args.n}.jsonl")
    if args.worker:
        fn = {"speed": stage_speed, "scaling1": lambda a: stage_build(a, 20_000, 1),
              "scalingN": lambda a: stage_build(a, 20_000, cores()), "cold": lambda a: stage_build(a, None, cores()),
              "warm": stage_warm, "rank": lambda a: stage_warm(a, a.rank, 2, 100), "train": stage_train}[args.worker]
        print(json.dumps(fn(args)))
        return

    t = time.perf_counter()
    write_data(Path(args.data), args.n)
    size = Path(args.data).stat().st_size
    print(f"data: {args.n} synthetic conversations, {size / 2**20:.0f} MiB ({time.perf_counter() - t:.0f} s); "
          f"{cores()} cores; tokenizer of {args.model}; max_length {args.max_length}", flush=True)
    results = {}
    stages = args.stages.split(",")
    if "speed" in stages:
        r = results["speed"] = run_stage(args, "speed")
        print(f"speed: {r['conversations']} conversations, mean {r['mean_tokens']:.0f} tokens; ms/conversation on one "
              f"core: before {r['ms_per_conv']['baseline']:.2f}, cache worker {r['ms_per_conv']['cache_worker']:.2f} "
              f"-> {r['speedup_per_core']:.2f}x per core (ids and labels identical)", flush=True)
    if "scaling" in stages:
        one, many = run_stage(args, "scaling1"), run_stage(args, "scalingN")
        results["scaling"] = {"one": one, "all": many}
        print(f"scaling: 20,000 conversations: 1 worker {one['seconds']:.1f} s wall ({one['worker_cpu_s']:.1f} CPU-s), "
              f"{many['workers']} workers {many['seconds']:.1f} s wall ({many['worker_cpu_s']:.1f} CPU-s in the workers) "
              f"-> {one['seconds'] / many['seconds']:.2f}x wall", flush=True)
    if "cold" in stages:
        import shutil
        shutil.rmtree(Path(args.dir) / "cache", ignore_errors=True)
        r = results["cold"] = run_stage(args, "cold")
        print(f"cold: {r['rows']} conversations -> {r['docs']} cached ({r['dropped']} over max_length), "
              f"{r['tokens'] / 1e6:.0f}M tokens, {r['cache_bytes'] / 2**30:.2f} GiB, {r['workers']} workers: "
              f"{r['seconds']:.0f} s wall, {r['worker_cpu_s'] / r['rows'] * 1e3:.2f} CPU-ms/conversation in the workers; "
              f"peak RSS writer {r['writer']['peak_rss_gb']:.2f} GiB, largest worker {r['largest_worker_peak_rss_gb']:.2f} GiB",
              flush=True)
    if "warm" in stages:
        r = results["warm"] = run_stage(args, "warm")
        print(f"warm: first packed row of rank 0/8 ready {r['first_batch_s']:.1f} s after process start (open "
              f"{r['open_s']:.1f} s incl. imports, pack {r['pack_s']:.2f} s, {r['packed_rows']} rows); RSS "
              f"{r['rss_end']['peak_rss_gb']:.2f} GiB peak, {r['rss_end']['peak_rss_gb'] - r['rss_after_imports']['peak_rss_gb']:.2f} "
              f"GiB beyond imports + tokenizer", flush=True)
    if "ranks" in stages:
        cmds = [[sys.executable, __file__, "--n", str(args.n), "--dir", args.dir, "--model", args.model,
                 "--max-length", str(args.max_length), "--worker", "rank", "--rank", str(r)] for r in (0, 1)]
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in cmds]
        rs = results["ranks"] = [json.loads(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
        for r in rs:
            e = r["rss_end"]
            print(f"ranks: rank {r['rank']}/2 after 100 rows: peak RSS {e['peak_rss_gb']:.2f} GiB "
                  f"({e['peak_rss_gb'] - r['rss_after_imports']['peak_rss_gb']:.2f} beyond imports + tokenizer; now anon "
                  f"{e['rssanon_gb']:.2f}, file-backed {e['rssfile_gb']:.2f}), first row at {r['first_batch_s']:.1f} s", flush=True)
    if "train" in stages:
        r = results["train"] = run_stage(args, "train")
        print(f"train: torchrun 2 ranks, warm cache: the first optimizer step began {r['launch_to_first_step_s']:.1f} s "
              f"after the launch ({r['startup_s']:.1f} s after train() began, of which data {r['data_s']:.1f} s); "
              f"rank 0 peak RSS {r['peak_rss_gb_rank0']:.2f} GiB", flush=True)
    (Path(args.dir) / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
