"""Container images per language family (vc2/eval/containers.py, sandbox_images/*.Containerfile).

The first part needs no engine (the drift check, in CI everywhere): every tool and module a language
record needs is installed by its family's build file, the build files parse, tags follow their inputs.
The second part runs programs in the built images (podman; install_host.sh builds every family):
the same verdicts as bwrap on every golden case, the adversarial programs contained, `auto` choosing
a container per language, and the report saying so.

    python -m pytest tests/eval/test_containers.py
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vc2.eval import containers, executors, languages, sandbox
from vc2.eval.languages.typescript import NODE_TOOLS

ROOT = Path(__file__).resolve().parents[2]
PODMAN = shutil.which("podman") is not None
needs_images = pytest.mark.skipif(not PODMAN, reason="podman is not installed (install_host.sh installs it and "
                                                     "builds the images)")


# ---------------------------------------------------------------------------------------------
# the drift check: no engine needed

def instructions(text):
    """(INSTRUCTION, argument) pairs of a Containerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, arg = buf.partition(" ")
            out.append((word.upper(), arg.strip()))
            buf = ""
    assert not buf, "a continuation line runs off the end of the file"
    return out


@pytest.mark.parametrize("family", containers.FAMILIES)
def test_each_build_file_parses_starts_from_the_base_argument_and_drops_root(family):
    steps = instructions(containers.build_file(family).read_text())
    words = [w for w, _ in steps]
    assert set(words) <= {"ARG", "FROM", "COPY", "RUN", "ENV", "USER", "LABEL", "WORKDIR"}, words
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE=") and steps[1] == ("FROM", "${BASE}")
    assert words.count("FROM") == 1
    assert steps[-1][0] == "USER" and steps[-1][1] not in ("root", "0")  # the image's default user is not root
    copies = [a for w, a in steps if w == "COPY"]
    assert any(a.startswith("apt.txt pip.txt npm.txt ") for a in copies)  # the lists come from the records
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert "$(cat /opt/vc2/lists/apt.txt)" in runs and "--no-install-recommends" in runs
    pk = containers.packages(family)
    if pk["pip"]:
        assert "-r /opt/vc2/lists/pip.txt" in runs
    if pk["npm"]:
        assert "$(cat /opt/vc2/lists/npm.txt)" in runs and "--prefix /opt/vc2/node-tools" in runs
    assert "executors" not in " ".join(copies)  # the drivers are mounted at run time, never copied in


@pytest.mark.parametrize("name", list(languages.LANGUAGES))
def test_every_tool_and_module_of_a_record_is_installed_by_its_familys_image(name):
    rec = languages.LANGUAGES[name]
    pk = containers.packages(rec.image)
    pins = {line.split("==")[0].lower() for line in pk["pip"]} | {line.rsplit("@", 1)[0] for line in pk["npm"]}
    for tool in rec.tools:
        if tool.startswith(NODE_TOOLS):  # the pinned tsc: an npm package under /opt/vc2/node-tools
            assert tool[len(NODE_TOOLS) + 1:].split("/")[0] in pins, (name, tool)
        else:
            assert containers.TOOL_PACKAGES.get(tool) in pk["apt"], f"{name}: {tool} comes from no package of {rec.image}"
    for module in rec.modules:
        assert containers.MODULE_DISTS[module].lower() in pins, f"{name}: module {module} is in no pip line of {rec.image}"
    assert set(rec.apt) <= set(pk["apt"]) and {p.lower() for p in rec.pip} <= pins and set(rec.npm) <= pins


def test_the_tool_table_is_what_dpkg_says_where_the_tools_are_installed():
    """TOOL_PACKAGES is data; on a host with the tools (CI installs them) dpkg must agree with it."""
    if shutil.which("dpkg") is None:
        pytest.skip("no dpkg on this machine (the table is checked on Debian hosts)")
    checked = 0
    for tool, package in containers.TOOL_PACKAGES.items():
        path = shutil.which(tool)
        if path is None:
            continue
        real = str(Path(path).resolve())
        owners = set()
        for p in {path, real, real.replace("/usr/bin/", "/bin/", 1)}:
            r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
            owners |= {o.strip().split(":")[0] for line in r.stdout.splitlines() for o in line.split(":")[0].split(",")}
        if not owners:  # a tool from elsewhere (e.g. a NodeSource node): nothing to compare
            continue
        assert package in owners, (tool, package, owners)
        checked += 1
    assert checked >= 8  # the renderers install_host.sh installs are on PATH here


def test_tags_follow_the_build_inputs_and_one_list_change_moves_only_its_families(monkeypatch, tmp_path):
    before = {f: containers.tag(f) for f in containers.FAMILIES}
    assert all(t.startswith(f"localhost/vc2-{f}:{containers.VERSION}-") for f, t in before.items())
    assert len(set(before.values())) == len(containers.FAMILIES)
    assert before == {f: containers.tag(f) for f in containers.FAMILIES}  # deterministic
    fake = tmp_path / "sandbox_images"
    shutil.copytree(containers.ROOT, fake)
    monkeypatch.setattr(containers, "ROOT", fake)
    assert {f: containers.tag(f) for f in containers.FAMILIES} == before  # the place of the checkout is not hashed
    req = fake / "pip-requirements.txt"
    req.write_text(req.read_text().replace("playwright==", "playwright==0.0.1; #"))
    after = {f: containers.tag(f) for f in containers.FAMILIES}
    moved = {f for f in containers.FAMILIES if after[f] != before[f]}
    assert moved == {f for f in containers.FAMILIES if any("playwright" in r.pip for r in containers.records(f))}
    assert moved == {"python", "web"}
    (fake / "tex.Containerfile").write_text((fake / "tex.Containerfile").read_text() + "RUN true\n")
    assert containers.tag("tex") != before["tex"]
    (fake / "apt-packages.txt").write_text((fake / "apt-packages.txt").read_text().replace("\nlilypond\n", "\n"))
    with pytest.raises(ValueError, match="apt-packages.txt: lacks lilypond"):
        containers.packages("lilypond")


def test_context_holds_the_build_file_and_the_lists(tmp_path):
    out = containers.write_context("native", tmp_path / "ctx")
    assert sorted(p.name for p in out.iterdir()) == ["Containerfile", "apt.txt", "npm.txt", "pip.txt"]
    assert (out / "npm.txt").read_text().splitlines() == sorted(
        line for line in (containers.ROOT / "node-tools.txt").read_text().splitlines() if line and line[0] != "#")
    assert "g++" in (out / "apt.txt").read_text().split() and not (out / "pip.txt").read_text()


def test_build_sh_help_and_bad_arguments():
    ok = subprocess.run(["bash", "sandbox_images/build.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "FAMILY" in ok.stdout and "--base" in ok.stdout
    bad = subprocess.run(["bash", "sandbox_images/build.sh", "--engine", "podman", "nosuch"], cwd=ROOT,
                         capture_output=True, text=True, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    if PODMAN:
        assert bad.returncode == 2 and "unknown family nosuch" in bad.stdout, bad.stdout + bad.stderr


# ---------------------------------------------------------------------------------------------
# in the images (podman)

@pytest.fixture(scope="module")
def built():
    missing = [containers.tag(f) for f in containers.FAMILIES if not containers.present("podman", containers.tag(f))]
    assert not missing, f"podman is installed but these images are not built: {missing}; run " \
                        "`bash sandbox_images/build.sh --base localhost/vc2-base:bookworm` (install_host.sh does)"
    assert sandbox.IMAGE is None, "VC2_SANDBOX_IMAGE is set: every language would run in that one image"
    return True


@needs_images
def test_auto_picks_each_languages_image_and_the_report_says_so(built, monkeypatch, tmp_path):
    monkeypatch.setattr(executors, "AUTO_CONTAINERS", True)
    by_lang = executors.sandbox_by_language("auto")
    assert by_lang == {n: f"podman {containers.image_for(n)}" for n in languages.LANGUAGES}
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="60" height="40"><rect width="50" height="30" fill="red"/></svg>'
    out = executors.run("svg", svg, tmp_path / "a")
    assert out.status == "pass" and out.sandbox == "podman"
    monkeypatch.setattr(executors, "AUTO_CONTAINERS", False)  # the switch the tests run under
    assert executors.sandbox_by_language("auto", ["svg"]) == {"svg": "bwrap"}


@needs_images
def test_container_is_podman_and_a_missing_image_is_named(built, monkeypatch):
    assert sandbox.resolve("container") == "podman"
    monkeypatch.setattr(containers, "tag", lambda family: f"localhost/vc2-{family}:0-000000000000")
    with pytest.raises(ValueError, match=r"build it with `bash sandbox_images/build.sh --engine podman web`"):
        executors.choose_sandbox("container", languages.get("svg"))


@needs_images
@pytest.mark.slow
def test_every_golden_verdict_is_the_same_in_the_containers(built, tmp_path):
    """All 12 languages: the bundled references and the tricky answers give in their family images exactly
    the verdicts recorded under bwrap (tests/assets/golden_verdicts*.json)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import test_golden_verdicts as golden_test
    golden = {**json.loads(golden_test.GOLDEN.read_text()), **json.loads(golden_test.GOLDEN_ADDED.read_text())}
    got = golden_test.verdicts(tmp_path, "container")
    changed = {k: (golden[k], got.get(k)) for k in golden if golden[k] != got.get(k)}
    assert not changed, f"{len(changed)} verdict(s) differ from bwrap (bwrap, container): {json.dumps(changed, indent=1)}"
    assert len(got) == len(golden)


@needs_images
def test_warm_servers_run_inside_the_images_but_python_runs_cold(built, tmp_path):
    """LilyPond (like Vega-Lite, HTML, Mermaid) is served warm inside its image; a Python task runs cold
    there (a forked task cannot find its own pid in the container's /proc: warm.py)."""
    from vc2.eval.warm import WarmPool
    with WarmPool("container") as pool:
        ly = [executors.run("lilypond", "\\relative c' { c4 d e f }\n", tmp_path / f"ly{i}", sandbox="container",
                            warm=pool) for i in range(2)]
        assert pool.stats["warm"] == 2 and pool.stats["started"] == 1, pool.stats  # one server, reused
        py = executors.run("python", "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\n",
                           tmp_path / "py", sandbox="container", warm=pool)
        assert pool.stats["cold"] == 1 and not pool.stats["failed"], pool.stats
    assert [o.status for o in ly + [py]] == ["pass"] * 3 and {o.sandbox for o in ly + [py]} == {"podman"}
