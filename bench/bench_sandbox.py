"""What each sandbox protection costs per task: wall time of a trivial program through sandbox.run per
mode, with every protection on and with the tmpfs work dir or the cgroup switched off (interleaved,
medians), plus a warm Python task's round trip.

    python bench/bench_sandbox.py            # bwrap, unshare, plain; 30 runs each
    python bench/bench_sandbox.py --runs 60 --modes bwrap
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vc2.eval import executors, sandbox
from vc2.eval.warm import WarmPool

VARIANTS = {
    "all protections": {},
    "no tmpfs work dir": {"quota_available": lambda: False},
    "no cgroup": {"_cgroup_roots": lambda: []},
}


def one_run(mode, patch):
    saved = {k: getattr(sandbox, k) for k in patch}
    for k, v in patch.items():
        setattr(sandbox, k, v)
    try:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            r = sandbox.run(["/bin/true"], d, timeout_s=30, mode=mode)
            dt = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        return dt
    finally:
        for k, v in saved.items():
            setattr(sandbox, k, v)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=["bwrap", "unshare", "plain"], help="sandbox modes to time")
    p.add_argument("--runs", type=int, default=30, help="runs per mode and variant (default: %(default)s)")
    args = p.parse_args()
    print(f"sandbox: {sandbox.describe()}")
    for mode in args.modes:
        sandbox.resolve(mode)
        times = {v: [] for v in VARIANTS}
        for _ in range(args.runs):  # interleaved, so load changes hit every variant alike
            for name, patch in VARIANTS.items():
                times[name].append(one_run(mode, patch))
        full = statistics.median(times["all protections"])
        parts = ", ".join(f"{n}: {1000 * statistics.median(t):.1f} ms" for n, t in times.items())
        print(f"{mode:8s} /bin/true per run (median of {args.runs}): {parts}")
        if mode in ("bwrap", "unshare"):
            with WarmPool(mode) as pool, tempfile.TemporaryDirectory() as d:
                lat = []
                for i in range(args.runs + 1):
                    t0 = time.perf_counter()
                    out = executors.run("python", "print(1)\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\n",
                                        Path(d) / str(i), sandbox=mode, warm=pool)
                    assert out.status == "pass", out.error
                    if i:  # the first one starts the server
                        lat.append(time.perf_counter() - t0)
                print(f"{mode:8s} warm Python task (a line plot) round trip: median {1000 * statistics.median(lat):.0f} ms "
                      f"(/bin/true cold with all protections: {1000 * full:.1f} ms); pool {pool.stats}")


if __name__ == "__main__":
    main()
