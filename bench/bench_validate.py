"""Dataset validation throughput (vc2/data/validate.py) on the shipped training sample, and what it
means for VisCode-Multi-679K: vc2's way (--workers parallel rows, warm servers) against one row at a
time, each program in a fresh renderer process (how a notebook-per-program pipeline runs), measured
in the same run, sides interleaved and repeated, medians reported.

    python bench/bench_validate.py                    # the 110-row sample, --workers = CPU count, 2 repeats
    python bench/bench_validate.py --repeat 1 --workers 4

A third side, one row at a time with warm servers, gives each language's seconds per row with the
machine otherwise idle for it; weighted by the dataset's rows per language (paper Table 1) and divided
by the cores of a node, that is the extrapolation printed last (assuming rows scale across cores as
the measured --workers speed-up does, and counting the ~66K Code-Feedback rows at Python's cost: an
upper bound, since the ones that draw nothing are classified without being run).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from vc2.data.validate import validate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "vc2" / "assets" / "train_sample.jsonl"
# VisCode-Multi-679K's visualization rows per language (paper Table 1), plus its Code-Feedback rows
DATASET = {"python": 186_954, "html": 135_230, "latex": 124_039, "svg": 46_621, "javascript": 28_807,
           "asymptote": 22_539, "cpp": 16_776, "r": 13_437, "mermaid": 13_381, "lilypond": 12_093,
           "vegalite": 6_790, "typescript": 6_315}
CODE_FEEDBACK = 66_000


def side(workers, warm):
    """(wall seconds, rows kept, {language: [row seconds]}) of one validation of the sample."""
    with tempfile.TemporaryDirectory(prefix="vc2-bench-validate-") as d:
        out = Path(d) / "kept.jsonl"
        t0 = time.perf_counter()
        report = validate([SAMPLE], out, workers=workers, warm=warm, sandbox_mode="bwrap")  # as RESULTS measured
        wall = time.perf_counter() - t0
        per = defaultdict(list)
        for line in out.with_name("kept.state.jsonl").read_text().splitlines():
            v = json.loads(line)
            per[v["language"]].append(v["wall_s"])
    return wall, report["written"], per


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="vc2's side (default: CPU count = %(default)s)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each side, interleaved (default: %(default)s)")
    p.add_argument("--node-cores", type=int, default=64, help="cores of the node to extrapolate to (default: %(default)s)")
    args = p.parse_args()
    sides = {"serial cold": (1, False), f"vc2 --workers {args.workers} + warm": (args.workers, True), "serial warm": (1, True)}
    walls, per_lang, kept = defaultdict(list), defaultdict(list), set()
    for rep in range(args.repeat):
        for name, (workers, warm) in sides.items():
            wall, written, per = side(workers, warm)
            walls[name].append(wall)
            kept.add(written)
            print(f"repeat {rep}: {name}: {wall:.1f} s, {written} rows kept", file=sys.stderr)
            if name == "serial warm":
                for lang, times in per.items():
                    per_lang[lang] += times
    rows = sum(1 for _ in SAMPLE.open())
    med = {name: statistics.median(w) for name, w in walls.items()}
    base, ours = med["serial cold"], med[f"vc2 --workers {args.workers} + warm"]
    for name, wall in med.items():
        print(f"{name:28s} {rows / wall:5.2f} rows/s  (median of {len(walls[name])}: {wall:.1f} s)")
    print(f"ratio vc2 / serial cold: {base / ours:.2f}x; rows kept per run: {sorted(kept)}")
    speedup = med["serial warm"] / ours  # what the workers add on top of warm servers
    cost = {lang: statistics.mean(t) for lang, t in per_lang.items()}  # seconds per row, one at a time, warm
    print("seconds per row, one at a time with warm servers: " +
          ", ".join(f"{lang} {cost[lang]:.2f}" for lang in sorted(cost, key=cost.get, reverse=True)))
    core_s = sum(n * cost[lang] for lang, n in DATASET.items()) + CODE_FEEDBACK * cost["python"]
    efficiency = speedup / args.workers
    hours = core_s / (args.node_cores * efficiency) / 3600
    total = sum(DATASET.values()) + CODE_FEEDBACK
    print(f"VisCode-Multi-679K ({total:,} rows): {core_s / 3600:.0f} core-hours one row at a time; on a "
          f"{args.node_cores}-core node at the measured per-worker efficiency {efficiency:.2f} "
          f"({speedup:.2f}x from {args.workers} workers): {hours:.1f} h ({total / (hours * 3600):.0f} rows/s)")


if __name__ == "__main__":
    main()
