"""Warm workers: long-lived sandboxed renderers, so a task does not pay for starting Chromium,
LilyPond's Guile, V8 or matplotlib's imports again. The runner and bench_eval.py use them by default.

    from vc2.eval import executors, warm
    with warm.WarmPool("auto") as pool:
        out = executors.run("html", code, workdir, warm=pool)    # same Outcome as a cold run
    pool.stats    # {"warm": tasks served warm, "cold": fallbacks, "started": servers, "failed": [...]}

One server = one executors/warm_server.py inside the same sandbox as a cold run (sandbox._wrap:
bwrap or unshare namespaces, the unprivileged user, rlimits, no network), talking JSON lines over
stdin/stdout. Per task, the host copies the work dir into the server's private dir (<dir>/t), the
server renders it, and for kinds that run task code in processes (python, lilypond) kills every
process left in its pid namespace and empties the writable tmpfs before it answers; the host then
copies the results back and empties the private dir. How each kind keeps tasks apart is in
warm_server.py's docstring. Servers are kept per (kind, options) and per worker thread's demand:
at most one per concurrently running task, and replaced after MAX_TASKS tasks.

Safety rules:
- Warm workers change speed, never a verdict: a server that does not start, dies, or answers
  anything unexpected (a task that kills its own server included) is discarded and the task runs
  cold through sandbox.run. A timeout kills the server with its task (the verdict is "timeout",
  as cold); the next task gets a fresh server.
- They need a pid namespace (bwrap, unshare) to be sure nothing of a task outlives it; in plain and
  container modes every task runs cold.
- Limits: per-task CPU/memory/file-size rlimits are set in the forked task process (python,
  lilypond); vegalite and browser tasks run under the server's limits. The server's private dir is
  the same for every task it serves (<dir>/t), emptied in between.
"""
import atexit
import json
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vc2.eval import sandbox as sb

SERVER = Path(__file__).resolve().parent / "executors" / "warm_server.py"
MODES = ("bwrap", "unshare")   # the sandbox modes with a pid namespace
START_TIMEOUT_S = 180.0        # Chromium on a loaded 2-core machine takes a few seconds; be generous
MAX_TASKS = 200                # then the server is replaced (bounds memory a kept browser may gather)


@dataclass(frozen=True)
class WarmJob:
    kind: str                      # python | vegalite | browser | lilypond
    server_args: tuple = ()        # fixed for a server's life (lilypond's command-line options)
    task_args: tuple = ()          # per task (browser: "html" | "mermaid", the vendor dir)
    preload_dir: str | None = None  # copied into the server's dir as .preload before it starts

    @property
    def server(self):
        """Jobs with the same server key share servers (html and mermaid share a browser)."""
        return self.kind, self.server_args, self.preload_dir


class ServerFailed(Exception):
    """The warm engine failed (not the task): the caller falls back to a cold run."""


def _empty(path):
    """Remove everything inside `path` (the task may have left read-only or unreadable dirs)."""
    def fix(func, p, _):
        os.chmod(os.path.dirname(p), 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
        func(p)
    for entry in list(path.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, onerror=fix)
        else:
            entry.unlink()


def _tail(path):
    """The end of a log file the task could have replaced: no links, no FIFOs (O_NONBLOCK + regular check)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        f.seek(max(0, st.st_size - sb.TAIL))
        return f.read(sb.TAIL).decode("utf-8", "replace")


class Server:
    """One warm_server.py in its own sandbox. Not thread-safe: one task at a time (the pool sees to it)."""

    def __init__(self, job, mode, mem_mb, fsize_mb, nproc, nofile):
        self.job, self.mode, self.tasks, self.killed = job, mode, 0, False
        self.user = sb.sandbox_user()
        self.token = secrets.token_hex(8)
        self.dir = Path(tempfile.mkdtemp(prefix="vc2-warm-", dir="/tmp"))  # bound read-write inside
        fd, log = tempfile.mkstemp(prefix="vc2-warm-log-")                 # the server's stderr, outside
        os.close(fd)
        self.log = Path(log)
        self.buf = b""
        if job.preload_dir:
            shutil.copytree(job.preload_dir, self.dir / ".preload")
        if self.user:
            sb._chown_tree(self.dir, self.user[0], self.user[1])
        # the server's own scratch (Chromium's profile) is the sandbox's private /tmp, never the task dir
        env = sb._env(self.dir, self.token, {"HOME": "/tmp", "TMPDIR": "/tmp"})
        limits = sb._limits(None, mem_mb, fsize_mb, nproc, nofile)  # no CPU limit: the server lives long
        argv = sb._wrap(mode, [sys.executable, "-I", str(SERVER), job.kind, *map(str, job.server_args)],
                        self.dir, self.user, env, limits, f"vc2-{self.token}")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=self.dir, env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        try:
            hello = self._read(START_TIMEOUT_S)
        except ServerFailed:
            hello = None
        if not hello or not hello.get("ready"):
            why = (hello or {}).get("error") or self.log_tail() or "no answer"
            self.kill()
            raise ServerFailed(f"warm {job.kind} server did not start: {why}")

    def _read(self, timeout_s):
        """The next JSON line from the server; None on timeout; ServerFailed if it closed its end."""
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise ServerFailed(f"warm {self.job.kind} server exited ({self.log_tail()})")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise ServerFailed(f"warm {self.job.kind} server answered {line[:200]!r}") from None

    def log_tail(self, n=600):
        try:
            return self.log.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def run(self, workdir, timeout_s, env, limits, task_args=()):
        """Render the task in `workdir` (results copied back into it); a sandbox.Result like sandbox.run's."""
        task = self.dir / "t"
        shutil.copytree(workdir, task, symlinks=True)  # fails if the last task's dir were still there
        (task / ".tmp").mkdir(exist_ok=True)
        if self.user:
            sb._chown_tree(task, self.user[0], self.user[1])
        out, err = self.dir / "_out", self.dir / "_err"
        req = {"dir": str(task), "out": str(out), "err": str(err), "env": sb._env(task, self.token, env),
               "limits": limits, "args": [str(a) for a in task_args]}
        t0 = time.monotonic()
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise ServerFailed(f"warm {self.job.kind} server is gone: {e}") from None
        answer = self._read(timeout_s)
        wall = time.monotonic() - t0
        self.tasks += 1
        if answer is None:  # the wall-clock limit: the server goes with its task
            self.kill(keep_dir=True)
        elif answer.get("rc") is None:
            raise ServerFailed(f"warm {self.job.kind} engine failed: {answer.get('error')}")
        res = sb.Result(None if answer is None else answer["rc"], _tail(out), _tail(err), wall,
                        answer is None, self.mode, self.token)
        sb._copy_back(task, Path(workdir))
        if answer is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            _empty(self.dir)
        return res

    def alive(self):
        return self.proc.poll() is None

    def kill(self, keep_dir=False):
        """Kill the server and everything of its sandbox; once (a timed-out run kills, then the pool retires)."""
        if self.killed:
            if not keep_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            return
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        sb._sweep(self.token)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.log.unlink(missing_ok=True)


class WarmPool:
    """Servers per WarmJob, lent to one task at a time. See the module docstring."""

    def __init__(self, mode="auto", max_tasks=MAX_TASKS):
        self.mode = sb.resolve(mode)
        self.max_tasks = max_tasks
        self.why_cold = None if self.mode in MODES else \
            f"warm workers need a pid namespace (bwrap or unshare); in sandbox mode {self.mode} every task runs cold"
        self.stats = {"warm": 0, "cold": 0, "started": 0, "failed": []}
        self._idle = defaultdict(list)
        self._all = set()
        self._broken = {}
        self._lock = threading.Lock()
        # bwrap --die-with-parent ties a server to the *thread* that started it: start them from
        # threads that live as long as the pool (an executor's threads never end before shutdown),
        # not from a worker thread that may end first. Several, so that two workers each waiting
        # for a server of their own do not wait for each other's start-up too.
        self._spawner = ThreadPoolExecutor(4, thread_name_prefix="vc2-warm-spawn")
        atexit.register(self.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, job, workdir, mode, timeout_s, env=None, mem_mb=2048, fsize_mb=256, nproc=512, nofile=1024):
        """A sandbox.Result, or None when the task must run cold (see the module docstring)."""
        if self.why_cold or mode != self.mode or job.server in self._broken:
            return self._cold()
        with self._lock:
            server = self._idle[job.server].pop() if self._idle[job.server] else None
        if server is None:
            try:
                server = self._spawner.submit(Server, job, self.mode, mem_mb, fsize_mb, nproc, nofile).result()
            except ServerFailed as e:
                with self._lock:
                    if job.server not in self._broken:
                        self._broken[job.server] = str(e)
                        self.stats["failed"].append(str(e))
                        print(f"vc2: {e}; {job.kind} tasks run cold", file=sys.stderr)
                return self._cold()
            with self._lock:
                self._all.add(server)
                self.stats["started"] += 1
        limits = {"cpu": int(2 * timeout_s + 10), "data": mem_mb << 20, "fsize": fsize_mb << 20}
        try:
            res = server.run(workdir, timeout_s, env, limits, job.task_args)
        except (ServerFailed, OSError) as e:  # OSError: e.g. the last task's dir could not be emptied
            self._retire(server)
            with self._lock:
                self.stats["failed"].append(str(e)[:300])
            return self._cold()
        if res.timed_out or server.tasks >= self.max_tasks or not server.alive():
            self._retire(server)
        else:
            with self._lock:
                self._idle[job.server].append(server)
        with self._lock:
            self.stats["warm"] += 1
        return res

    def _cold(self):
        with self._lock:
            self.stats["cold"] += 1
        return None

    def _retire(self, server):
        server.kill()
        with self._lock:
            self._all.discard(server)

    def close(self):
        with self._lock:
            servers, self._all, self._idle = list(self._all), set(), defaultdict(list)
        for s in servers:
            s.kill()
        self._spawner.shutdown(wait=False)
