"""Execution throughput of the evaluator over all bundled reference solutions: vc2's way (warm
workers, --workers parallel executions) vs the way the original harness runs renders (one task at a
time, each in a fresh tool process), measured in the same run. Also the median latency per language.

    python bench/bench_eval.py                 # all bundled tasks, --workers 2 + warm vs serial cold
    python bench/bench_eval.py --lang svg latex --workers 4
    python bench/bench_eval.py --no-warm       # parallel cold processes only: what scheduling alone buys

Both sides use the same executors and the same sandbox mode, and must reach the same outcome on
every task (checked). vc2's side includes starting its warm servers and submits the tasks in the
runner's order (languages interleaved). (The original harness also slept
a fixed 5 s per HTML page, where vc2 fast-forwards the page clock; that saving is in both sides here
and so not part of the ratio.)
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
from vc2.eval.runner import interleave
from vc2.eval.languages import BENCHMARK
from vc2.eval.tasks import load_tasks
from vc2.eval.warm import WarmPool


def run_task(task, sandbox, warm=None):
    with tempfile.TemporaryDirectory(prefix="vc2-bench-") as tmp:
        t0 = time.perf_counter()
        out = executors.run(task.language, task.reference_code, Path(tmp), data_csv=task.data_csv,
                            sandbox=sandbox, warm=warm)
        return task.language, out.status, time.perf_counter() - t0


def cpu_ticks():
    """(busy, total) jiffies over all cores, from /proc/stat."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def medians(rows):
    lat = defaultdict(list)
    for lang, _, dt in rows:
        lat[lang].append(dt)
    return ", ".join(f"{lang} {statistics.median(v):.2f}" for lang, v in lat.items())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", nargs="+", default=list(BENCHMARK), help="languages (default: the benchmark's eight)")
    p.add_argument("--workers", type=int, default=2, help="parallel executions for vc2's side (default: %(default)s)")
    p.add_argument("--sandbox", default="bwrap", help="sandbox mode for both sides (default: %(default)s, the mode its RESULTS figures were measured in; auto would pick containers where the images are built)")
    p.add_argument("--no-warm", action="store_true", help="vc2's side without warm workers (fresh process per task)")
    args = p.parse_args()
    tasks = [t for t in load_tasks(None, args.lang) if t.reference_code]
    print(f"{len(tasks)} tasks, sandbox {executors.describe_sandbox(args.sandbox)['sandbox']}", file=sys.stderr)

    c0 = cpu_ticks()
    t0 = time.perf_counter()
    serial = [run_task(t, args.sandbox) for t in tasks]
    serial_s = time.perf_counter() - t0
    c1 = cpu_ticks()

    pool = None if args.no_warm else WarmPool(args.sandbox)
    t0 = time.perf_counter()
    order = interleave(tasks)  # as the runner submits them: parallel workers mostly need different servers
    with ThreadPoolExecutor(args.workers) as threads:
        parallel = dict(zip([t.id for t in order], threads.map(lambda t: run_task(t, args.sandbox, pool), order)))
    parallel = [parallel[t.id] for t in tasks]
    parallel_s = time.perf_counter() - t0
    c2 = cpu_ticks()
    busy = lambda a, b: 100 * (b[0] - a[0]) / max(1, b[1] - a[1])
    if pool:
        pool.close()

    differ = [(t.id, a[1], b[1]) for t, a, b in zip(tasks, serial, parallel) if a[1] != b[1]]
    bad = [(lang, s) for lang, s, _ in serial + parallel if s != "pass"]
    side = f"--workers {args.workers}" + ("" if args.no_warm else " + warm workers")
    print(f"serial, fresh process per task: {len(tasks) / serial_s:.2f} executions/s ({serial_s:.1f} s, "
          f"CPU {busy(c0, c1):.0f}% busy)")
    print(f"vc2, {side}: {len(tasks) / parallel_s:.2f} executions/s ({parallel_s:.1f} s, CPU {busy(c1, c2):.0f}% busy)")
    print(f"ratio: {serial_s / parallel_s:.2f}x; non-pass outcomes: {len(bad)} {bad[:5]}; outcomes that differ: {differ[:5]}")
    if pool:
        print(f"warm pool: {pool.stats}")
    print(f"median latency per language, serial cold (s): {medians(serial)}")
    print(f"median latency per language, vc2 side (s):    {medians(parallel)}")


if __name__ == "__main__":
    main()
