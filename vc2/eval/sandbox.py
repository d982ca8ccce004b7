"""Run untrusted code in isolation: the layer every executor and warm server goes through.

    from vc2.eval import sandbox
    res = sandbox.run([sys.executable, "main.py"], workdir, timeout_s=30)  # returncode, stdout, stderr, ...
    with sandbox.Box("bwrap", sandbox.Limits(mem_mb=2048)) as box: ...     # one sandbox, started by hand
    python -m vc2.eval.sandbox          # which modes and protections work on this machine, and why not

A `Box` is one sandbox instance; `run` is a Box for one command. Every box, whatever the mode, has:
- a private work dir named after its owner process (/tmp/vc2-<kind>-<pid>-*); when we are root it is
  a size-capped tmpfs (Limits.disk_mb), so a task cannot fill the host's disk. The caller's files are
  copied in before, and the regular files (no links, no dot-directories, size-capped) copied back after;
- a cgroup of its own when we are root and the memory and pids controllers can be created (v1, or v2
  from the root cgroup): a memory total and a process count for the whole tree (Limits.mem_mb,
  Limits.nproc), so one task cannot take memory or process slots from another; RLIMIT_NPROC (per uid,
  shared by every task) is then set high and is not the binding limit;
- rlimits via `prlimit`: CPU time (a backstop), RLIMIT_DATA per process (a MemoryError rather than an
  OOM kill for a single hog; not RLIMIT_AS, which kills V8/Chromium), file size, open files;
- a seccomp filter (libseccomp via pyseccomp) that refuses the kernel keyring, ptrace,
  process_vm_readv/writev, pidfd_getfd, kcmp, bpf, perf_event_open and userfaultfd: no task needs
  them, and they are how one process reads or steers another, or leaves a message for a later task;
- stdout/stderr read through pipes while the code runs, keeping only the last TAIL characters, so a
  program that prints for minutes costs neither disk nor memory;
- a wall-clock limit that kills the whole tree, then a sweep that SIGKILLs every process still
  carrying this box's random token in its environment (catches children that setsid);
- a scrubbed environment (HOME=workdir, one BLAS/OMP thread, MPLBACKEND=Agg, LANG=C.UTF-8);
- an unprivileged user when started as root (`vc2sandbox` if install_host.sh made it, else `nobody`).

Modes. "auto": a container for each language whose family image is built (executors.run, via
containers.py), else the first host mode whose probe (a tiny run through it) succeeds, in this order:
bwrap, unshare, plain. "container": podman, else docker.
- docker / podman: only when an engine answers *and* the image exists (never pulled): the language's
  family image (sandbox_images/build.sh builds them), or VC2_SANDBOX_IMAGE for every language.
  `run --rm --network none --read-only --log-driver none`, the engine's own cgroup limits (memory,
  pids) and default seccomp profile less DENIED_SYSCALLS, rlimits as --ulimit (CPU time among them),
  no capabilities, no-new-privileges, the sandbox user's uid; only the work dir (its inputs are a
  copy in the size-capped tmpfs, its outputs copied back) and the executor drivers and vendored JS
  (read-only) are mounted. Tools are checked inside the image (`missing_in_image`). ~0.3 s per run.
  Warm servers run inside the containers too (`run -i`; each task in a user + pid namespace of its
  own inside, as under bwrap), except Python's (warm.py says why): Python tasks run cold there.
- bwrap: run as root it is privileged (no user namespace) and drops to the sandbox user with setpriv
  *inside*, after building the view (as non-root, bwrap makes a user namespace and runs as you). New
  pid/net/ipc/uts namespaces; a minimal root: /usr, /etc, a few /var dirs TeX and fontconfig need,
  the Python prefixes and the drivers, all read-only; empty tmpfs at /tmp /root /home /run /var/tmp.
- unshare: (root) the same view built by a shell script with pivot_root in new net/pid/mount/ipc/uts
  namespaces, then the privilege drop.
- plain: a new session, rlimits, the uid drop, seccomp, the sweep; and, as root, the tmpfs work dir
  and the cgroup. No network, filesystem or pid isolation.

Covered / not covered, per mode (tests/eval/test_sandbox.py and test_hardening.py try each one):
  network, writes outside the work dir, other tasks' processes:  bwrap, unshare, container; not plain
  the host's files (answer key, other runs' outputs):            bwrap, unshare, container; not plain
  disk total (tmpfs work dir):                                   every mode as root; not as non-root
  memory total and process count of the tree (cgroup):           every mode as root where cgroups can be
                                                                 made; else per-process rlimits only,
                                                                 and RLIMIT_NPROC is shared per uid
                                                                 (set_node_tasks: n tasks at once on the
                                                                 machine get n x nproc between them)
  kernel keyring, ptrace and friends (seccomp):                  every mode (containers: the engine's
                                                                 default profile less DENIED_SYSCALLS)
  unbounded stdout/stderr:                                       every mode
Not covered anywhere: a kernel exploit (every mode shares the host kernel, containers included);
CPU share (one task can slow another down, never change its verdict: limits are wall-clock);
started as a non-root user, no uid is dropped, no tmpfs is mounted and no cgroup is made.
Measured wall time of /bin/true per run on the 2-core dev box: plain 8 ms, bwrap 17 ms, unshare 66 ms
(before the cgroup, tmpfs and seccomp steps; bench/RESULTS.md has the current per-task costs).
"""
import contextlib
import contextvars
import ctypes
import errno
import fcntl
import os
import pwd
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

MODES = ("docker", "podman", "bwrap", "unshare", "plain")
ENGINES = ("podman", "docker")           # "container" is the first of these that answers
HOST_MODES = ("bwrap", "unshare", "plain")  # what "auto" picks from here; executors.run picks a container
                                          # per language when its family's image exists (containers.py)
# One image for every language (tests use the bare base image this way); unset: the family images
IMAGE = os.environ.get("VC2_SANDBOX_IMAGE") or None
_image = contextvars.ContextVar("vc2_sandbox_image", default=None)
HIDDEN = ("/tmp", "/root", "/home", "/run", "/var/tmp")  # empty tmpfs in bwrap/unshare
TAIL = 20_000          # chars of stdout/stderr kept
COPY_BACK_MB = 256     # total bytes copied back from the private dir
SCRATCH_MB = 256       # each private tmpfs of the view (/tmp, ...): RAM, counted by the cgroup
PKG = Path(__file__).resolve().parent.parent           # the vc2 package
DRIVERS = PKG / "eval" / "executors"                    # what runs inside: drivers, warm server
VENDOR = PKG / "eval" / "assets" / "vendor"             # vendored JS the browser driver serves
ANSWER_KEY = PKG / "eval" / "assets" / "tasks"          # reference solutions and images: never inside
# The minimal root a sandboxed program sees (read-only), besides the Python prefixes and DRIVERS/VENDOR.
# /var: TeX's formats and font maps, ghostscript's fonts, X keymaps (xvfb for Asymptote 3D), font caches.
ROOT_RO = ("/usr", "/etc", "/opt/vc2", "/var/lib/texmf", "/var/lib/tex-common", "/var/lib/ghostscript",
           "/var/lib/xkb", "/var/lib/xfonts", "/var/cache/fontconfig", "/var/cache/fonts")
MERGED = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # symlinks into /usr on merged-/usr systems
_hidden_extra = set()  # more paths to hide inside (the runner's task file and output dirs): hide()


@dataclass
class Limits:
    timeout_s: float | None = None  # wall clock for the whole tree (None: a long-lived server)
    mem_mb: int = 2048              # RLIMIT_DATA per process, and the cgroup's total for the tree
    fsize_mb: int = 256             # largest file
    nproc: int = 512                # processes and threads of the tree (cgroup), else RLIMIT_NPROC
    nofile: int = 1024
    disk_mb: int = 512              # the work dir's tmpfs (root only)


@dataclass
class Result:
    returncode: int | None   # None when killed on timeout
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool
    mode: str
    token: str = ""          # the run's VC2_SANDBOX_TOKEN; survivors(token) must be [] afterwards
    oom_killed: bool = False  # the cgroup's memory total was reached and the kernel killed a process


def hide(path):
    """Never show `path` inside a sandbox, even where it lies under a directory of the minimal root."""
    _hidden_extra.add(str(Path(path).resolve()))


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


def environment(workdir, token, extra=None):
    """The scrubbed environment of sandboxed code (nothing of the host's, API keys included)."""
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


PODMAN_NPROC = 32768  # measured: /proc/<podman>/limits; `--ulimit nproc` above it fails with EPERM


def set_node_tasks(n):
    """How many tasks run at once on this machine (every worker of every rank; run_eval.py sets it).
    Without a cgroup the binding process limit is RLIMIT_NPROC, which counts all the uid's processes:
    it is then n x a task's nproc, so a task's allowance does not shrink because other workers or ranks
    run beside it (a fork bomb can still borrow their share: only the cgroup is per task)."""
    global NODE_TASKS
    NODE_TASKS = max(1, int(n))


def _rlimits(limits: Limits, cgroup, container=False):
    cpu = int(2 * limits.timeout_s + 10) if limits.timeout_s else None  # CPU s of one process; the wall limit rules
    # With a cgroup, pids.max bounds the tree; RLIMIT_NPROC counts every process of the uid machine-wide
    # (all tasks together, user namespaces included), so as the binding limit it would let one task's
    # fork bomb make its neighbours fail.
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = (None if hard == resource.RLIM_INFINITY else hard) if cgroup else limits.nproc * NODE_TASKS
    if container:  # podman lowers its own (and so its runtime's) RLIMIT_NPROC to 32768: runc cannot set more
        nproc = min(nproc or PODMAN_NPROC, PODMAN_NPROC)
    return {"cpu": cpu, "data": limits.mem_mb << 20, "fsize": limits.fsize_mb << 20, "nofile": limits.nofile,
            "nproc": nproc, "core": 0}


def _prlimit(rl):
    return ["prlimit", *(f"--{k}={'unlimited' if v is None else v}" for k, v in rl.items()), "--"]


def _drop(user):
    if user is None:
        return []
    uid, gid, _ = user
    # --no-new-privs: no setuid binary can take the privileges back; the bounding set is emptied too
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


# ---------------------------------------------------------------------------------------------
# owners: every private dir and cgroup is named after the process that made it, which holds a lock
# for its whole life, so a later run cleans up after a killed one without touching a live one's.

_owner_lock = None
_owner_mutex = threading.Lock()


def _own():
    """Take this process's owner lock (once); its fd closes at exec, and the kernel drops it at death.
    The mutex matters: flock belongs to an open file, so a second thread opening the file again would
    wait forever on the lock the first thread's fd holds."""
    global _owner_lock
    with _owner_mutex:
        if _owner_lock is None or _owner_lock[0] != os.getpid():  # a forked child is an owner of its own
            fd = os.open(f"/tmp/vc2-owner-{os.getpid()}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            _owner_lock = (os.getpid(), fd)
    return os.getpid()


def _owner_alive(pid):
    """False when the process that made a dir is gone: its lock can be taken (or never existed)."""
    if pid == os.getpid():
        return True
    try:
        fd = os.open(f"/tmp/vc2-owner-{pid}.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def private_dir(kind):
    """A fresh 0700 dir /tmp/vc2-<kind>-<owner pid>-XXXX (found again by clean_stale if we are killed)."""
    return Path(tempfile.mkdtemp(prefix=f"vc2-{kind}-{_own()}-", dir="/tmp"))


def clean_stale():
    """Remove the private dirs, tmpfs mounts, owner locks and cgroups of vc2 processes that died
    (kill -9); those of live processes, other runs and ranks included, are left alone. Returns the count."""
    removed = 0
    for entry in Path("/tmp").glob("vc2-*"):
        parts = entry.name.split("-")
        if entry.name.startswith("vc2-owner-") and entry.name.endswith(".lock"):
            pid = parts[2].split(".")[0]
        elif len(parts) >= 4 and parts[2].isdigit():
            pid = parts[2]
        else:
            continue
        if not pid.isdigit() or _owner_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            _unmount(entry)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    for cg in _cgroup_roots():
        for d in cg.glob("vc2-*"):
            pid = d.name.split("-")[1]
            if pid.isdigit() and not _owner_alive(int(pid)):
                for _ in range(20):  # what the dead run's sandboxes left running: theirs, so killed
                    left = (d / "cgroup.procs").read_text().split() if (d / "cgroup.procs").exists() else []
                    if not left:
                        break
                    for p in left:
                        try:
                            os.kill(int(p), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.05)
                _rmdir_cgroup(d)
                removed += 1
    return removed


# ---------------------------------------------------------------------------------------------
# a size-capped tmpfs for the work dir (root only)

_libc = ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(path, mb, uid, gid):
    opts = f"size={mb}m,mode=0700,uid={uid},gid={gid},nr_inodes=65536".encode()
    if _libc.mount(b"vc2", str(path).encode(), b"tmpfs", 0x2 | 0x4, opts) != 0:  # MS_NOSUID | MS_NODEV
        raise OSError(ctypes.get_errno(), f"mount tmpfs on {path}: {os.strerror(ctypes.get_errno())}")


def _unmount(path):
    _libc.umount2(str(path).encode(), 2)  # MNT_DETACH; EINVAL when it is not a mount point: fine


def quota_available():
    return os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# cgroups: one per box (v1: memory + pids hierarchies; v2: under /sys/fs/cgroup/vc2, made from the root)

def _cgroup_roots():
    """The parent dirs vc2's cgroups go in, or [] when cgroups cannot be made here."""
    if os.geteuid() != 0:
        return []
    base = Path("/sys/fs/cgroup")
    if (base / "memory").is_dir() and (base / "pids").is_dir():  # v1
        mine = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrl, path = line.split(":", 2)
            for c in ctrl.split(","):
                mine[c] = path
        return [base / c / mine.get(c, "/").lstrip("/") for c in ("memory", "pids")]
    if (base / "cgroup.controllers").is_file():  # v2: controllers can be enabled below the root only
        root = base / "vc2"
        try:
            root.mkdir(exist_ok=True)
            (base / "cgroup.subtree_control").write_text("+memory +pids")
            (root / "cgroup.subtree_control").write_text("+memory +pids")
        except OSError:
            return []
        return [root]
    return []


def _rmdir_cgroup(d):
    for i in range(200):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY: the last process is exiting; that takes a few ms
            time.sleep(0.001 if i < 50 else 0.02)


class Cgroup:
    """Memory total (no swap) and pids limit for one box; `enter` is the argv prefix that joins it."""

    def __init__(self, name, mem_mb, nproc):
        roots = _cgroup_roots()
        if not roots:
            raise OSError(errno.ENOTSUP, "cgroups cannot be made here")
        self.dirs = [r / name for r in roots]
        try:
            for d in self.dirs:
                d.mkdir()
            if len(self.dirs) == 2:  # v1
                mem, pids = self.dirs
                (mem / "memory.limit_in_bytes").write_text(str(mem_mb << 20))
                if (mem / "memory.memsw.limit_in_bytes").exists():
                    (mem / "memory.memsw.limit_in_bytes").write_text(str(mem_mb << 20))
                (pids / "pids.max").write_text(str(nproc))
            else:
                d = self.dirs[0]
                (d / "memory.max").write_text(str(mem_mb << 20))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
                (d / "pids.max").write_text(str(nproc))
        except OSError:
            self.remove()
            raise
        procs = " ".join(str(d / "cgroup.procs") for d in self.dirs)
        # written by the box's first process before it execs the sandbox (no preexec_fn: threads)
        self.enter = ["/bin/sh", "-c", f'for f in {procs}; do echo $$ > "$f" || exit 125; done; exec "$@"', "sh"]

    def oom_killed(self):
        try:
            if len(self.dirs) == 2:
                text = (self.dirs[0] / "memory.oom_control").read_text()
            else:
                text = (self.dirs[0] / "memory.events").read_text()
        except OSError:
            return False
        return any(line.startswith("oom_kill ") and line.split()[1] != "0" for line in text.splitlines())

    def remove(self):
        for d in self.dirs:
            _rmdir_cgroup(d)


# ---------------------------------------------------------------------------------------------
# seccomp: the syscalls no task needs, refused with EPERM (a BPF program made once per process)

DENIED_SYSCALLS = ("add_key", "keyctl", "request_key", "ptrace", "process_vm_readv", "process_vm_writev",
                   "pidfd_getfd", "kcmp", "bpf", "perf_event_open", "userfaultfd")
_bpf = None


def seccomp_bpf():
    """The filter as a BPF program (bytes), or raise OSError naming what is missing."""
    global _bpf
    if _bpf is None:
        try:
            import pyseccomp
        except (ImportError, OSError) as e:  # OSError: libseccomp.so.2 missing
            raise OSError(f"seccomp unavailable ({e}); run sandbox_images/install_host.sh") from None
        f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        for name in DENIED_SYSCALLS:
            f.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        with tempfile.TemporaryFile() as t:
            f.export_bpf(t)
            t.seek(0)
            _bpf = t.read()
    return _bpf


_engine_profile = {}


def engine_seccomp_profile():
    """podman's default seccomp profile (the file containers-common ships) with DENIED_SYSCALLS taken out
    of its allow rules (it allows keyctl, ptrace, pidfd_getfd, process_vm_readv), as a file for
    `--security-opt seccomp=`; None where that file is missing (the engine's own default then applies)."""
    import json
    src = Path("/usr/share/containers/seccomp.json")
    if "path" not in _engine_profile:
        _engine_profile["path"] = None
        if src.is_file():
            prof = json.loads(src.read_text())
            for rule in prof.get("syscalls", []):
                if rule.get("action") == "SCMP_ACT_ALLOW":
                    rule["names"] = [n for n in rule["names"] if n not in DENIED_SYSCALLS]
            prof["syscalls"] = [r for r in prof.get("syscalls", []) if r.get("names")]
            prof["syscalls"].append({"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
            path = private_dir("seccomp") / "profile.json"
            path.write_text(json.dumps(prof))
            path.parent.chmod(0o755)
            _engine_profile["path"] = path
    return _engine_profile["path"]


def _seccomp_fd():
    """A readable fd holding the BPF program (bwrap --seccomp FD, seccomp_exec.py); the caller closes it."""
    r, w = os.pipe()
    os.write(w, seccomp_bpf())  # ~150 bytes: fits the pipe buffer
    os.close(w)
    return r


# ---------------------------------------------------------------------------------------------
# the filesystem view

def _prefixes():
    """Directories the interpreter needs: sys.prefix (a venv), sys.base_prefix (e.g. pyenv's under /root)."""
    return sorted({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


def _visible():
    """(read-only dirs, symlinks) of the minimal root."""
    ro = [p for p in ROOT_RO if os.path.isdir(p) and not os.path.islink(p)]
    links = {}
    for p in MERGED:
        if os.path.islink(p):
            links[p] = os.readlink(p)
        elif os.path.isdir(p):
            ro.append(p)
    ro += [p for p in _prefixes() + [str(DRIVERS), str(VENDOR)] if not any(p == r or p.startswith(r + "/") for r in ro)]
    return ro, links


def _masked(ro):
    """Paths to cover with an empty tmpfs: the answer key and hide()'s, where they lie under a visible dir."""
    out = []
    for p in sorted({str(ANSWER_KEY), *_hidden_extra}):
        if any(p == r or p.startswith(r + "/") for r in ro) and os.path.isdir(p):
            out.append(p)
    return out


def _parents(path):
    return [str(q) for q in reversed(Path(path).parents) if str(q) != "/"]


# The unshare mode's view, built as (namespace) root in the new mount namespace before privileges are
# dropped: a tmpfs root, the read-only dirs bound into it, the work dir bound read-write, fresh
# /proc, /dev nodes and scratch tmpfs, then pivot_root. Paths come in the environment (no spaces).
_UNSHARE_SETUP = r"""
set -e
PATH=$PATH:/usr/sbin:/sbin
ip link set lo up 2>/dev/null || true
mount --make-rprivate /
R=/mnt  # (a mount point in our namespace only; nothing is created on the host)
mount -t tmpfs -o mode=755,size=16m vc2root "$R"
for d in $VC2_SCRATCH; do mkdir -p "$R$d"; mount -t tmpfs -o size=${VC2_SCRATCH_MB}m,mode=1777 vc2 "$R$d"; done
for p in $VC2_RO; do mkdir -p "$R$p"; mount --rbind "$p" "$R$p"; mount -o remount,bind,ro "$R$p"; done
for l in $VC2_LINKS; do ln -s "${l#*=}" "$R${l%%=*}"; done
for p in $VC2_MASK; do mount -t tmpfs -o size=1m,mode=755 vc2 "$R$p"; done
mkdir -p "$R$VC2_CWD"; mount --rbind "$VC2_CWD" "$R$VC2_CWD"
mkdir -p "$R/proc" "$R/dev/shm" "$R/dev/pts"; mount -t proc proc "$R/proc"
for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
mount -t tmpfs -o size=${VC2_SCRATCH_MB}m,mode=1777 vc2 "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"; ln -s fd/0 "$R/dev/stdin"; ln -s fd/1 "$R/dev/stdout"; ln -s fd/2 "$R/dev/stderr"
mkdir "$R/.old"; cd "$R"; pivot_root . .old; umount -l /.old; rmdir /.old
unset VC2_RO VC2_LINKS VC2_MASK VC2_SCRATCH VC2_SCRATCH_MB
cd "$VC2_CWD"; unset VC2_CWD; exec "$@"
"""


def _argv(mode, cmd, work, user, env, limits, rl, name, seccomp_fd, image=None, interactive=False):
    """The full argv for one mode (cmd runs with cwd=work; rl from _rlimits; image, interactive (keep
    stdin open: a warm server reads its requests there): container modes)."""
    if mode in ENGINES:
        # Inside the image the interpreter is its python3; only the drivers and vendored JS are mounted
        # (read-only, at their host paths), never the package's task assets. rlimits as --ulimit flags:
        # explicit values also keep the engine's defaults (nofile 1048576) under the host's hard limits,
        # which runc refuses to raise. --log-driver none: the engine keeps no copy of the output on disk.
        cmd = ["python3" if c == sys.executable else c for c in cmd]
        # the command runs as the child of a small init (see container_init.py), as under bwrap's
        cmd = ["python3", "-I", "-S", str(DRIVERS / "container_init.py"), *cmd]
        envs = [a for k, v in env.items() if k != "PATH" for a in ("-e", f"{k}={v}")]
        uid, gid = user[:2] if user else (os.getuid(), os.getgid())
        rootless = mode == "podman" and os.geteuid() != 0
        ulimits = [a for k, v in rl.items() if v is not None for a in ("--ulimit", f"{k}={v}:{v}")]
        mounts = [a for p in (DRIVERS, VENDOR) for a in ("-v", f"{p}:{p}:ro")]
        profile = engine_seccomp_profile()
        seccomp = ["--security-opt", f"seccomp={profile}"] if profile else []
        return [mode, "run", "--rm", *(["-i"] if interactive else []), "--name", name, "--network", "none", "--read-only", "--log-driver", "none",
                "--tmpfs", f"/tmp:size={SCRATCH_MB}m", "--memory", str(rl["data"]),
                "--memory-swap", str(rl["data"]), "--pids-limit", str(limits.nproc), "--cap-drop", "all",
                "--security-opt", "no-new-privileges", *seccomp, *ulimits, "--user", f"{uid}:{gid}",
                *(["--userns", "keep-id"] if rootless else []),
                "-v", f"{work}:{work}", *mounts, "-w", str(work), *envs, image, *cmd]
    ro, links = _visible()
    if mode == "bwrap":
        # order matters: the scratch tmpfs first, then the read-only dirs (a Python prefix may live under
        # /root), links, masks over the answer key, /proc and /dev, and the work dir last
        view = [a for d in HIDDEN for a in ("--perms", "1777", "--size", str(SCRATCH_MB << 20), "--tmpfs", d)]
        made = set(HIDDEN)
        for p in ro:  # parents bwrap would create 0700 (umask): make them traversable first
            for q in _parents(p):
                if q not in made and q not in links and not any(q == r or q.startswith(r + "/") for r in ro):
                    view += ["--perms", "0755", "--dir", q]
                    made.add(q)
            view += ["--ro-bind", p, p]
        view += [a for link, target in links.items() for a in ("--symlink", target, link)]
        view += [a for p in _masked(ro) for a in ("--size", str(1 << 20), "--tmpfs", p)]
        ns = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"] \
            if user else ["--unshare-all"]
        inner = [*_drop(user), *_prlimit(rl), *cmd]
        return ["bwrap", *ns, "--die-with-parent", "--new-session", "--seccomp", str(seccomp_fd), *view,
                "--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--size", str(SCRATCH_MB << 20), "--tmpfs", "/dev/shm",
                "--bind", str(work), str(work), "--chdir", str(work), "--", *inner]
    # seccomp_exec.py loads the filter and execs the rest; it runs before the privilege drop (the
    # sandbox user may not reach an interpreter under /root in plain mode), and filters survive exec
    shim = [sys.executable, "-I", "-S", str(DRIVERS / "seccomp_exec.py"), str(seccomp_fd)]
    if mode == "unshare":
        env.update(VC2_RO=" ".join(ro), VC2_LINKS=" ".join(f"{k}={v}" for k, v in links.items()),
                   VC2_MASK=" ".join(_masked(ro)), VC2_SCRATCH=" ".join(HIDDEN), VC2_SCRATCH_MB=str(SCRATCH_MB),
                   VC2_CWD=str(work))
        assert not any(" " in p for p in ro + [str(work)]), ro
        userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        return ["unshare", *userns, "--net", "--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts",
                "--", "sh", "-c", _UNSHARE_SETUP, "sh", *shim, *_drop(user), *_prlimit(rl), *cmd]
    assert mode == "plain", mode
    return [*shim, *_drop(user), *_prlimit(rl), *cmd]


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
# copying in and out, and reading output without keeping it all

def chown_tree(root, uid, gid):
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
            os.lchown(n, uid, gid)


def copy_back(src, dst):
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


class TailReader(threading.Thread):
    """Drains a pipe as the code writes it, keeping the last `keep` bytes: output costs no disk, and
    memory stays bounded however much is printed."""

    def __init__(self, pipe, keep=4 * TAIL):
        super().__init__(daemon=True)
        self.pipe, self.buf, self.keep, self.total = pipe, deque(), keep, 0
        self.start()

    def run(self):
        size = 0
        while chunk := self.pipe.read1(1 << 16):
            self.buf.append(chunk)
            size += len(chunk)
            self.total += len(chunk)
            while size - len(self.buf[0]) >= self.keep:
                size -= len(self.buf.popleft())
        self.pipe.close()

    def text(self, timeout=5.0):
        self.join(timeout)
        return b"".join(self.buf)[-TAIL:].decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# one sandbox

class Box:
    """One sandbox instance: its private dir (`dir`, a size-capped tmpfs when root), its cgroup when one
    can be made, its token; `popen` starts a command in it, `kill` ends everything in it, `close` removes
    it. sandbox.run is a Box for one command; warm.py keeps one per long-lived server."""

    def __init__(self, mode, limits: Limits, kind="sbx", image=None):
        self.mode, self.limits = resolve(mode), limits
        self.container = self.mode in ENGINES
        self.image = (image or current_image()) if self.container else None
        assert self.image or not self.container, "container mode without an image (use_image, or VC2_SANDBOX_IMAGE)"
        self.user = sandbox_user()
        self.token = secrets.token_hex(8)
        self.name = f"vc2-{_own()}-{self.token}"
        self.dir = private_dir(kind)
        self.proc, self.cgroup, self.mounted = None, None, False
        try:
            if quota_available():
                mount_tmpfs(self.dir, limits.disk_mb, *(self.user[:2] if self.user else (0, 0)))
                self.mounted = True
            if not self.container and _cgroup_roots():  # containers get the engine's cgroup
                self.cgroup = Cgroup(self.name, limits.mem_mb, limits.nproc)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def copy_in(self, src, sub=""):
        """Copy src's contents into dir/sub, owned by the sandbox user."""
        dst = self.dir / sub if sub else self.dir
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        (dst / ".tmp").mkdir(exist_ok=True)
        if self.user:
            chown_tree(dst, self.user[0], self.user[1])
        return dst

    def popen(self, cmd, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=None):
        """Start cmd in the box with environment `env` (see environment()); one command per box."""
        assert self.proc is None, "one command per box"
        # a container's tree is bounded by the engine's pids cgroup (--pids-limit): RLIMIT_NPROC, shared by
        # every container of the sandbox uid (no user namespace), must not be the binding limit there either
        rl = _rlimits(self.limits, self.cgroup or self.container, container=self.container)
        env = dict(env)
        sfd = None if self.container else _seccomp_fd()
        try:
            argv = _argv(self.mode, list(map(str, cmd)), Path(cwd or self.dir), self.user, env, self.limits, rl,
                         self.name, sfd, self.image, interactive=stdin == subprocess.PIPE)
            if self.cgroup:
                argv = self.cgroup.enter + argv
            # the engine's own processes (podman, conmon) get the host environment: the token in theirs
            # would make the sweep kill podman's clean-up; the container's processes get it through -e
            self.proc = subprocess.Popen(argv, cwd=cwd or self.dir, env=None if self.container else env, stdin=stdin,
                                         stdout=stdout, stderr=stderr, start_new_session=True,
                                         pass_fds=() if sfd is None else (sfd,))
        finally:
            if sfd is not None:
                os.close(sfd)
        return self.proc

    def kill(self):
        """Kill everything in the box: the engine's container, the process group, then the sweep."""
        if self.proc is None:
            return
        if self.container and self.proc.poll() is None:  # kill the container, then let `run --rm` remove it
            subprocess.run([self.mode, "kill", self.name], capture_output=True, timeout=30)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            subprocess.run([self.mode, "rm", "-f", self.name], capture_output=True, timeout=30)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        _sweep(self.token)

    def oom_killed(self):
        return bool(self.cgroup and self.cgroup.oom_killed())

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self.cgroup:
            self.cgroup.remove()
        if self.mounted:
            _unmount(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def run(cmd, workdir, timeout_s, mode="auto", env=None, mem_mb=2048, fsize_mb=256, nproc=512, nofile=1024,
        disk_mb=512):
    """Run cmd (argv list) with the contents of workdir as its cwd; results are copied back into workdir.

    Returns a Result; never raises for anything the code does. ValueError for an unknown or unavailable
    mode. timeout_s is wall-clock seconds for the whole tree.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ValueError(f"workdir {workdir} is not a directory")
    limits = Limits(timeout_s, mem_mb, fsize_mb, nproc, nofile, disk_mb)
    with Box(mode, limits) as box:
        box.copy_in(workdir)
        t0 = time.monotonic()
        p = box.popen(cmd, environment(box.dir, box.token, env))
        out, err = TailReader(p.stdout), TailReader(p.stderr)
        timed_out = False
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
        box.kill()  # the tree is gone before its outputs are read
        wall = time.monotonic() - t0
        stderr = err.text()
        oom = box.oom_killed()
        if oom:
            stderr += f"\n[vc2 sandbox] killed: the program's processes used more than {mem_mb} MB in total"
        if box.cgroup and rc == 125 and "cgroup" in stderr:  # our own wrapper could not join the cgroup
            stderr += "\n[vc2 sandbox] could not enter the cgroup"
        copy_back(box.dir, workdir)
        return Result(rc, out.text(), stderr, wall, timed_out, box.mode, box.token, oom)


# ---------------------------------------------------------------------------------------------
# which modes work here

_probed = {}
_in_image = {}


def current_image():
    """The image a container-mode box runs: VC2_SANDBOX_IMAGE if set, else the one executors.run chose
    for the language being rendered (use_image), else None (container mode then cannot run)."""
    return IMAGE or _image.get()


@contextlib.contextmanager
def use_image(image):
    """Container-mode boxes made inside this block (same thread) run `image`. executors.run sets it per
    language, so the language records' render functions stay the same in every mode."""
    token = _image.set(image)
    try:
        yield
    finally:
        _image.reset(token)


def _probe_image(mode):
    """An image to try the engine with: the override, else any vc2 image the engine has."""
    if IMAGE or _image.get():
        return current_image()
    r = subprocess.run([mode, "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True,
                       timeout=30)
    found = sorted(line for line in r.stdout.split() if line.startswith("localhost/vc2-"))
    return found[0] if found else None


def probe(mode):
    """(ok, why) for one mode; cached for the life of the process (each probe takes ~0.1 s; containers ~0.5 s)."""
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}; choose auto, container or one of {', '.join(MODES)}")
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
    image = None
    if mode in ENGINES:
        r = subprocess.run([mode, "info"], capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            _probed[mode] = (False, f"`{mode} info` failed (no engine answering): {last[:200]}")
            return _probed[mode]
        image = _probe_image(mode)
        if image is None or (IMAGE or _image.get()) and subprocess.run(  # a listed image needs no second look
                [mode, "image", "inspect", image], capture_output=True, timeout=20).returncode != 0:
            _probed[mode] = (False, f"{mode} answers but has no vc2 image (we never pull): build them with "
                                    "`bash sandbox_images/build.sh`" + (f" ({image} is missing)" if image else ""))
            return _probed[mode]
    else:
        try:
            seccomp_bpf()
        except OSError as e:
            _probed[mode] = (False, str(e))
            return _probed[mode]
    _probed[mode] = (True, "")  # provisional, so that run() below accepts the mode
    with tempfile.TemporaryDirectory() as d, use_image(image):
        try:
            r = run(["/bin/sh", "-c", "echo ok"], d, timeout_s=60, mode=mode)  # the interpreter may be unreachable (see executors)
            ok = r.returncode == 0 and r.stdout.strip() == "ok"
            why = "" if ok else f"probe failed (rc={r.returncode}): {r.stderr.strip()[-300:]}"
        except (OSError, subprocess.SubprocessError) as e:
            ok, why = False, f"probe failed: {e}"
    _probed[mode] = (ok, why)
    return _probed[mode]


def missing_in_image(mode, tools, modules=()):
    """Tools (executables) and Python modules that the current container image (use_image) lacks:
    checked where the code runs, not on the host (a missing renderer is an infra error, never the
    model's failure). Cached."""
    key = (mode, current_image(), tuple(tools), tuple(modules))
    if key not in _in_image:
        checks = [f'command -v {t} >/dev/null || echo "missing:{t}"' for t in tools]
        checks += [f'python3 -c "import {m}" 2>/dev/null || echo "missing:{m}"' for m in modules]
        with tempfile.TemporaryDirectory() as d:
            r = run(["/bin/sh", "-c", "; ".join(checks) or "true"], d, timeout_s=120, mode=mode)
        if r.returncode != 0 and not r.stdout:
            _in_image[key] = [f"(image check failed: {r.stderr.strip()[-200:]})"]
        else:
            _in_image[key] = [line[8:] for line in r.stdout.splitlines() if line.startswith("missing:")]
    return _in_image[key]


def resolve(mode="auto"):
    """The concrete mode for `mode`; ValueError naming the mode and the reason if it cannot run here.
    "auto" is the first host mode that works (bwrap, unshare, plain); executors.run upgrades it to a
    container per language. "container" is podman, else docker."""
    if mode == "auto":
        for m in HOST_MODES:
            if probe(m)[0]:
                return m
        raise ValueError("no sandbox mode works here: " + "; ".join(f"{m}: {probe(m)[1]}" for m in HOST_MODES))
    if mode == "container":
        for m in ENGINES:
            if probe(m)[0]:
                return m
        raise ValueError("sandbox mode 'container' is not available: " + "; ".join(f"{m}: {probe(m)[1]}" for m in ENGINES))
    ok, why = probe(mode)
    if not ok:
        raise ValueError(f"sandbox mode {mode!r} is not available: {why}")
    return mode


def describe():
    """{mode: 'ok' | reason} for every mode, the user the code runs as, and the protections in force."""
    user = sandbox_user()
    out = {m: ("ok" if probe(m)[0] else probe(m)[1]) for m in MODES}
    out["user"] = user[2] if user else pwd.getpwuid(os.geteuid()).pw_name
    roots = _cgroup_roots()
    out["cgroups"] = ("v1" if len(roots) == 2 else "v2") if roots else "unavailable (not root, or none can be made)"
    out["disk_quota"] = "tmpfs work dirs" if quota_available() else "unavailable (not root)"
    return out


if __name__ == "__main__":
    for k, v in describe().items():
        print(f"{k:10s} {v}")
    print("auto ->", resolve("auto"))
