"""How well vc2.eval.fidelity ranks the graded pair set (bench/fidelity_pairs, built by
bench/build_fidelity_pairs.py), next to two baselines scored in the same run, and what a pair costs.

    python bench/bench_fidelity.py                       # all 8 languages
    python bench/bench_fidelity.py --pairs other/pairs.jsonl

Figures, per language and overall:
- pairwise ordering accuracy: for each reference, every two candidates of different classes count
  once; right order 1, a tie 1/2 (the design study's definition). Goal: >= 0.93 overall, >= 0.85 per language;
- Spearman rho of the score against the class (5 same picture ... 0 blank), all pairs of the language;
- per class boundary (5>4, 4>3, ...): pairwise accuracy over pairs from those two classes only.
Baselines: "phash16" (the score's perceptual-hash part alone, after the same normalisation) and
"naive SSIM" (scikit-image SSIM of the raw images as greyscale 256x256, no crop, no blank rule).
Cost: milliseconds per pair for the score (reference prepared fresh, and cached as in a run) and for
naive SSIM, sides interleaved over --repeats passes, medians; the ratio is the one to read.
"""
import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from vc2.eval import fidelity

HERE = Path(__file__).parent


def naive_ssim(ref, cand):
    from skimage.metrics import structural_similarity
    a, b = (np.asarray(Image.open(p).convert("L").resize((256, 256), Image.LANCZOS), dtype=np.float64) for p in (ref, cand))
    return float(structural_similarity(a, b, data_range=255))


def pairwise(rows, key):
    """(accuracy, count) over same-reference pairs of candidates in different classes."""
    by_ref = defaultdict(list)
    for r in rows:
        by_ref[r["ref"]].append(r)
    good = n = 0.0
    for cands in by_ref.values():
        for i, a in enumerate(cands):
            for b in cands[i + 1:]:
                if a["class"] == b["class"]:
                    continue
                hi, lo = (a, b) if a["class"] > b["class"] else (b, a)
                good += 1.0 if hi[key] > lo[key] else 0.5 if hi[key] == lo[key] else 0.0
                n += 1
    return (good / n if n else float("nan")), int(n)


def spearman(rows, key):
    from scipy.stats import spearmanr
    return float(spearmanr([r[key] for r in rows], [r["class"] for r in rows]).statistic)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default=str(HERE / "fidelity_pairs" / "pairs.jsonl"), help="graded pairs (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timing passes over the pairs (default: %(default)s)")
    args = p.parse_args()
    base = Path(args.pairs).parent
    rows = [json.loads(l) for l in open(args.pairs) if l.strip()]
    for r in rows:
        ref, cand = base / r["ref"], base / r["cand"]
        parts = fidelity.score(ref, cand)
        r["score"] = parts["score"]
        pr, pc = fidelity.prepare(ref), fidelity.prepare(cand)
        r["phash16"] = 0.0 if pr.blank or pc.blank else 1.0 - (pr.phash - pc.phash) / 256.0
        r["ssim"] = naive_ssim(ref, cand)

    langs = list(dict.fromkeys(r["language"] for r in rows))
    metrics = [("score", "fidelity score"), ("phash16", "phash16 alone"), ("ssim", "naive SSIM")]
    print(f"{len(rows)} pairs, {len({r['ref'] for r in rows})} references, {len(langs)} languages\n")
    print("| metric | overall pw | overall rho | " + " | ".join(f"{lang} pw / rho" for lang in langs) + " |")
    print("|---" * (3 + len(langs)) + "|")
    for key, name in metrics:
        pw, n = pairwise(rows, key)
        cells = [f"{pairwise([r for r in rows if r['language'] == lang], key)[0]:.3f} / "
                 f"{spearman([r for r in rows if r['language'] == lang], key):.2f}" for lang in langs]
        print(f"| {name} | {pw:.3f} | {spearman(rows, key):.3f} | " + " | ".join(cells) + " |")
    print(f"\n(pairwise comparisons overall: {pairwise(rows, 'score')[1]})\n")

    print("| metric | " + " | ".join(f"{a}>{a - 1}" for a in range(5, 0, -1)) + " |")
    print("|---" * 6 + "|")
    for key, name in metrics:
        cells = [f"{pairwise([r for r in rows if r['class'] in (a, a - 1)], key)[0]:.2f}" for a in range(5, 0, -1)]
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\nmean fidelity score by variant:")
    by_var = defaultdict(list)
    for r in rows:
        by_var[r["variant"].split(":")[0]].append(r["score"])
    for v, s in sorted(by_var.items(), key=lambda kv: -statistics.mean(kv[1])):
        print(f"  {v:12s} class {next(r['class'] for r in rows if r['variant'].split(':')[0] == v)}  "
              f"mean {statistics.mean(s):.3f}  range {min(s):.2f}-{max(s):.2f}  (n={len(s)})")
    worst = sorted(((r["score"], r) for r in rows if r["class"] == 5), key=lambda x: x[0])[:3]
    print("lowest same-picture pairs: " + ", ".join(f"{r['cand']} {s:.2f}" for s, r in worst))

    # cost per pair: interleave the sides, median per pair
    t_fresh, t_cached, t_ssim = [], [], []
    for _ in range(args.repeats):
        for r in rows:
            ref, cand = base / r["ref"], base / r["cand"]
            t0 = time.perf_counter()
            fidelity.compare(fidelity.prepare(ref), fidelity.prepare(cand))
            t1 = time.perf_counter()
            fidelity.score(ref, cand)  # reference prepared once and cached (what a run does)
            t2 = time.perf_counter()
            naive_ssim(ref, cand)
            t3 = time.perf_counter()
            t_fresh.append(t1 - t0), t_cached.append(t2 - t1), t_ssim.append(t3 - t2)
    m = {k: 1000 * statistics.median(v) for k, v in (("fresh", t_fresh), ("cached", t_cached), ("ssim", t_ssim))}
    print(f"\ncost per pair (median of {len(t_fresh)}): score {m['fresh']:.1f} ms with the reference prepared, "
          f"{m['cached']:.1f} ms with it cached; naive SSIM {m['ssim']:.1f} ms "
          f"(score / SSIM = {m['fresh'] / m['ssim']:.2f}x fresh, {m['cached'] / m['ssim']:.2f}x cached)")
    ok = pairwise(rows, "score")[0] >= 0.93 and all(
        pairwise([r for r in rows if r["language"] == lang], "score")[0] >= 0.85 for lang in langs)
    print(f"goal (pw >= 0.93 overall, >= 0.85 per language): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
