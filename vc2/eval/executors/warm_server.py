"""Runs inside the sandbox: a warm worker that renders many tasks, one at a time, for vc2/eval/warm.py.

    python -I warm_server.py python|vegalite|browser|lilypond [LILYPOND OPTIONS...]

It pays a renderer's start-up once (matplotlib/pandas imports, V8, Chromium, LilyPond's Guile) and
then answers one JSON line per task on stdin with one JSON line on stdout:
    in:  {"dir": task dir, "out": file, "err": file, "env": {...}, "limits": {"cpu": s, "data": B,
          "fsize": B}, "args": [...]}
    out: {"rc": exit code, as the cold driver would have returned it}  or  {"rc": null, "error": why}
"rc": null means the warm engine itself failed; the host then kills this server and runs the task cold.

How each kind keeps tasks apart:
- python: a fresh fork of a parent that never ran task code, with the task's env, rlimits, cwd and
  fresh random seeds, running py_driver.main(). Same process model for lilypond (lily_server.scm).
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
    """True only inside the sandbox's pid namespace: pid 1 is bwrap (or us, under unshare) and every
    other process visible runs as our uid. Outside one, a sweep would kill the host's processes."""
    if os.getpid() != 1:
        with open("/proc/1/comm") as f:
            if f.read().strip() != "bwrap":
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
    """Empty the private tmpfs dirs, sparing mount points (the task dir, bound-in paths) and their parents."""
    mounts = [line.split()[1] for line in open("/proc/self/mounts")]
    for top in SCRATCH:
        if not os.path.isdir(top):
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

    def handle(req):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the task: never returns
            code = 70
            try:
                os.chdir(req["dir"])
                os.environ.clear()
                os.environ.update(req["env"])
                for name, value in req["limits"].items():
                    resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (value, value))
                os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
                os.dup2(os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
                os.dup2(os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
                os.closerange(3, 1 << 16)  # our pipes to the host included
                random.seed()  # a cold interpreter seeds from the OS; a fork would repeat the parent's state
                if "numpy" in sys.modules:
                    sys.modules["numpy"].random.seed()
                sys.argv = ["plot.py"]
                code = driver.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
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
    engine = subprocess.Popen(["lilypond", *sys.argv[2:], "-e", f'(load "{HERE / "lily_server.scm"}")', "_vc2_none.ly"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if engine.stdout.readline().strip() != "ready":
        raise RuntimeError(f"lilypond did not start (exit {engine.poll()})")

    def handle(req):
        lim = req["limits"]
        engine.stdin.write(f"{req['dir']}\t{req['err']}\t{lim['cpu']}\t{lim['data']}\t{lim['fsize']}\n")
        engine.stdin.flush()
        line = engine.stdout.readline().strip()
        if not line.lstrip("-").isdigit() or int(line) == 70:
            raise RuntimeError(f"the lilypond engine failed ({line or 'it exited'})")
        open(req["out"], "w").close()
        return int(line)
    return handle, [engine.pid]


# ---------------------------------------------------------------------------------------------

def main(kind):
    answer = os.fdopen(os.dup(1), "w")  # the host's channel; fd 1 itself goes to our log from here on
    os.dup2(2, 1)
    try:
        handle, spare = {"python": start_python, "vegalite": start_vegalite, "browser": start_browser,
                         "lilypond": start_lilypond}[kind]()
    except Exception:
        traceback.print_exc()
        print(json.dumps({"ready": False, "error": traceback.format_exc(limit=3)}), file=answer, flush=True)
        return 1
    print(json.dumps({"ready": True}), file=answer, flush=True)
    isolate = kind in ("python", "lilypond")  # kinds whose task code runs in processes of their own
    for line in sys.stdin:
        req = json.loads(line)
        try:
            rc = handle(req)
            if isolate:
                sweep(keep=spare)
                wipe()
        except Exception:
            traceback.print_exc()
            print(json.dumps({"rc": None, "error": traceback.format_exc(limit=3)}), file=answer, flush=True)
            return 1
        print(json.dumps({"rc": rc}), file=answer, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
