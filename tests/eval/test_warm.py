"""Warm workers (vc2/eval/warm.py): same outcomes and images as cold runs, nothing of a task reaches
the next one served by the same server, timeouts and dead servers handled.

Run: python -m pytest tests/eval/test_warm.py   (needs the renderers and bwrap: sandbox_images/install_host.sh)
Every test checks pool.stats, so a silent fallback to cold runs cannot make it pass.
"""
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vc2.eval import executors, sandbox
from vc2.eval.warm import WarmJob, WarmPool

from test_executors import CASES, CSV

WARM_LANGS = [lang for lang, mod in executors.LANGUAGES.items() if getattr(mod, "WARM", False)]


@pytest.fixture
def pool():
    p = WarmPool("bwrap")
    yield p
    p.close()


# The image comparison needs a deterministic page: the Chart.js case of test_executors sizes itself
# from a ResizeObserver, and under load its screenshot is sometimes 600 px tall instead of 604, warm or cold.
DRAW = {"html": '<html><body><canvas id="c" width="300" height="150"></canvas><svg width="200" height="100">'
                '<circle cx="50" cy="50" r="40" fill="teal"/><text x="100" y="55">theta</text></svg><script>'
                'const g = document.getElementById("c").getContext("2d"); g.fillStyle = "orange";'
                'setTimeout(() => g.fillRect(10, 10, 120, 80), 1000);</script></body></html>'}


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_five_warm_languages():
    assert sorted(WARM_LANGS) == ["html", "lilypond", "mermaid", "python", "vegalite"]


@pytest.mark.slow
@pytest.mark.parametrize("lang", WARM_LANGS)
def test_warm_matches_cold(tmp_path, pool, lang):
    """Each case of test_executors (bar the never-ending one) twice through one warm server: the same
    status as cold; and a drawing rendered warm (after those cases) pixel-identical to the cold render."""
    cases = [w for w in CASES[lang] if w != "timeout"]
    for rep in range(2):
        for want in cases:
            warm = executors.run(lang, CASES[lang][want], tmp_path / f"w{rep}{want}", data_csv=CSV, warm=pool)
            assert warm.status == want, f"warm {lang}/{want}: {warm.status}: {warm.error}"
    code = DRAW.get(lang, CASES[lang]["pass"])
    warm = executors.run(lang, code, tmp_path / "warm", data_csv=CSV, warm=pool)
    cold = executors.run(lang, code, tmp_path / "cold", data_csv=CSV)
    assert warm.status == cold.status == "pass"
    assert np.array_equal(pixels(cold.image), pixels(warm.image)), "warm image differs from cold"
    assert pool.stats["cold"] == 0 and pool.stats["warm"] == 2 * len(cases) + 1 and not pool.stats["failed"], pool.stats
    assert pool.stats["started"] == 1, "tasks run one after another must share one server"


LEAVE_BEHIND = r"""
import os, subprocess, matplotlib, matplotlib.pyplot as plt
for path in ("/tmp/leak", "/var/tmp/leak", "../leak", os.path.expanduser("~/leak")):  # /dev/shm: not writable
    open(path, "w").write("x")
subprocess.Popen(["sleep", "300"], start_new_session=True)   # a daemon that setsids
subprocess.Popen(["sh", "-c", "sleep 301 &"])                  # an orphan
matplotlib.rcParams["lines.linewidth"] = 9                   # state of a preloaded module
os.environ["LEAK"] = "1"
plt.plot([1, 2])
"""

FIND_LEFTOVERS = r"""
import os, matplotlib, matplotlib.pyplot as plt
left = [p for p in ("/tmp/leak", "/var/tmp/leak", "../leak", os.path.expanduser("~/leak")) if os.path.exists(p)]
procs = [open(f"/proc/{p}/cmdline").read() for p in os.listdir("/proc") if p.isdigit()]
left += [c for c in procs if c.startswith("sleep")]
if matplotlib.rcParams["lines.linewidth"] != 1.5: left.append("rcParams")
if "LEAK" in os.environ: left.append("env")
assert not left, f"left behind by the previous task: {left}"
plt.plot([1, 2])
"""


def test_python_task_leaves_nothing_for_the_next(tmp_path, pool):
    a = executors.run("python", LEAVE_BEHIND, tmp_path / "a", warm=pool)
    assert a.status == "pass", a.error
    b = executors.run("python", FIND_LEFTOVERS, tmp_path / "b", warm=pool)
    assert b.status == "pass", b.error
    assert pool.stats == {"warm": 2, "cold": 0, "started": 1, "failed": []}
    # and the check itself can fail: the same program sees its own leftovers
    c = executors.run("python", LEAVE_BEHIND + FIND_LEFTOVERS, tmp_path / "c", warm=pool)
    assert c.status == "runtime_error" and "left behind" in c.error


def test_lilypond_task_leaves_nothing_for_the_next(tmp_path, pool):
    music = '\\relative c\' { c4 d e f }\n'
    a = executors.run("lilypond", '#(system "touch /tmp/leak; sleep 300 &")\n#(define-public vc2-leak 1)\n' + music,
                      tmp_path / "a", warm=pool)
    assert a.status == "pass", a.error
    check = ('#(if (or (file-exists? "/tmp/leak") (defined? \'vc2-leak)) (ly:error "leftover"))\n'
             '#(if (zero? (system "pgrep -x sleep")) (ly:error "leftover process"))\n' + music)
    b = executors.run("lilypond", check, tmp_path / "b", warm=pool)
    assert b.status == "pass", b.error
    assert pool.stats == {"warm": 2, "cold": 0, "started": 1, "failed": []}


def test_html_task_state_does_not_reach_the_next(tmp_path, pool):
    write = ('<html><body><canvas id="c" width="200" height="100"></canvas><script>'
             'localStorage.setItem("leak", "1"); sessionStorage.setItem("leak", "1"); document.cookie = "leak=1";'
             'window.name = "leak"; indexedDB.open("leak"); document.cookie = "leak2=1; domain=vc2.local";'
             'addEventListener("unload", () => { window.name = "leak"; });'
             # a popup that would write later, after the page is gone (its origin's storage was cleared)
             'const w = window.open("about:blank");'
             'if (w) w.eval("setTimeout(() => opener.localStorage.setItem(\'leak\', \'2\'), 3000)");'
             'document.getElementById("c").getContext("2d").fillRect(0, 0, 100, 50);</script></body></html>')
    # pages share a tab when warm: a cold page's history has about:blank and the page itself
    read = ('<html><body><canvas id="c" width="200" height="100"></canvas><script>'
            'const left = [localStorage.getItem("leak"), sessionStorage.getItem("leak"), document.cookie, window.name,'
            ' history.length > 2 && "history " + history.length].filter(Boolean);'
            'if (left.length) throw new Error("leftover: " + left.join(","));'
            'document.getElementById("c").getContext("2d").fillRect(0, 0, 100, 50);</script></body></html>')
    assert executors.run("html", write, tmp_path / "a", warm=pool).status == "pass"
    time.sleep(4)  # the popup's timer would have fired by now
    b = executors.run("html", read, tmp_path / "b", warm=pool)
    assert b.status == "pass", b.error
    c = executors.run("html", write.replace("</script>", read.split("<script>")[1]), tmp_path / "c", warm=pool)
    assert c.status == "runtime_error" and "leftover" in c.error  # the check can fail
    assert pool.stats["warm"] == 3 and pool.stats["started"] == 1 and not pool.stats["cold"]


def test_mermaid_config_of_one_diagram_does_not_reach_the_next(tmp_path, pool):
    themed = "%%{init: {'theme': 'dark', 'flowchart': {'curve': 'step'}}}%%\nflowchart LR\n  X --> Y\n"
    assert executors.run("mermaid", themed, tmp_path / "a", warm=pool).status == "pass"
    warm = executors.run("mermaid", CASES["mermaid"]["pass"], tmp_path / "b", warm=pool)
    cold = executors.run("mermaid", CASES["mermaid"]["pass"], tmp_path / "c")
    assert warm.status == cold.status == "pass"
    assert np.array_equal(pixels(warm.image), pixels(cold.image))
    assert pool.stats["warm"] == 2 and pool.stats["started"] == 1


def test_timeout_kills_the_server_and_the_next_task_gets_a_new_one(tmp_path, pool):
    t0 = time.monotonic()
    out = executors.run("python", CASES["python"]["timeout"], tmp_path / "a", timeout_s=3, warm=pool)
    assert out.status == "timeout" and time.monotonic() - t0 < 30
    assert executors.run("python", CASES["python"]["pass"], tmp_path / "b", data_csv=CSV, warm=pool).status == "pass"
    assert pool.stats == {"warm": 2, "cold": 0, "started": 2, "failed": []}


def test_closing_the_pool_leaves_no_process(tmp_path):
    pool = WarmPool("bwrap")
    for lang in WARM_LANGS:
        assert executors.run(lang, CASES[lang]["pass"], tmp_path / lang, data_csv=CSV, warm=pool).status == "pass"
    servers = list(pool._all)
    assert len(servers) == 4 and all(s.alive() for s in servers)  # html and mermaid share the browser
    pool.close()
    assert all(not s.alive() and not sandbox.survivors(s.token) and not s.dir.exists() for s in servers)


def test_plain_sandbox_runs_cold(tmp_path):
    with WarmPool("plain") as pool:
        assert "pid namespace" in pool.why_cold
        assert pool.run(WarmJob("python"), tmp_path, "plain", timeout_s=10) is None
        assert pool.stats == {"warm": 0, "cold": 1, "started": 0, "failed": []}


def test_unshare_mode_serves_warm_too(tmp_path):
    """Under unshare the server is pid 1 of its namespace: it must reap the task's orphans itself."""
    with WarmPool("unshare") as pool:
        for name in ("a", "b"):
            out = executors.run("python", LEAVE_BEHIND if name == "a" else FIND_LEFTOVERS, tmp_path / name,
                                sandbox="unshare", warm=pool)
            assert out.status == "pass" and out.sandbox == "unshare", out.error
        assert pool.stats == {"warm": 2, "cold": 0, "started": 1, "failed": []}


def test_server_refuses_to_sweep_outside_a_pid_namespace():
    path = Path(executors.__file__).parent / "warm_server.py"
    spec = importlib.util.spec_from_file_location("warm_server_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod._own_pid_namespace()
    with pytest.raises(RuntimeError, match="refusing to sweep"):
        mod.sweep()
