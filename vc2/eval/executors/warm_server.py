"""Runs inside the sandbox: a warm worker that renders many tasks, one at a time, for vc2/eval/warm.py.

    python -I warm_server.py python|vegalite|browser|lilypond [LILYPOND OPTIONS...]

It pays a renderer's start-up once (matplotlib/pandas imports, V8, Chromium, LilyPond's Guile) and
then answers one JSON line per task on stdin with one JSON line on stdout:
    in:  {"nonce": N, "dir": task dir, "out": file, "err": file, "env": {...}, "limits": {"cpu": s,
          "data": B, "fsize": B, "nofile": n}, "args": [...]}
    out: {"nonce": N, "rc": exit code, as the cold driver would have returned it}
         or {"nonce": N, "rc": null, "error": why}
"rc": null means the warm engine itself failed; the host then kills this server and runs the task cold.
The host accepts only an answer with the request's nonce.

How each kind keeps tasks apart:
- python: each task is a fork of a parent that never ran task code, made *before* the request is
  read (so it never holds the nonce), with every fd of the server closed. It enters a user and pid
  namespace of its own (unshare(2); taskns() below): the server has no pid there, so the task cannot
  signal it, and cannot trace it or open its /proc files either (the server is not dumpable; the
  sandbox's seccomp filter refuses ptrace, process_vm_* and pidfd_getfd). Its first process is a
  small init; the task proper runs under it with the task's env, rlimits, cwd, no capabilities and
  fresh random seeds (py_driver.main()); when the init exits, the kernel kills whatever else the task
  left in its namespace. lilypond: the same in lily_server.scm (Guile, through its C FFI).
- vegalite: the specs run in this process's vl-convert; a spec is declarative JSON (no code, no
  network: allowed_base_urls=[]), so there is no task state to carry over.
- browser: one kept Chromium. HTML pages take turns in one kept tab, each at an origin of its own
  (storage never crosses pages) and scrubbed after (browser_driver.HtmlTab.forget: popups closed,
  page unloaded, history dropped, window.name reset, storage and cookies cleared). Page JavaScript
  cannot start processes or write files. Mermaid diagrams share one kept page, reset per diagram:
  Mermaid text is declarative (securityLevel strict runs no scripts).
After a python or lilypond task, every process left in this pid namespace (daemons, setsid'd
children) is killed and the writable tmpfs (/tmp, /var/tmp, /dev/shm, /run, /home, /root) emptied,
before answering; the host empties the task dir. Only then does the next task start.
"""
import ctypes
import importlib.util
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/home", "/root")  # private tmpfs inside the sandbox


def load(name):
    """A sibling driver module by path (-I keeps this directory off sys.path, and importing the vc2
    package would import torch)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


status = load("status")


# ---------------------------------------------------------------------------------------------
# cleaning up after a task

def _ancestors():
    pid, out = os.getpid(), set()
    while pid > 1:
        out.add(pid)
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return out


def _own_pid_namespace():
    """True only inside the sandbox's pid namespace: pid 1 is bwrap, vc2's container init (or us, under
    unshare) and every other process visible runs as our uid. Outside one, a sweep would kill the host's
    processes."""
    if os.getpid() != 1:
        with open("/proc/1/comm") as f, open("/proc/1/cmdline", "rb") as g:
            if f.read().strip() != "bwrap" and b"container_init.py" not in g.read():
                return False
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "1":
            try:
                if os.stat(f"/proc/{name}").st_uid != os.getuid():
                    return False
            except FileNotFoundError:
                pass
    return True


def sweep(keep=()):
    """SIGKILL every process of this pid namespace except pid 1, us, our ancestors and `keep`; repeat
    until only zombies (which pid 1, or we, reap) are left. Refuses to run outside the sandbox."""
    if not _own_pid_namespace():
        raise RuntimeError("not in a pid namespace of our own: refusing to sweep (run me through vc2.eval.warm)")
    keep = _ancestors() | set(keep) | {1}
    for _ in range(200):
        alive = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in keep:
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        os.waitpid(int(name), os.WNOHANG)  # ours to reap (we are pid 1 under unshare)
                        continue
                os.kill(int(name), signal.SIGKILL)
                alive.append(name)
            except (OSError, ChildProcessError):
                pass
        if not alive:
            return
        time.sleep(0.005)
    raise RuntimeError(f"processes survive SIGKILL: {alive}")


def wipe():
    """Empty the private tmpfs dirs, sparing mount points (the task dir, bound-in paths) and their parents.
    Only those that are tmpfs mounts: in a container, /root and /run belong to the read-only image."""
    table = [line.split() for line in open("/proc/self/mounts")]
    mounts, tmpfs = [m[1] for m in table], {m[1] for m in table if m[2] == "tmpfs"}
    for top in SCRATCH:
        if not os.path.isdir(top) or top not in tmpfs:
            continue
        for name in os.listdir(top):
            path = os.path.join(top, name)
            if any(m == path or m.startswith(path + "/") for m in mounts):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


@contextmanager
def redirected(out, err):
    """Point fds 1 and 2 at the task's log files while an in-process kind renders."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


# ---------------------------------------------------------------------------------------------
# the kinds: start_<kind>() warms up once and returns (handle, spare): handle(request) -> exit code,
# spare = pids of our own helpers that a sweep must not kill

# ---------------------------------------------------------------------------------------------
# a task in namespaces of its own (python here; lily_server.scm does the same in Scheme)

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
PR_SET_DUMPABLE = 4


def not_dumpable():
    """No process of our uid may trace us or open our /proc/<pid>/{mem,fd,environ}: a task runs as our uid."""
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def drop_capabilities():
    """A fresh user namespace gives its first process every capability in it: give them all up."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    if _libc.capset(ctypes.byref(Header(0x20080522, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def taskns():
    """Enter a new user + pid namespace (our uid mapped to itself); the next fork is its pid 1.
    Writing our own /proc/self maps needs us dumpable for a moment: nothing else of our uid runs now."""
    uid, gid = os.getuid(), os.getgid()
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    not_dumpable()  # the init inherits this: the task cannot touch it either


class Prefork:
    """A task process forked before its request exists: it waits on a pipe for the task (never the
    nonce), then runs `body(task)` in namespaces of its own. run(task) -> the exit code, as waitpid
    reports it for a cold process (negative: killed by that signal)."""

    def __init__(self, body):
        self.req_r, self.req_w = os.pipe()
        self.st_r, self.st_w = os.pipe()  # the init's report: the task's wait status
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            code = status.EXIT_ENGINE
            try:
                os.dup2(os.open("/dev/null", os.O_RDWR), 0)  # the server's request pipe: not ours to read
                os.dup2(0, 1)                                # the host's answer channel: gone
                keep = {2, self.req_r, self.st_w}
                for fd in os.listdir("/proc/self/fd"):
                    if int(fd) > 2 and int(fd) not in keep:
                        try:
                            os.close(int(fd))
                        except OSError:
                            pass
                task = json.loads(_read_all(self.req_r))
                taskns()
                init = os.fork()
                if init == 0:
                    _init(body, task, self.st_w)
                os._exit(os.waitstatus_to_exitcode(os.waitpid(init, 0)[1]) & 0xFF)
            except BaseException:
                traceback.print_exc()
            os._exit(code)
        os.close(self.req_r)
        os.close(self.st_w)

    def run(self, task):
        with os.fdopen(self.req_w, "w") as f:
            f.write(json.dumps(task))
        _, st = os.waitpid(self.pid, 0)
        report = _read_all(self.st_r)
        if os.waitstatus_to_exitcode(st) != 0 or not report:
            raise RuntimeError(f"the task's init failed (exit {os.waitstatus_to_exitcode(st)})")
        return os.waitstatus_to_exitcode(int(report))

    def discard(self):
        os.close(self.req_w)
        os.waitpid(self.pid, 0)


def _read_all(fd):
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def _init(body, task, status_fd):
    """pid 1 of the task's namespace: run the task as pid 2, reap orphans, report the task's status."""
    try:
        pid = os.fork()
        if pid == 0:
            os.close(status_fd)
            drop_capabilities()
            body(task)  # never returns
        while True:
            got, st = os.waitpid(-1, 0)
            if got == pid:
                os.write(status_fd, str(st).encode())
                break
    finally:
        os._exit(0)  # the kernel now kills every other process of the namespace


def start_python():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (font list loaded from the seeded MPLCONFIGDIR)
    for name in ("numpy", "pandas"):  # imports without side effects on other modules; seaborn has some
        try:
            __import__(name)
        except ImportError:
            pass
    driver = load("py_driver")

    def body(req):  # the task, in its own namespaces: never returns
        code = status.EXIT_ENGINE
        try:
            os.chdir(req["dir"])
            os.environ.clear()
            os.environ.update(req["env"])
            for name, value in req["limits"].items():
                resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (value, value))
            os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
            os.dup2(os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
            os.dup2(os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
            os.closerange(3, 1 << 16)
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # as a cold process (the server stays undumpable)
            random.seed()  # a cold interpreter seeds from the OS; a fork would repeat the parent's state
            if "numpy" in sys.modules:
                sys.modules["numpy"].random.seed()
            sys.argv = ["plot.py"]
            code = driver.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else status.EXIT_RUNTIME
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    state = {}

    def prepare():  # fork the next task's process now, while no request is in memory
        state["next"] = Prefork(body)

    def handle(req):
        child = state.pop("next")
        return child.run({k: req[k] for k in ("dir", "out", "err", "env", "limits")})

    handle.prepare = prepare
    return handle, []


def start_vegalite():
    import vl_convert
    vl_convert.vegalite_to_png({"mark": "point", "data": {"values": [{"a": 1}]},
                                "encoding": {"x": {"field": "a", "type": "quantitative"}}})  # starts V8
    driver = load("vl_driver")

    def handle(req):
        os.chdir(req["dir"])
        with redirected(req["out"], req["err"]):
            return driver.main()
    return handle, []


def start_browser():
    driver = load("browser_driver")
    from playwright.sync_api import sync_playwright
    browser = driver.launch(sync_playwright().start())
    kept = {}  # the mermaid page (bundle loaded once) and the HTML tab, see browser_driver

    def handle(req):
        kind, vendor = req["args"]
        os.chdir(req["dir"])
        if not browser.is_connected():
            raise RuntimeError("the browser is gone")
        if kind == "mermaid" and "mermaid" not in kept:
            kept["mermaid"] = driver.new_mermaid_page(browser, Path(vendor))
        if kind == "html" and "html" not in kept:
            kept["html"] = driver.HtmlTab(browser, Path(vendor))
        with redirected(req["out"], req["err"]):
            return driver.render(browser, kind, Path(vendor), mermaid_page=kept.get("mermaid"),
                                 html_tab=kept.get("html"))
    return handle, []


def start_lilypond():
    # lily_server.scm makes itself undumpable and runs each score in namespaces of its own. Scheme cannot
    # load status.py: it gets the one exit code it needs defined before it is loaded.
    scheme = f'(define vc2-exit-engine {status.EXIT_ENGINE}) (load "{HERE / "lily_server.scm"}")'
    engine = subprocess.Popen(["lilypond", *sys.argv[2:], "-e", scheme, "_vc2_none.ly"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if engine.stdout.readline().strip() != "ready":
        raise RuntimeError(f"lilypond did not start (exit {engine.poll()})")

    def handle(req):
        lim = req["limits"]
        engine.stdin.write(f"{req['dir']}\t{req['err']}\t{lim['cpu']}\t{lim['data']}\t{lim['fsize']}\n")
        engine.stdin.flush()
        line = engine.stdout.readline().strip()
        if not line.lstrip("-").isdigit() or int(line) == status.EXIT_ENGINE:
            raise RuntimeError(f"the lilypond engine failed ({line or 'it exited'})")
        open(req["out"], "w").close()
        return int(line)
    return handle, [engine.pid]


# ---------------------------------------------------------------------------------------------

def main(kind):
    answer = os.fdopen(os.dup(1), "w")  # the host's channel; fd 1 itself goes to our log from here on
    os.dup2(2, 1)
    try:
        not_dumpable()
        handle, spare = {"python": start_python, "vegalite": start_vegalite, "browser": start_browser,
                         "lilypond": start_lilypond}[kind]()
    except Exception:
        traceback.print_exc()
        print(json.dumps({"ready": False, "error": traceback.format_exc(limit=3)}), file=answer, flush=True)
        return 1
    print(json.dumps({"ready": True}), file=answer, flush=True)
    isolate = kind in ("python", "lilypond")  # kinds whose task code runs in processes of their own
    prepare = getattr(handle, "prepare", None)
    while True:
        if prepare:
            prepare()
        line = sys.stdin.readline()
        if not line:
            return 0
        req = json.loads(line)
        try:
            rc = handle(req)
            if isolate:
                sweep(keep=spare)
                wipe()
        except Exception:
            traceback.print_exc()
            print(json.dumps({"nonce": req.get("nonce"), "rc": None, "error": traceback.format_exc(limit=3)}),
                  file=answer, flush=True)
            return 1
        print(json.dumps({"nonce": req.get("nonce"), "rc": rc}), file=answer, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
