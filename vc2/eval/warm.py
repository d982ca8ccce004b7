"""Warm workers: long-lived sandboxed renderers, so a task does not pay for starting Chromium,
LilyPond's Guile, V8 or matplotlib's imports again. The runner and bench_eval.py use them by default.

    from vc2.eval import executors, warm
    with warm.WarmPool("auto") as pool:
        out = executors.run("html", code, workdir, warm=pool)    # same Outcome as a cold run
    pool.stats    # {"warm": tasks served warm, "cold": fallbacks, "started": servers, "failed": [...]}

One server = one executors/warm_server.py in a sandbox.Box of its own (the same wrapping as a cold run:
namespaces, the unprivileged user, the minimal root, seccomp, rlimits, no network; and, as root, a
tmpfs dir and a cgroup for the server and its tasks), talking JSON lines over stdin/stdout. Per task,
the host copies the work dir into a fresh, randomly named dir inside the server's, sends a request
with a fresh nonce, and accepts only the answer that carries it; then it copies the results back and
empties the server's dir. Servers are kept per (kind, options) and per worker thread's demand: at most
one per concurrently running task, and replaced after MAX_TASKS tasks.

What a task can reach (python and lilypond run task code as processes; warm_server.py's docstring says how):
- not its server: the task is a fork of it, but in a user and pid namespace of its own, where the
  server has no pid to signal, trace or open (and the server is not dumpable, and ptrace,
  process_vm_* and pidfd_getfd are refused by seccomp); it was forked before the request arrived, so
  it never holds the nonce; all the server's fds are closed in it;
- not a later task: when the task's first process exits, the kernel kills every other process of its
  pid namespace before the server answers; the server also sweeps and wipes its scratch tmpfs, and
  the host empties the dir; the next task gets a fresh dir name the task could not guess;
- vegalite and browser tasks run no processes (a JSON spec; page JavaScript in Chromium), and their
  state is reset per task (see warm_server.py).

Safety rules:
- Warm workers change speed, never a verdict: a server that does not start, dies, or answers
  anything unexpected (a wrong nonce included) is discarded and the task runs cold through
  sandbox.run. A timeout kills the server with its task (the verdict is "timeout", as cold); the next
  task gets a fresh server.
- They need a pid namespace (bwrap, unshare, or a container: the server then runs inside the
  language's image, its pid 1 being vc2's container init) to be sure nothing of a task outlives it;
  in plain mode every task runs cold, and in a container so does Python (see run()). Servers are kept
  per (job, mode, image).
- Limits: per-task CPU/memory/file-size rlimits are set in the forked task process (python,
  lilypond); the server's cgroup (memory total, process count: the task's limits plus the server's own
  share) and tmpfs (the task's disk quota plus the preload) hold for the server and its one task at
  a time; vegalite and browser tasks run under the server's limits.
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
MODES = ("bwrap", "unshare", "podman", "docker")   # the sandbox modes with a pid namespace
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


def _empty(path, keep=()):
    """Remove everything inside `path` but `keep` (the task may have left read-only or unreadable dirs)."""
    def fix(func, p, _):
        os.chmod(os.path.dirname(p), 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
        func(p)
    for entry in list(path.iterdir()):
        if entry.name in keep:
            continue
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


# What a server needs on top of its one task's limits: its own memory (Chromium ~400 MB, matplotlib
# ~150 MB) and threads, and the preloaded files in its dir.
SERVER_MEM_MB, SERVER_NPROC, SERVER_DISK_MB = 1024, 256, 64
LOGS_MB = 16  # the tasks' stdout/stderr files (the host keeps the last sandbox.TAIL characters)


class Server:
    """One warm_server.py in its own sandbox.Box. Not thread-safe: one task at a time (the pool sees to it)."""

    def __init__(self, job, mode, limits: sb.Limits, image=None):
        self.job, self.mode, self.tasks, self.killed = job, mode, 0, False
        self.box = sb.Box(mode, sb.Limits(None, limits.mem_mb + SERVER_MEM_MB, limits.fsize_mb,
                                           limits.nproc + SERVER_NPROC, limits.nofile,
                                           limits.disk_mb + SERVER_DISK_MB), kind="warm", image=image)
        self.token, self.dir = self.box.token, self.box.dir
        self.buf = b""
        try:
            extra = {"HOME": "/tmp", "TMPDIR": "/tmp"}
            if job.preload_dir:  # read at start-up only (matplotlib's font list), removed once the server is up
                self.box.copy_in(job.preload_dir, sub=".preload")
                extra["MPLCONFIGDIR"] = str(self.dir / ".preload")
            # The tasks' stdout/stderr go to a small tmpfs of their own: a task that fills its disk quota
            # must still get its error message out.
            self.logs = self.dir / ".logs"
            self.logs.mkdir()
            if self.box.mounted:
                sb.mount_tmpfs(self.logs, LOGS_MB, *(self.box.user[:2] if self.box.user else (0, 0)))
            elif self.box.user:
                os.chown(self.logs, *self.box.user[:2])
            # the server's own scratch (Chromium's profile) is the sandbox's private /tmp, never the task dir
            env = sb.environment(self.dir, self.token, extra)
            self.proc = self.box.popen([sys.executable, "-I", str(SERVER), job.kind, *map(str, job.server_args)],
                                       env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.log = sb.TailReader(self.proc.stderr)  # the server's own messages: bounded, no disk
            hello = self._read(START_TIMEOUT_S)
        except ServerFailed:
            hello = None
        except BaseException:
            self.kill()
            raise
        if not hello or not hello.get("ready"):
            why = (hello or {}).get("error") or self.log_tail() or "no answer"
            self.kill()
            raise ServerFailed(f"warm {job.kind} server did not start: {why}")
        shutil.rmtree(self.dir / ".preload", ignore_errors=True)  # nothing of ours stays writable between tasks

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
                if len(self.buf) > 1 << 20:
                    raise ServerFailed(f"warm {self.job.kind} server answered more than 1 MB")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise ServerFailed(f"warm {self.job.kind} server answered {line[:200]!r}") from None

    def log_tail(self, n=600):
        log = getattr(self, "log", None)
        return b"".join(list(log.buf)).decode("utf-8", "replace")[-n:].strip() if log else ""

    def run(self, workdir, timeout_s, env, limits, task_args=()):
        """Render the task in `workdir` (results copied back into it); a sandbox.Result like sandbox.run's."""
        name = f"t-{secrets.token_hex(8)}"  # a fresh dir per task, not guessable by an earlier one
        task = self.box.copy_in(workdir, sub=name)
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        nonce = secrets.token_hex(16)
        req = {"nonce": nonce, "dir": str(task), "out": str(out), "err": str(err),
               "env": sb.environment(task, self.token, env), "limits": limits, "args": [str(a) for a in task_args]}
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
            self.box.kill()
        elif answer.get("nonce") != nonce:
            raise ServerFailed(f"warm {self.job.kind} server: an answer without this task's nonce: {str(answer)[:200]}")
        elif answer.get("rc") is None:
            raise ServerFailed(f"warm {self.job.kind} engine failed: {answer.get('error')}")
        oom = self.box.oom_killed()
        stderr = _tail(err) + (f"\n[vc2 sandbox] killed: memory total reached" if oom else "")
        res = sb.Result(None if answer is None else answer["rc"], _tail(out), stderr, wall,
                        answer is None, self.mode, self.token, oom)
        sb.copy_back(task, Path(workdir))
        if answer is None:
            self.kill()
        else:
            _empty(self.dir, keep={".logs"})
            _empty(self.logs)
        if oom:  # the server's own state may be damaged: do not lend it again
            self.kill()
        return res

    def alive(self):
        return not self.killed and self.proc.poll() is None

    def kill(self):
        """Kill the server and everything of its sandbox, and remove the box; once."""
        if self.killed:
            return
        self.killed = True
        self.box.close()


class WarmPool:
    """Servers per WarmJob, lent to one task at a time. See the module docstring."""

    def __init__(self, mode="auto", max_tasks=MAX_TASKS):
        self.mode = sb.resolve(mode)  # a task's own mode rules (run()): auto may give it a container
        self.max_tasks = max_tasks
        self.why_cold = None if self.mode in MODES else \
            f"warm workers need a pid namespace (bwrap, unshare, a container); in sandbox mode {self.mode} every task runs cold"
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

    def run(self, job, workdir, mode, timeout_s, env=None, mem_mb=2048, fsize_mb=256, nproc=512, nofile=1024,
            disk_mb=512):
        """A sandbox.Result, or None when the task must run cold (see the module docstring)."""
        task_limits = sb.Limits(timeout_s, mem_mb, fsize_mb, nproc, nofile, disk_mb)
        # servers per (job, mode, image): under auto one language may run in its image, another in bwrap
        image = sb.current_image() if mode in sb.ENGINES else None
        key = (job.server, mode, image)
        if self.why_cold or mode not in MODES or key in self._broken:
            return self._cold()
        if image and job.kind == "python":
            # A forked Python task sees the container's /proc, where its own pid (of its task namespace)
            # is absent, so psutil.Process() fails (holoviews' extension loading does); a new /proc cannot
            # be mounted over the engine's masked one. Under bwrap the numbers happen to line up.
            return self._cold()
        with self._lock:
            server = self._idle[key].pop() if self._idle[key] else None
        if server is None:
            try:
                server = self._spawner.submit(Server, job, mode, task_limits, image).result()
            except ServerFailed as e:
                with self._lock:
                    if key not in self._broken:
                        self._broken[key] = str(e)
                        self.stats["failed"].append(str(e))
                        print(f"vc2: {e}; {job.kind} tasks run cold", file=sys.stderr)
                return self._cold()
            with self._lock:
                self._all.add(server)
                self.stats["started"] += 1
        limits = {"cpu": int(2 * timeout_s + 10), "data": mem_mb << 20, "fsize": fsize_mb << 20,
                  "nofile": nofile}
        try:
            res = server.run(workdir, timeout_s, env, limits, job.task_args)
        except (ServerFailed, OSError) as e:  # OSError: e.g. the task's dir could not be made or emptied
            self._retire(server)
            with self._lock:
                self.stats["failed"].append(str(e)[:300])
            return self._cold()
        if res.timed_out or server.tasks >= self.max_tasks or not server.alive():
            self._retire(server)
        else:
            with self._lock:
                self._idle[key].append(server)
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
