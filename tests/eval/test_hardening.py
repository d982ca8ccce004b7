"""Hostile programs against the sandbox and the warm servers, one class of attack per test: none may
change another task's verdict, crash the run, fill the disk, take more than its memory or process
share, leave a message for a later task, or read the answer key. Each test failed at b61c0f7.

Run: python -m pytest tests/eval/test_hardening.py   (needs the renderers, bwrap and podman: install_host.sh)

The matrix (class x mode): bwrap and unshare, cold and warm, for every class; podman (the minimal
base image, python3 only) for the classes that need no renderer; plain mode for what it claims
(disk, memory and process totals, keyring, output), see the "covered / not covered" list in sandbox.py.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import run_eval
from vc2.eval import containers, executors, runner, sandbox
from vc2.eval.tasks import Task, load_tasks
from vc2.eval.warm import WarmPool

ROOT = os.geteuid() == 0
PY = sys.executable
TEST_IMAGE = "localhost/vc2-base:bookworm"  # sandbox_images/base_image.sh: Debian + python3, no renderer
PODMAN = ["podman"] if shutil.which("podman") and subprocess.run(
    ["podman", "image", "exists", TEST_IMAGE], capture_output=True).returncode == 0 else []
NS = [m for m in ("bwrap", "unshare") if sandbox.probe(m)[0]]
COLD = NS + PODMAN + ["plain"]  # modes for sandbox.run-level programs
# "container": the renderers' own family images (sandbox_images/build.sh; install_host.sh builds them all)
FAMILIES = ["container"] if PODMAN and all(containers.present("podman", containers.tag(f)) for f in containers.FAMILIES) else []
RENDER = ["bwrap"] + FAMILIES  # modes for the renderer classes (executors.run, cold)
REFS = {t.id: t for t in load_tasks(None, ["python", "lilypond"])}
PKG = Path(executors.__file__).resolve().parents[2]  # the installed vc2 package
ANSWER_KEY = PKG / "eval" / "assets" / "tasks"      # our reference solutions and their images


@pytest.fixture(autouse=True)
def container_image(request, monkeypatch):
    params = getattr(request.node, "callspec", None)
    if params and params.params.get("mode") in ("podman", "docker"):
        monkeypatch.setattr(sandbox, "IMAGE", TEST_IMAGE)
        monkeypatch.setattr(sandbox, "_probed", {})
        monkeypatch.setattr(sandbox, "_in_image", {})


def test_the_matrix_is_complete_here():
    """Say so loudly rather than test fewer modes in silence."""
    assert NS == ["bwrap", "unshare"], [sandbox.probe(m) for m in ("bwrap", "unshare")]
    assert PODMAN or not shutil.which("podman"), f"podman is installed but {TEST_IMAGE} is missing"
    assert FAMILIES or not PODMAN, "podman is installed but the family images are not all built: " \
                                   "bash sandbox_images/build.sh --base localhost/vc2-base:bookworm"
    assert ROOT, "the uid drop, tmpfs work dirs and cgroups are only made as root: run the tests as root"
    assert sandbox.describe()["cgroups"] in ("v1", "v2")


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def run_py(prog, tmp_path, mode, timeout_s=60, **kw):
    """A Python program through sandbox.run; in plain mode Debian's python3 (the sandbox user cannot
    reach a venv whose interpreter lives under /root there); "container": podman with the python image."""
    d = tmp_path / f"w{time.monotonic_ns()}"
    d.mkdir()
    py = "/usr/bin/python3" if mode == "plain" else PY
    if mode == "container":
        with sandbox.use_image(containers.tag("python")):
            return sandbox.run([py, "-c", textwrap.dedent(prog)], d, timeout_s=timeout_s, mode="podman", **kw)
    return sandbox.run([py, "-c", textwrap.dedent(prog)], d, timeout_s=timeout_s, mode=mode, **kw)


# ---------------------------------------------------------------------------------------------
# 1. a task takes over its warm server: forged answers, signals, tracing

# Finds every other process it can see (its parent, the server, above all) and tries what worked at
# b61c0f7: copying the server's answer pipe (fd 3) with pidfd_getfd and writing forged answers,
# ptrace, /proc/PID/mem. (Signals: the next test, by their effect.) Then plants an image and fails:
# its own verdict must be a failure. /proc may be a view from outside the task's pid namespace, so
# "me" is both our pid and what /proc/self says.
ATTACK = r'''
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
me, got = {os.getpid(), int(os.readlink("/proc/self"))}, []
forged = b'{"rc": 0}\n' * 50
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) in me:
        continue
    pid = int(name)
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        continue
    if b"warm_server.py" not in cmd and b"lily_server.scm" not in cmd:
        continue  # a server, or a fork of one (our own task's processes are ours to touch)
    pfd = libc.syscall(434, pid, 0)  # pidfd_open
    for fd in range(3, 8):
        nfd = libc.syscall(438, pfd, fd, 0) if pfd >= 0 else -1  # pidfd_getfd
        if nfd >= 0:
            try:
                os.write(nfd, forged)
                got.append(f"wrote forged answers into fd {fd} of {pid} ({cmd[:60]!r})")
            except OSError:
                pass
    if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
        got.append(f"ptrace-attached {pid}")
    try:
        with open(f"/proc/{pid}/mem", "r+b"):
            got.append(f"opened /proc/{pid}/mem")
    except OSError:
        pass
OUT = sys.argv[1] if len(sys.argv) > 1 else "attack.json"
open(OUT, "w").write(json.dumps(got))
'''

PLANT_AND_FAIL = ATTACK + r'''
import matplotlib.pyplot as plt
plt.plot([3, 1, 2]); plt.savefig("planted.png"); plt.close("all")
raise SystemExit("attack done: " + json.dumps(got))
'''


def follow_ups(tmp_path, mode, pool, tag):
    """Tasks whose verdicts are known, right after an attack: each must come out as it does cold."""
    ref = REFS["python_1"]
    outs = {}
    for i in range(3):
        outs[f"ref{i}"] = executors.run("python", ref.reference_code, tmp_path / f"{tag}ref{i}", data_csv=ref.data_csv,
                                        sandbox=mode, warm=pool)
    outs["raise"] = executors.run("python", "raise ValueError('boom')", tmp_path / f"{tag}raise", sandbox=mode, warm=pool)
    outs["syntax"] = executors.run("python", "plot(", tmp_path / f"{tag}syntax", sandbox=mode, warm=pool)
    cold = executors.run("python", ref.reference_code, tmp_path / f"{tag}cold", data_csv=ref.data_csv, sandbox=mode)
    for i in range(3):
        assert outs[f"ref{i}"].status == "pass", outs[f"ref{i}"].error
        assert np.array_equal(pixels(outs[f"ref{i}"].image), pixels(cold.image)), "another task's image"
    assert outs["raise"].status == "runtime_error" and "boom" in outs["raise"].error
    assert outs["syntax"].status == "syntax_error"


@pytest.mark.slow
@pytest.mark.parametrize("mode", NS)  # Python runs cold in containers (warm.py)
def test_python_task_cannot_forge_its_servers_answers(tmp_path, mode):
    with WarmPool(mode) as pool:
        out = executors.run("python", PLANT_AND_FAIL, tmp_path / "attack", sandbox=mode, warm=pool)
        assert out.status == "runtime_error", (out.status, out.error)  # it raised: no forged "pass"
        assert "attack done: []" in out.error, out.error  # and none of its attacks worked
        follow_ups(tmp_path, mode, pool, "a")
        assert pool.stats["warm"] == 6 and pool.stats["cold"] == 0 and not pool.stats["failed"], pool.stats
        assert pool.stats["started"] == 1, "the server survived its task and served the others"


@pytest.mark.parametrize("mode", NS)  # Python runs cold in containers (warm.py)
def test_python_task_cannot_signal_its_server(tmp_path, mode):
    """At b61c0f7 a task could SIGKILL its server (then it ran cold); now it cannot reach it at all."""
    killer = ("import os, signal, matplotlib.pyplot as plt\n"
              "for p in filter(str.isdigit, os.listdir('/proc')):\n"
              "    if int(p) != os.getpid():\n"
              "        try:\n"
              "            os.kill(int(p), signal.SIGKILL)\n"
              "        except OSError:\n"
              "            pass\n"
              "plt.plot([1, 2])\n")
    with WarmPool(mode) as pool:
        out = executors.run("python", killer, tmp_path / "a", sandbox=mode, warm=pool)
        assert out.status == "pass", out.error
        ref = REFS["python_1"]
        nxt = executors.run("python", ref.reference_code, tmp_path / "b", data_csv=ref.data_csv, sandbox=mode, warm=pool)
        assert nxt.status == "pass", nxt.error
        assert pool.stats == {"warm": 2, "cold": 0, "started": 1, "failed": []}, pool.stats


def scheme_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.slow
@pytest.mark.parametrize("mode", NS + FAMILIES)
def test_lilypond_score_cannot_forge_its_servers_answers(tmp_path, mode):
    """LilyPond's Scheme `(system ...)` runs programs: the same attack, from a score."""
    music = "\\relative c' { c4 d e f }\n"
    attack = (f"#(call-with-output-file \"a.py\" (lambda (p) (display {scheme_string(ATTACK)} p)))\n"
              "#(system \"python3 a.py attack.json\")\n"
              "#(let ((got (call-with-input-file \"attack.json\" (@ (ice-9 rdelim) read-line))))\n"
              "   (if (not (string=? got \"[]\")) (ly:error (string-append \"attack worked: \" got))))\n" + music)
    with WarmPool(mode) as pool:
        out = executors.run("lilypond", attack, tmp_path / "attack", sandbox=mode, warm=pool)
        assert out.status == "pass", out.error  # every attack failed, and the score rendered
        fine = executors.run("lilypond", music, tmp_path / "fine", sandbox=mode, warm=pool)
        bad = executors.run("lilypond", "\\relative c' { c4 d e f", tmp_path / "bad", sandbox=mode, warm=pool)
        worse = executors.run("lilypond", "\\relative c' { c4 \\nosuchcommand }", tmp_path / "worse", sandbox=mode,
                              warm=pool)
        assert fine.status == "pass" and bad.status == "syntax_error" and worse.status == "syntax_error", \
            (fine.status, bad.status, worse.status, bad.error)
        assert pool.stats["warm"] == 4 and pool.stats["started"] == 1 and not pool.stats["failed"], pool.stats


# ---------------------------------------------------------------------------------------------
# 2. an output the host cannot decode, or an honest huge one, must not crash the run

@pytest.mark.parametrize("mode", RENDER)
def test_undecodable_saved_image_is_the_tasks_failure(tmp_path, mode):
    code = "open('chart.jpg', 'wb').write(b'\\xff\\xd8 this is not a JPEG' * 100)\n"
    out = executors.run("python", code, tmp_path / "a", sandbox=mode)
    assert out.status == "no_image" and "cannot be used" in out.error, (out.status, out.error)


@pytest.mark.slow
@pytest.mark.parametrize("mode", RENDER)
def test_a_huge_tikz_poster_passes_at_a_capped_size(tmp_path, mode):
    poster = ("\\documentclass[tikz]{standalone}\\begin{document}\\begin{tikzpicture}"
              "\\draw[fill=teal] (0,0) rectangle (250cm,250cm); \\node[scale=80] at (125cm,125cm) {poster};"
              "\\end{tikzpicture}\\end{document}\n")
    out = executors.run("latex", poster, tmp_path / "a", sandbox=mode)
    assert out.status == "pass", out.error
    w, h = Image.open(out.image).size
    assert w * h <= executors.images.MAX_RENDER_PIXELS and w > 3000  # scaled down, not cut to a corner


def test_a_failure_while_handling_one_task_is_that_tasks_row(tmp_path, monkeypatch):
    real = executors.run

    def flaky(language, code, workdir, **kw):
        if "EXPLODE" in code:
            raise RuntimeError("decoder exploded")
        return real(language, code, workdir, **kw)

    monkeypatch.setattr(runner.executors, "run", flaky)
    tasks = [Task(language="svg", id=f"svg_{i}", description="d", style="s", vis_cate="Bars") for i in range(3)]
    good = '<svg xmlns="http://www.w3.org/2000/svg" width="60" height="40"><rect width="50" height="30"/></svg>'
    src = runner.FixedAnswers("responses", {"svg/svg_0": f"```\n{good}\n```", "svg/svg_1": "```\nEXPLODE\n```",
                                            "svg/svg_2": f"```\n{good}\n```"})
    summary = runner.evaluate(tasks, src, tmp_path / "out", rounds=0, workers=2, sandbox="bwrap")
    rows = {json.loads(l)["id"]: json.loads(l) for l in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert rows["svg_1"]["outcome"] == "infra_error" and "decoder exploded" in rows["svg_1"]["error"]
    assert rows["svg_0"]["outcome"] == rows["svg_2"]["outcome"] == "pass"
    assert summary["languages"]["svg"]["passed_by_round"] == [2]


# ---------------------------------------------------------------------------------------------
# 3. unbounded output: neither the harness's memory nor its disk

@pytest.mark.parametrize("mode", COLD)
def test_a_flood_of_output_costs_the_harness_nothing(tmp_path, mode):
    """300 MB on stdout. At b61c0f7 the output went to a host file (12.5 GB after 50 s in container mode)
    and was read back whole; now it is drained while it is produced and only the tail is kept."""
    child = textwrap.dedent(f"""
        from vc2.eval import sandbox
        sandbox.IMAGE = {TEST_IMAGE!r}
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
        sandbox.resolve({mode!r})
        before = rss()
        r = sandbox.run(["/bin/sh", "-c", "head -c 300000000 /dev/zero | tr '\\\\0' x; echo END"], {str(tmp_path)!r},
                        timeout_s=120, mode={mode!r})
        # VmHWM: this process's own peak (ru_maxrss would carry the forking pytest's over exec)
        peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) >> 10
        print(r.returncode, len(r.stdout), r.stdout[-4:].strip(), peak - before)
    """)
    p = subprocess.run([PY, "-c", child], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert p.returncode == 0, p.stderr[-2000:]
    rc, kept, end, grew_mb = p.stdout.split()
    assert rc == "0" and end == "END" and int(kept) <= sandbox.TAIL
    assert int(grew_mb) < 64, f"the harness grew by {grew_mb} MB while the program printed 300 MB"


# ---------------------------------------------------------------------------------------------
# 4. the disk: a task's total is capped, not just each file

FILL = """
import os
total = 0
try:
    for i in range(900):
        with open(f"fill{i}.bin", "wb") as f:
            f.write(b"x" * (1 << 20))
        total += 1
except OSError as e:
    pass
print("wrote", total, "MB")
"""


@pytest.mark.parametrize("mode", COLD)
def test_a_tasks_disk_use_is_capped(tmp_path, mode):
    r = run_py(FILL, tmp_path, mode, timeout_s=120)
    written = int(r.stdout.split()[1])
    assert written <= 512 + 1, f"{written} MB written in mode {mode}"  # Limits.disk_mb
    assert written >= 100, r.stdout + r.stderr  # the program did run


@pytest.mark.parametrize("mode", NS)  # Python runs cold in containers (warm.py)
def test_a_warm_tasks_disk_use_is_capped(tmp_path, mode):
    code = FILL.replace('print("wrote", total, "MB")', 'raise SystemExit(f"wrote {total} MB")')
    with WarmPool(mode) as pool:
        out = executors.run("python", code, tmp_path / "a", sandbox=mode, warm=pool)
        assert pool.stats["warm"] == 1, pool.stats
    written = int(out.error.split("wrote ")[1].split()[0])
    assert 100 <= written <= 512 + 64 + 1, out.error  # the task's quota plus the server's share


# ---------------------------------------------------------------------------------------------
# 5. the answer key (reference solutions and images) and other runs' outputs are not visible

def peek_program(paths):
    return textwrap.dedent(f"""
        import glob, os
        seen = []
        for p in {[str(p) for p in paths]!r}:
            if os.path.exists(p):
                seen.append(p)
        for top in ("/opt", "/srv", "/mnt", "/home", "/root", "/tmp", "/var", "/work", "/media"):
            seen += glob.glob(top + "/**/python.jsonl", recursive=True)[:3]
        print("SEEN", seen)
    """)


def secret_paths(tmp_path):
    out = tmp_path / "other-run"
    (out / "images").mkdir(parents=True)
    (out / "results.jsonl").write_text("{}")
    sandbox.hide(out)  # what the runner does with its --out dir
    key = ANSWER_KEY
    return [key, key / "python.jsonl", key / "images" / "python" / "python_1.png", out / "results.jsonl",
            Path(__file__), PKG / "eval" / "tasks.py"]


@pytest.mark.parametrize("mode", NS + PODMAN)
def test_the_answer_key_is_not_visible(tmp_path, mode):
    paths = secret_paths(tmp_path)
    if mode in PODMAN:  # the image has its own root; only the drivers are mounted from the host
        paths = [p for p in paths if str(p).startswith(str(PKG)) or "other-run" in str(p)]
    r = run_py(peek_program(paths), tmp_path, mode)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SEEN []", r.stdout


@pytest.mark.parametrize("mode", NS)  # Python runs cold in containers (warm.py)
def test_the_answer_key_is_not_visible_to_warm_tasks(tmp_path, mode):
    code = peek_program(secret_paths(tmp_path)).replace('print("SEEN", seen)', 'raise SystemExit(f"SEEN {seen}")')
    with WarmPool(mode) as pool:
        out = executors.run("python", code, tmp_path / "a", sandbox=mode, warm=pool)
        assert pool.stats["warm"] == 1
    assert "SEEN []" in out.error, out.error


@pytest.mark.parametrize("mode", RENDER)
def test_vegalite_cannot_embed_the_reference_through_a_file_url(tmp_path, mode):
    ref = ANSWER_KEY / "images" / "vegalite" / "vegalite_1.png"
    for spec in ({"data": {"values": [{"u": f"file://{ref}"}]}, "mark": {"type": "image", "width": 80, "height": 80},
                  "encoding": {"url": {"field": "u"}}},
                 {"data": {"url": f"file://{ref.parent.parent.parent}/vegalite.jsonl"}, "mark": "point"}):
        out = executors.run("vegalite", json.dumps(spec), tmp_path / f"v{len(str(spec))}", sandbox=mode)
        assert out.status == "runtime_error" and "file: URLs are not allowed" in out.error, (out.status, out.error)


# ---------------------------------------------------------------------------------------------
# 6. per-uid resources: process slots, a memory total for the tree, the kernel keyring

BOMB = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(12)
            os._exit(0)
        n += 1
except OSError:
    pass
print("forked", n)
time.sleep(12)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", NS + FAMILIES)
def test_a_fork_bomb_does_not_starve_a_task_beside_it(tmp_path, mode):
    bomb = threading.Thread(target=run_py, args=(BOMB, tmp_path, mode), kwargs={"timeout_s": 20})
    bomb.start()
    time.sleep(4)  # the bomb holds all the slots it could take
    music = "\\relative c' { c4 d e f g a b c }\n"
    try:
        cold = executors.run("lilypond", music, tmp_path / "cold", sandbox=mode)
        with WarmPool(mode) as pool:
            warm = executors.run("lilypond", music, tmp_path / "warm", sandbox=mode, warm=pool)
            assert pool.stats["warm"] == 1, pool.stats
        py = executors.run("python", REFS["python_1"].reference_code, tmp_path / "py",
                           data_csv=REFS["python_1"].data_csv, sandbox=mode)
    finally:
        bomb.join()
    assert cold.status == warm.status == py.status == "pass", (cold.error, warm.error, py.error)


@pytest.mark.parametrize("mode", COLD)
def test_memory_is_capped_for_the_whole_tree(tmp_path, mode):
    """Three processes of 200 MB each under a 256 MB limit: RLIMIT_DATA alone (per process) let all
    three through at b61c0f7; the cgroup (or the container's) holds the total."""
    prog = """
        import os, sys
        kids = []
        for i in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    b = bytearray(200 << 20)
                    for j in range(0, len(b), 4096):
                        b[j] = 1
                    print("ok", flush=True)
                    import time; time.sleep(3)
                except MemoryError:
                    print("MemoryError", flush=True)
                os._exit(0)
            kids.append(pid)
        for k in kids:
            os.waitpid(k, 0)
    """
    r = run_py(prog, tmp_path, mode, mem_mb=256)
    assert r.stdout.count("ok") < 3, (r.stdout, r.stderr)


KEY_TAG = f"vc2msg-{os.getpid()}-{time.time_ns()}"  # unique: earlier runs' keys must not matter
KEY_WRITE = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for ring in (-4, -3, -5):  # user, session, user-session keyrings
    r = libc.syscall(248, b"user", b"{KEY_TAG}", b"hello from a task", 17, ring)  # add_key
    print("add_key", ring, r, ctypes.get_errno())
    r = libc.syscall(250, 1, b"{KEY_TAG}-ring")  # KEYCTL_JOIN_SESSION_KEYRING: a named keyring is a message too
"""
KEY_READ = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
found = [ring for ring in (-4, -3, -5) if libc.syscall(250, 10, ring, b"user", b"{KEY_TAG}", 0) > 0]  # KEYCTL_SEARCH
found += [ring for ring in (-4, -3, -5) if libc.syscall(250, 10, ring, b"keyring", b"{KEY_TAG}-ring", 0) > 0]
print("FOUND", found)
"""


@pytest.mark.parametrize("mode", COLD)
def test_no_message_through_the_kernel_keyring(tmp_path, mode):
    a = run_py(KEY_WRITE, tmp_path, mode)
    b = run_py(KEY_READ, tmp_path, mode)
    assert b.returncode == 0 and "FOUND []" in b.stdout, (a.stdout, b.stdout, b.stderr)


@pytest.mark.parametrize("mode", NS)  # Python runs cold in containers (warm.py)
def test_no_message_through_the_kernel_keyring_warm(tmp_path, mode):
    with WarmPool(mode) as pool:
        executors.run("python", KEY_WRITE, tmp_path / "a", sandbox=mode, warm=pool)
        out = executors.run("python", KEY_READ.replace('print("FOUND", found)', 'raise SystemExit(f"FOUND {found}")'),
                            tmp_path / "b", sandbox=mode, warm=pool)
        assert pool.stats["warm"] == 2
    assert "FOUND []" in out.error, out.error


# ---------------------------------------------------------------------------------------------
# 7. the smaller ones: file: data in Vega-Lite, bad responses files, leftovers of a killed run

@pytest.mark.parametrize("mode", RENDER)
def test_vegalite_file_data_is_an_error_not_an_empty_chart(tmp_path, mode):
    spec = {"data": {"url": "file:///etc/hostname"}, "mark": "bar",
            "encoding": {"x": {"field": "a", "type": "nominal"}, "y": {"field": "b", "type": "quantitative"}}}
    out = executors.run("vegalite", json.dumps(spec), tmp_path / "a", sandbox=mode)
    assert out.status == "runtime_error", (out.status, out.error)


def responses_error(tmp_path, capsys, content: bytes):
    f = tmp_path / "answers.jsonl"
    f.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        run_eval.main(["--responses", str(f), "--lang", "svg", "--out", str(tmp_path / "out"), "--rounds", "0"])
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b'{"id": "svg_1", "code": "<svg/>"}\n{"id": "svg_1", "code": "<svg></svg>"}\n', r"answers.jsonl:2: id 'svg_1' is given twice \(first at line 1\)"),
    (b'{"id": "svg_99999", "code": "<svg/>"}\n', r"response id 'svg_99999' matches no task"),
    (b'{"id": "svg_1", "answer": null}\n', r"answers.jsonl:1: field 'answer' must be a string, not NoneType"),
    (b'{"id": "svg_1", "answer": 42}\n', r"answers.jsonl:1: field 'answer' must be a string, not int"),
    (b'{"id": "svg_1", "answer": "ok"}\n{"id": "svg_2", "answer": "\xff\xfe"}\n', r"answers.jsonl:2: not UTF-8"),
    (b'[1, 2]\n', r"answers.jsonl:1: a response row needs 'id'"),
])
def test_bad_responses_rows_are_named(tmp_path, capsys, content, message):
    import re
    err = responses_error(tmp_path, capsys, content)
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_bad_task_rows_are_named(tmp_path):
    import re
    cases = [(b'{"id": "svg_1"\n', r"svg.jsonl:1: not valid JSON"),
             (b'\xff{"id": 1}\n', r"svg.jsonl:1: not valid JSON \(not UTF-8"),
             (b'{"id": "svg_1", "task__plot_description": 5, "task__plot_style": "", "data": "", "used_lib": [], '
              b'"vis_cate": "", "subtype": ""}\n', r"svg.jsonl:1: field 'task__plot_description' must be")]
    for content, message in cases:
        f = tmp_path / "svg.jsonl"
        f.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            load_tasks(f, ["svg"])


def test_a_killed_runs_leftovers_are_cleaned_and_a_live_runs_are_not(tmp_path):
    """kill -9 in the middle of sandboxed runs leaves dirs (tmpfs mounts too) and cgroups; a later run
    removes them, but never those of a run that is still alive beside it."""
    start = textwrap.dedent("""
        import sys, time
        from vc2.eval import sandbox
        box = sandbox.Box("bwrap", sandbox.Limits(60))
        print(box.dir, flush=True)
        box.popen(["sleep", "300"], sandbox.environment(box.dir, box.token))
        time.sleep(300)
    """)
    procs = [subprocess.Popen([PY, "-c", start], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
             for _ in range(2)]
    dead_dir, live_dir = (Path(p.stdout.readline().strip()) for p in procs)
    try:
        assert dead_dir.is_dir() and live_dir.is_dir()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        time.sleep(0.5)
        assert dead_dir.is_dir()  # kill -9 left it behind
        sandbox.clean_stale()
        assert not dead_dir.exists(), "a killed run's dir was not removed"
        assert live_dir.is_dir(), "a live run's dir was removed"
        assert not [c for r in sandbox._cgroup_roots() for c in r.glob(f"vc2-{procs[0].pid}-*")]
        assert [c for r in sandbox._cgroup_roots() for c in r.glob(f"vc2-{procs[1].pid}-*")]
    finally:
        procs[1].kill()
        procs[1].wait()
        sandbox.clean_stale()


def test_threads_of_a_fresh_process_take_the_owner_lock_without_deadlock():
    """The first private dirs of a process are often made by several worker threads at once; each
    must get one (flock belongs to an open file, so a second open of the lock file would wait forever)."""
    code = textwrap.dedent("""
        import threading
        from vc2.eval import sandbox
        barrier, made = threading.Barrier(8), []
        def make():
            barrier.wait()
            made.append(sandbox.private_dir("t"))
        threads = [threading.Thread(target=make) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(len(set(made)))
        [d.rmdir() for d in made]
    """)
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert p.returncode == 0 and p.stdout.strip() == "8", p.stderr


# ---------------------------------------------------------------------------------------------
# 8. a container image without the renderer: infra error, not the model's failure

@pytest.mark.skipif(not PODMAN, reason=f"podman or {TEST_IMAGE} missing (install_host.sh makes both)")
def test_a_renderer_missing_from_the_image_is_an_infra_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "IMAGE", TEST_IMAGE)
    monkeypatch.setattr(sandbox, "_probed", {})
    monkeypatch.setattr(sandbox, "_in_image", {})
    good = '<svg xmlns="http://www.w3.org/2000/svg" width="60" height="40"><rect width="50" height="30"/></svg>'
    out = executors.run("svg", good, tmp_path / "a", sandbox="podman")
    assert out.status == "infra_error" and "rsvg-convert" in out.error, (out.status, out.error)
    out = executors.run("python", "print(1)", tmp_path / "b", sandbox="podman")
    assert out.status == "infra_error" and "matplotlib" in out.error, (out.status, out.error)
