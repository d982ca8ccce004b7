"""Run one untrusted command in isolation: the layer every executor goes through.

    from vc2.eval import sandbox
    res = sandbox.run([sys.executable, "main.py"], workdir, timeout_s=30)  # returncode, stdout, stderr, ...
    python -m vc2.eval.sandbox          # which modes work on this machine, and why the others don't

Every run, whatever the mode:
- a private work dir: a fresh 0700 temp dir owned by the sandbox user; the caller's `workdir` is copied
  in before and the regular files (no links, no dot-directories, size-capped) are copied back after;
- a wall-clock limit that kills the whole process tree, then a sweep that SIGKILLs every process still
  carrying this run's random token in its environment (catches children that setsid);
- rlimits via `prlimit`: CPU time (a backstop; the wall limit is the real one), RLIMIT_DATA (not
  RLIMIT_AS: V8/Chromium reserve huge virtual ranges and die under RLIMIT_AS even at 8 GB, and
  OpenBLAS thread stacks fail under it), file size, open files, processes (per uid, threads count);
- a scrubbed environment (HOME=workdir, one BLAS/OMP thread, MPLBACKEND=Agg, LANG=C.UTF-8);
- an unprivileged user when started as root (`vc2sandbox` if install_host.sh made it, else `nobody`),
  dropped with `setpriv` *before* bwrap: `bwrap --uid` run as root is cosmetic (still host root).

Modes, best first; "auto" takes the first whose probe (a tiny Python run through it) succeeds:
- docker / podman: only when an engine answers *and* the local image VC2_SANDBOX_IMAGE exists; we
  never pull. `run --rm --network none --read-only` (a private /tmp tmpfs), cgroup memory and pids
  limits, the rlimits as --ulimit, no capabilities, no-new-privileges, the sandbox user's uid; the
  work dir and vc2's package dir (read-only) are mounted at their host paths. Tested with podman
  (root, runc) and a minimal Debian image (sandbox_images/base_image.sh); docker and rootless podman
  (--userns keep-id) are not tested. ~0.27 s per run instead of bwrap's 17 ms.
- bwrap: new user/pid/net/ipc/uts namespaces, / read-only, fresh tmpfs over /tmp /root /home /run
  /var/tmp (the interpreter and the vc2 package are bound back read-only if they live there).
- unshare: (root only, or via a user namespace) new net/pid/mount/ipc/uts namespaces with the same
  tmpfs layout, done by a short shell script before dropping privileges.
- plain: a new session + rlimits + uid drop + the sweep. No network or filesystem isolation at all.

What this does NOT protect against (read before trusting it):
- every mode shares the host kernel: a kernel exploit escapes all of them (containers included);
- bwrap/unshare: world-readable host files stay readable (/ is visible read-only), and CPU and total
  memory are not capped by a cgroup: RLIMIT_DATA is per process, so N processes may use N x mem_mb;
- plain: network access, reading anything the sandbox user may read, writing world-writable dirs
  (/tmp, /dev/shm), and a process that both setsids and scrubs its environment escapes the sweep;
- started as a non-root user, no uid is dropped: the code runs as you (bwrap/unshare still hide
  /root, /home and /tmp; plain hides nothing);
- RLIMIT_NPROC is per uid across the whole machine, so parallel runs share it: set_node_tasks(n)
  (the runner: workers x ranks on this node) raises it to n x the per-task value, so that one task's
  allowance does not shrink when other workers or ranks run beside it; a task can still borrow the
  others' share. Only a container's pids cgroup (--pids-limit) is truly per task.
Measured wall time of /bin/true per run on the 2-core dev box: plain 8 ms, bwrap 17 ms, unshare 66 ms.
vc2/eval/warm.py starts its long-lived renderers with the same wrapping (_wrap), in bwrap or unshare mode.
"""
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODES = ("docker", "podman", "bwrap", "unshare", "plain")
IMAGE = os.environ.get("VC2_SANDBOX_IMAGE", "vc2-sandbox:latest")
HIDDEN = ("/tmp", "/root", "/home", "/run", "/var/tmp")  # replaced by empty tmpfs in bwrap/unshare
TAIL = 20_000          # chars of stdout/stderr kept
COPY_BACK_MB = 256     # total bytes copied back from the private dir


@dataclass
class Result:
    returncode: int | None   # None when killed on timeout
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool
    mode: str
    token: str = ""          # the run's VC2_SANDBOX_TOKEN; survivors(token) must be [] afterwards


# ---------------------------------------------------------------------------------------------
# who runs the code, and with what environment

def sandbox_user():
    """(uid, gid, name) to drop to when we are root, else None (no drop possible or needed)."""
    if os.geteuid() != 0:
        return None
    for name in ("vc2sandbox", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid, name
        except KeyError:
            pass
    raise RuntimeError("running as root but neither user 'vc2sandbox' nor 'nobody' exists; "
                       "run sandbox_images/install_host.sh")


def _exposed():
    """Read-only paths the sandboxed code needs even when they live under a hidden dir (pyenv in /root)."""
    import vc2
    paths = {sys.prefix, sys.base_prefix, str(Path(vc2.__file__).resolve().parent)}
    return sorted(p for p in paths if any(p == h or p.startswith(h + "/") for h in HIDDEN))


def _env(workdir, token, extra):
    path = [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
    env = {
        "PATH": ":".join(dict.fromkeys(path)), "HOME": str(workdir), "TMPDIR": str(workdir / ".tmp"),
        "XDG_CACHE_HOME": str(workdir / ".cache"), "XDG_CONFIG_HOME": str(workdir / ".config"),
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
        "VC2_SANDBOX_TOKEN": token,  # the sweep finds stragglers by it
    }
    env.update(extra or {})
    return env


NODE_TASKS = 1  # sandboxed tasks that may run at once on this machine (see set_node_tasks)


def set_node_tasks(n):
    """How many tasks run at once on this machine (all workers of all ranks): RLIMIT_NPROC, which
    counts every process of the sandbox uid, is then n x a task's nproc (see the module docstring)."""
    global NODE_TASKS
    NODE_TASKS = max(1, int(n))


def _limits(timeout_s, mem_mb, fsize_mb, nproc, nofile):
    """rlimits by name (cpu None = unlimited); _wrap turns them into prlimit or --ulimit flags."""
    cpu = int(2 * timeout_s + 10) if timeout_s else None  # CPU s of one process; the wall limit rules
    return {"cpu": cpu, "data": mem_mb << 20, "fsize": fsize_mb << 20, "nofile": nofile, "nproc": nproc * NODE_TASKS,
            "core": 0}


def _prlimit(limits):
    return ["prlimit", *(f"--{k}={'unlimited' if v is None else v}" for k, v in limits.items()), "--"]


def _drop(user):
    if user is None:
        return []
    uid, gid, _ = user
    # --no-new-privs: no setuid binary can take the privileges back; the bounding set is emptied too
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


# The unshare mode's filesystem setup, run as (namespace) root inside the new mount namespace before
# privileges are dropped. Paths to keep are first bound to a scratch tmpfs, because mounting a tmpfs
# over /root hides them; then they are bound back at their old place. "$@" = KEEP... -- command.
_UNSHARE_SETUP = r"""
set -e
ip link set lo up 2>/dev/null || true
mount --make-rprivate /
mount -t tmpfs -o mode=700 vc2keep /mnt
i=0; while [ "$1" != "--" ]; do mkdir -p /mnt/$i; mount --rbind "$1" /mnt/$i; i=$((i+1)); shift; done
for d in /tmp /root /home /run /var/tmp /dev/shm; do [ -d $d ] && mount -t tmpfs -o mode=755 vc2 $d; done
chmod 1777 /tmp /var/tmp /dev/shm
i=0; for p in $KEEP; do mkdir -p "$p"; mount --rbind /mnt/$i "$p"; i=$((i+1)); done
umount -l /mnt
shift; cd "$VC2_CWD"; exec "$@"
"""


def _wrap(mode, cmd, work, user, env, limits, name):
    """The full argv for one mode (cmd runs with cwd=work; limits from _limits)."""
    if mode in ("docker", "podman"):
        # Inside the image the interpreter is its python3, and vc2's package dir (executor scripts,
        # vendored JS) is mounted read-only at its host path. The code runs as the sandbox user's
        # uid (the owner of the work dir), with no capabilities. rlimits as --ulimit flags: explicit
        # values also keep the engine's defaults (nofile 1048576) under the host's hard limits, which
        # runc refuses to raise.
        import vc2
        pkg = str(Path(vc2.__file__).resolve().parent)
        cmd = ["python3" if c == sys.executable else c for c in cmd]
        envs = [a for k, v in env.items() if k != "PATH" for a in ("-e", f"{k}={v}")]
        uid, gid = user[:2] if user else (os.getuid(), os.getgid())
        rootless = mode == "podman" and os.geteuid() != 0
        ulimits = [a for k, v in limits.items() if v is not None for a in ("--ulimit", f"{k}={v}:{v}")]
        return [mode, "run", "--rm", "--name", name, "--network", "none", "--read-only",
                "--tmpfs", "/tmp:size=256m", "--memory", str(limits["data"]),
                "--memory-swap", str(limits["data"]), "--pids-limit", str(limits["nproc"] // NODE_TASKS), "--cap-drop", "all",
                "--security-opt", "no-new-privileges", *ulimits, "--user", f"{uid}:{gid}",
                *(["--userns", "keep-id"] if rootless else []),
                "-v", f"{work}:{work}", "-v", f"{pkg}:{pkg}:ro", "-w", str(work), *envs, IMAGE, *cmd]
    if mode == "bwrap":
        # As root, bwrap runs privileged (no user namespace) and setpriv drops to the sandbox user inside,
        # so the code is a real unprivileged uid. (An unprivileged bwrap could not bind the interpreter
        # from a 0700 /root, and `bwrap --uid` as root would still be host root.) The tmpfs are capped
        # in size because their pages are RAM that RLIMIT_DATA does not count.
        binds = []
        for p in _exposed():  # parents bwrap would create 0700 (umask): make them traversable first
            parents = [q for q in reversed(Path(p).parents) if str(q) not in ("/", *HIDDEN) and len(str(q)) > 1]
            binds += [a for q in parents for a in ("--perms", "0755", "--dir", str(q))] + ["--ro-bind", p, p]
        tmpfs = [a for d in HIDDEN if os.path.isdir(d) for a in ("--perms", "1777", "--size", str(256 << 20), "--tmpfs", d)]
        ns = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"] \
            if user else ["--unshare-all"]
        inner = [*_drop(user), *_prlimit(limits), *cmd]
        return ["bwrap", *ns, "--die-with-parent", "--new-session", "--ro-bind", "/", "/", *tmpfs,
                "--proc", "/proc", "--dev", "/dev", *binds, "--bind", str(work), str(work),
                "--chdir", str(work), "--", *inner]
    if mode == "unshare":
        keep = _exposed() + [str(work)]
        env["KEEP"], env["VC2_CWD"] = " ".join(keep), str(work)  # paths have no spaces (asserted below)
        assert not any(" " in p for p in keep), keep
        userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        return ["unshare", *userns, "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount",
                "--ipc", "--uts", "--", "sh", "-c", _UNSHARE_SETUP, "sh", *keep, "--",
                *_drop(user), *_prlimit(limits), *cmd]
    assert mode == "plain", mode
    return [*_drop(user), *_prlimit(limits), *cmd]


# ---------------------------------------------------------------------------------------------
# killing: the process group first, then anything carrying the token (setsid'd children included)

def _sweep(token, rounds=20):
    """SIGKILL every process whose environment holds VC2_SANDBOX_TOKEN=token; repeat until none."""
    needle = f"VC2_SANDBOX_TOKEN={token}".encode()
    me = os.getpid()
    for _ in range(rounds):
        found = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle not in f.read():
                        continue
                os.kill(int(pid), signal.SIGKILL)
                found += 1
            except (OSError, ProcessLookupError):
                pass  # gone already, or not ours to read
        if not found:
            return
        time.sleep(0.05)


def survivors(token):
    """PIDs still carrying the token (tests use this to prove nothing outlives a run)."""
    needle = f"VC2_SANDBOX_TOKEN={token}".encode()
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


# ---------------------------------------------------------------------------------------------
# copying in and out of the private dir

def _chown_tree(root, uid, gid):
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
            os.lchown(n, uid, gid)


def _copy_back(src, dst):
    """Regular files only (never follow a link the code planted), top-level dot-dirs skipped (HOME junk)."""
    budget = COPY_BACK_MB << 20
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for n in filenames:
            s = Path(dirpath) / n
            st = os.lstat(s)
            if not stat.S_ISREG(st.st_mode) or st.st_size > budget:
                continue
            budget -= st.st_size
            (dst / rel).mkdir(parents=True, exist_ok=True)
            t = dst / rel / n
            if t.is_symlink():
                t.unlink()
            shutil.copyfile(s, t, follow_symlinks=False)


# ---------------------------------------------------------------------------------------------
# run

def run(cmd, workdir, timeout_s, mode="auto", env=None, mem_mb=2048, fsize_mb=256, nproc=512, nofile=1024):
    """Run cmd (argv list) with the contents of workdir as its cwd; results are copied back into workdir.

    Returns a Result; never raises for anything the code does. ValueError for an unknown or unavailable
    mode. timeout_s is wall-clock seconds for the whole tree.
    """
    mode = resolve(mode)
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ValueError(f"workdir {workdir} is not a directory")
    user = sandbox_user()
    token = secrets.token_hex(8)
    work = Path(tempfile.mkdtemp(prefix="vc2-sbx-", dir="/tmp"))  # 0700; /tmp is hidden inside bwrap
    scratch = Path(tempfile.mkdtemp(prefix="vc2-log-"))            # stdout/stderr files: never in the sandbox
    try:
        shutil.copytree(workdir, work, symlinks=True, dirs_exist_ok=True)
        (work / ".tmp").mkdir(exist_ok=True)
        if user:
            _chown_tree(work, user[0], user[1])
        full_env = _env(work, token, env)
        argv = _wrap(mode, list(map(str, cmd)), work, user, full_env,
                     _limits(timeout_s, mem_mb, fsize_mb, nproc, nofile), f"vc2-{token}")
        t0 = time.monotonic()
        timed_out = False
        with open(scratch / "out", "wb") as out, open(scratch / "err", "wb") as err:
            container = mode in ("docker", "podman")
            # the engine's own processes (podman, conmon) get the host environment: the token in theirs
            # would make the sweep kill podman's clean-up; the container's processes get it through -e
            p = subprocess.Popen(argv, cwd=work, env=None if container else full_env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=err, start_new_session=True)
            try:
                rc = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                if container:  # kill the container, then let `run --rm` remove it
                    subprocess.run([mode, "kill", f"vc2-{token}"], capture_output=True, timeout=30)
                    try:
                        p.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        pass
                    subprocess.run([mode, "rm", "-f", f"vc2-{token}"], capture_output=True, timeout=30)
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
                rc = None
            finally:
                _sweep(token)
        wall = time.monotonic() - t0
        _copy_back(work, workdir)
        read = lambda f: (scratch / f).read_bytes()[-TAIL:].decode("utf-8", "replace")
        return Result(rc, read("out"), read("err"), wall, timed_out, mode, token)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# which modes work here

_probed = {}


def probe(mode):
    """(ok, why) for one mode; cached for the life of the process (each probe takes ~0.1 s)."""
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}; choose auto or one of {', '.join(MODES)}")
    if mode in _probed:
        return _probed[mode]
    need = {"docker": ["docker"], "podman": ["podman"], "bwrap": ["bwrap", "prlimit"],
            "unshare": ["unshare", "prlimit"], "plain": ["prlimit"]}[mode]
    if os.geteuid() == 0:
        need = need + ["setpriv"]
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        why = f"{', '.join(missing)} not installed (sandbox_images/install_host.sh installs them)"
        _probed[mode] = (False, why)
        return _probed[mode]
    if mode in ("docker", "podman"):
        r = subprocess.run([mode, "info"], capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            _probed[mode] = (False, f"`{mode} info` failed (no engine answering): {last[:200]}")
            return _probed[mode]
        r = subprocess.run([mode, "image", "inspect", IMAGE], capture_output=True, timeout=20)
        if r.returncode != 0:
            _probed[mode] = (False, f"{mode} answers but image {IMAGE} is not built locally (we never pull)")
            return _probed[mode]
    _probed[mode] = (True, "")  # provisional, so that run() below accepts the mode
    with tempfile.TemporaryDirectory() as d:
        try:
            r = run(["/bin/sh", "-c", "echo ok"], d, timeout_s=60, mode=mode)  # the interpreter may be unreachable (see executors)
            ok = r.returncode == 0 and r.stdout.strip() == "ok"
            why = "" if ok else f"probe failed (rc={r.returncode}): {r.stderr.strip()[-300:]}"
        except (OSError, subprocess.SubprocessError) as e:
            ok, why = False, f"probe failed: {e}"
    _probed[mode] = (ok, why)
    return _probed[mode]


def resolve(mode="auto"):
    """The concrete mode for `mode`; ValueError naming the mode and the reason if it cannot run here."""
    if mode == "auto":
        for m in MODES:
            if probe(m)[0]:
                return m
        raise ValueError("no sandbox mode works here: " + "; ".join(f"{m}: {probe(m)[1]}" for m in MODES))
    ok, why = probe(mode)
    if not ok:
        raise ValueError(f"sandbox mode {mode!r} is not available: {why}")
    return mode


def describe():
    """{mode: 'ok' | reason} for every mode, plus the user the code runs as."""
    user = sandbox_user()
    out = {m: ("ok" if probe(m)[0] else probe(m)[1]) for m in MODES}
    out["user"] = user[2] if user else pwd.getpwuid(os.geteuid()).pw_name
    return out


if __name__ == "__main__":
    for k, v in describe().items():
        print(f"{k:8s} {v}")
    print("auto ->", resolve("auto"))
