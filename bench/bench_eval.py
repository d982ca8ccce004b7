"""Execution throughput of the evaluator over all bundled reference solutions: the runner's parallel
executions (--workers) vs the same programs run the way the original harness runs renders, one task at a
time, each in a fresh tool process, measured in the same run. Also the median latency per language.

    python bench/bench_eval.py                 # all bundled tasks, --workers 2 vs serial
    python bench/bench_eval.py --lang svg latex --workers 4

Both sides use the same executors and sandbox, so the ratio isolates the scheduling: parallel workers
vs a serial loop. (The original harness also slept a fixed 5 s per HTML page, where vc2 fast-forwards
the page clock; that saving is inside both sides here and so not part of the ratio.)
"""
import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vc2.eval import executors
from vc2.eval.tasks import LANGUAGES, load_tasks


def run_task(task, sandbox):
    with tempfile.TemporaryDirectory(prefix="vc2-bench-") as tmp:
        t0 = time.perf_counter()
        out = executors.run(task.language, task.reference_code, Path(tmp), data_csv=task.data_csv, sandbox=sandbox)
        return task.language, out.status, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", nargs="+", default=list(LANGUAGES), help="languages (default: all eight)")
    p.add_argument("--workers", type=int, default=2, help="parallel executions for vc2's side (default: %(default)s)")
    p.add_argument("--sandbox", default="auto", help="sandbox mode for both sides (default: %(default)s)")
    args = p.parse_args()
    tasks = [t for t in load_tasks(None, args.lang) if t.reference_code]
    print(f"{len(tasks)} tasks, sandbox {executors.describe_sandbox(args.sandbox)['sandbox']}", file=sys.stderr)

    t0 = time.perf_counter()
    serial = [run_task(t, args.sandbox) for t in tasks]
    serial_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        parallel = list(pool.map(lambda t: run_task(t, args.sandbox), tasks))
    parallel_s = time.perf_counter() - t0

    bad = [(lang, s) for lang, s, _ in serial + parallel if s != "pass"]
    lat = defaultdict(list)
    for lang, _, dt in serial:
        lat[lang].append(dt)
    print(f"serial, fresh process per task: {len(tasks) / serial_s:.2f} executions/s ({serial_s:.1f} s)")
    print(f"vc2, --workers {args.workers}:            {len(tasks) / parallel_s:.2f} executions/s ({parallel_s:.1f} s)")
    print(f"ratio: {serial_s / parallel_s:.2f}x; non-pass outcomes: {len(bad)} {bad[:5]}")
    print("median latency per language (serial side): " +
          ", ".join(f"{lang} {statistics.median(v):.2f} s" for lang, v in lat.items()))


if __name__ == "__main__":
    main()
