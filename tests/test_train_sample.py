"""The shipped SFT sample (vc2/assets/train_sample.jsonl): format, coverage, disjointness from the bundled
eval tasks, and -- in the slow test -- that every final program really renders and every buggy first
attempt of a correction dialogue really fails.

Languages and how the slow test runs them:
  python, vegalite, lilypond, mermaid, svg, latex, asymptote, html -> vc2.eval.executors.run (status "pass")
  r          -> Rscript --vanilla plot.R                          (apt: r-base-core)
  cpp        -> g++ -std=c++17 -O1 main.cpp && ./main             (apt: g++)
  javascript -> node main.js                                      (apt: nodejs)
  typescript -> tsc (pinned in sandbox_images/node-tools.txt, installed by install_host.sh into
                /opt/vc2/node-tools, or $VC2_NODE_TOOLS holding node_modules/) then node main.js
For those four the program must exit 0 and write at least one image file (.png/.ppm/.pgm/.bmp/.svg), which
must decode and not be a single colour (SVG: parse as XML and render through the svg executor).
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vc2.data import row_problem

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "vc2" / "assets" / "train_sample.jsonl"
TASKS_DIR = ROOT / "vc2" / "eval" / "assets" / "tasks"

EVAL_LANGUAGES = ("python", "vegalite", "lilypond", "mermaid", "svg", "latex", "asymptote", "html")
OTHER_LANGUAGES = ("r", "cpp", "javascript", "typescript")
# at least 5 per language; the big languages of VisCode-Multi-679K (python, html, latex) get more
MIN_PER_LANGUAGE = {lang: 5 for lang in EVAL_LANGUAGES + OTHER_LANGUAGES}
MIN_PER_LANGUAGE.update(python=20, html=15, latex=12, svg=7)
MIN_TOTAL = 110
MIN_CORRECTIONS = 18
MIN_CORRECTION_LANGUAGES = 10
OTHER_FENCES = {"r": {"r"}, "cpp": {"cpp", "c++"}, "javascript": {"javascript", "js"}, "typescript": {"typescript", "ts"}}
IMAGE_SUFFIXES = {".png", ".ppm", ".pgm", ".bmp", ".svg"}


def load_rows():
    rows = []
    with open(SAMPLE) as f:
        for n, line in enumerate(f, 1):
            assert line.strip(), f"{SAMPLE.name}:{n}: blank line"
            rows.append(json.loads(line))
    return rows


def is_correction(row):
    """A correction dialogue: user, assistant (buggy), user (error), assistant (fixed)."""
    return len(row["messages"]) >= 4


def _other_blocks(language, answer):
    return [m.group(2) for m in re.finditer(r"^```([\w+\-]*)[ \t]*\n(.*?)^```[ \t]*$", answer, re.S | re.M)
            if m.group(1).lower() in OTHER_FENCES[language]]


def extract(language, answer):
    """The program in an assistant turn: the evaluator's own extraction for the eval languages."""
    if language in EVAL_LANGUAGES:
        from vc2.eval.prompts import extract_code
        return extract_code(language, answer)
    blocks = _other_blocks(language, answer)
    assert len(blocks) == 1, f"{language}: expected one fenced block, found {len(blocks)}"
    return blocks[0]


# ------------------------------------------------------------------------------------------------------
# fast tests

def test_sample_parses_and_rows_are_trainable():
    rows = load_rows()
    uuids = Counter(r.get("uuid") for r in rows)
    assert all(isinstance(u, str) and u for u in uuids), "every row needs a uuid"
    assert max(uuids.values()) == 1, f"duplicate uuids: {[u for u, c in uuids.items() if c > 1]}"
    for r in rows:
        assert row_problem(r) is None, (r["uuid"], row_problem(r))
        assert set(r) == {"uuid", "messages", "language"}, r["uuid"]
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) % 2 == 0, (r["uuid"], roles)


def test_language_coverage_and_corrections():
    rows = load_rows()
    counts = Counter(r["language"] for r in rows)
    assert set(counts) == set(MIN_PER_LANGUAGE), counts
    short = {lang: (counts[lang], n) for lang, n in MIN_PER_LANGUAGE.items() if counts[lang] < n}
    assert not short, f"too few conversations (have, need): {short}"
    assert len(rows) >= MIN_TOTAL, len(rows)
    corrections = [r for r in rows if is_correction(r)]
    assert len(corrections) >= MIN_CORRECTIONS, len(corrections)
    assert len({r["language"] for r in corrections}) >= MIN_CORRECTION_LANGUAGES
    for r in corrections:
        assert len(r["messages"]) == 4, r["uuid"]
        feedback = r["messages"][2]["content"]
        assert "error" in feedback.lower() and "```" in feedback, (r["uuid"], feedback[:200])


def test_every_assistant_turn_is_one_block_of_its_language():
    from vc2.eval.prompts import FENCE
    for r in load_rows():
        lang = r["language"]
        tags = {FENCE[lang]} if lang in EVAL_LANGUAGES else OTHER_FENCES[lang]
        for m in r["messages"]:
            if m["role"] != "assistant":
                continue
            opened = re.findall(r"^```([\w+\-]*)[ \t]*$", m["content"], re.M)
            assert len(opened) == 2 and opened[0] in tags and opened[1] == "", (r["uuid"], opened)
            assert m["content"].split("```")[0].strip(), f"{r['uuid']}: the answer starts with a sentence"
            assert extract(lang, m["content"]).strip()
        first = r["messages"][0]["content"]
        assert len(first) > 150, f"{r['uuid']}: instruction too short"


def _norm(text):
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9]+", " ", text.lower())).strip()


def _shingles(text, n=8):
    w = _norm(text).split()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_disjoint_from_bundled_eval_tasks():
    """No eval task description, style or data row set is reused in training (8-word shingles, CSV rows)."""
    task_files = sorted(TASKS_DIR.glob("*.jsonl"))
    assert task_files, f"no bundled eval tasks in {TASKS_DIR}"
    train_text = "\n".join(m["content"] for r in load_rows() for m in r["messages"])
    train_shingles = _shingles(train_text)
    train_lines = {_norm(ln) for ln in train_text.splitlines() if len(_norm(ln)) >= 12}
    n_tasks = 0
    for path in task_files:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            task = json.loads(line)
            n_tasks += 1
            for field in ("task__plot_description", "task__plot_style"):
                shared = _shingles(task.get(field) or "") & train_shingles
                assert not shared, f"{task['id']}: {field} shares text with the training sample: {sorted(shared)[:3]}"
            data_lines = [_norm(ln) for ln in (task.get("data") or "").splitlines()[1:] if len(_norm(ln)) >= 12]
            reused = [ln for ln in data_lines if ln in train_lines]
            assert len(reused) <= 1, f"{task['id']}: data rows reused in the training sample: {reused[:3]}"
    assert n_tasks > 0


# ------------------------------------------------------------------------------------------------------
# execution of the programs

NODE_TOOLS_LIST = ROOT / "sandbox_images" / "node-tools.txt"


def _ts_toolchain():
    """Directory with node_modules/{typescript,@types/node} at the versions node-tools.txt pins: $VC2_NODE_TOOLS,
    else /opt/vc2/node-tools, where install_host.sh puts them. Tests never download: a missing or stale
    toolchain is a failure that names the install command."""
    d = Path(os.environ.get("VC2_NODE_TOOLS") or "/opt/vc2/node-tools")
    pins = [ln.split("#")[0].strip() for ln in NODE_TOOLS_LIST.read_text().splitlines()]
    for pin in filter(None, pins):
        name, version = pin.rsplit("@", 1)
        pkg = d / "node_modules" / name / "package.json"
        found = json.loads(pkg.read_text()).get("version") if pkg.is_file() else None
        if found != version:
            pytest.fail(f"{pin} missing in {d} (found {found}): run `bash sandbox_images/install_host.sh`")
    return d


def _sh(cmd, cwd, timeout):
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout} s: {' '.join(cmd)}"


def run_other(language, code, workdir, timeout=120):
    """(returncode, log) of running an r/cpp/javascript/typescript program in workdir."""
    workdir = Path(workdir)
    if language == "r":
        (workdir / "plot.R").write_text(code)
        return _sh(["Rscript", "--vanilla", "plot.R"], workdir, timeout)
    if language == "cpp":
        (workdir / "main.cpp").write_text(code)
        rc, log = _sh(["g++", "-std=c++17", "-O1", "-o", "main", "main.cpp"], workdir, timeout)
        return (rc, log) if rc else _sh(["./main"], workdir, timeout)
    if language == "javascript":
        (workdir / "main.js").write_text(code)
        return _sh(["node", "main.js"], workdir, timeout)
    if language == "typescript":
        (workdir / "main.ts").write_text(code)
        tc = _ts_toolchain() / "node_modules"
        rc, log = _sh(["node", str(tc / "typescript" / "bin" / "tsc"), "--strict", "--target", "es2020",
                       "--module", "commonjs", "--typeRoots", str(tc / "@types"), "--types", "node",
                       "--outDir", ".", "main.ts"], workdir, timeout)
        return (rc, log) if rc else _sh(["node", "main.js"], workdir, timeout)
    raise ValueError(language)


def check_image(path):
    """None if the file is a real, non-uniform image, else the reason."""
    if path.stat().st_size == 0:
        return "empty file"
    if path.suffix == ".svg":
        try:
            root = ET.fromstring(path.read_bytes())
        except ET.ParseError as e:
            return f"not XML: {e}"
        if not root.tag.endswith("svg"):
            return f"root element is {root.tag}"
        from vc2.eval.executors import run
        with tempfile.TemporaryDirectory() as d:
            out = run("svg", path.read_text(), d)
        return None if out.status == "pass" else f"svg executor: {out.status}"
    from PIL import Image
    try:
        with Image.open(path) as im:
            extrema = im.convert("RGB").getextrema()
    except Exception as e:  # noqa: BLE001 -- any decode failure is a bad image
        return f"does not decode: {e}"
    if all(lo == hi for lo, hi in extrema):
        return "a single colour"
    return None


def execute(language, code):
    """(passed, detail) for one program."""
    with tempfile.TemporaryDirectory(prefix=f"vc2-train-{language}-") as d:
        if language in EVAL_LANGUAGES:
            from vc2.eval.executors import run
            out = run(language, code, d)
            return out.status == "pass", out.status
        rc, log = run_other(language, code, d)
        if rc != 0:
            return False, f"exit {rc}: {log[-600:]}"
        images = [p for p in Path(d).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not images:
            return False, "no image file written"
        bad = {p.name: check_image(p) for p in images}
        bad = {k: v for k, v in bad.items() if v}
        return (not bad), (f"bad images: {bad}" if bad else "pass")


@pytest.mark.slow
def test_every_program_runs_and_every_buggy_attempt_fails():
    jobs = []  # (uuid, which, language, code, should_pass)
    for r in load_rows():
        lang, msgs = r["language"], r["messages"]
        jobs.append((r["uuid"], "final", lang, extract(lang, msgs[-1]["content"]), True))
        if is_correction(r):
            jobs.append((r["uuid"], "buggy", lang, extract(lang, msgs[1]["content"]), False))
    if any(j[2] == "typescript" for j in jobs):
        _ts_toolchain()  # install once, before the threads race for it
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        results = list(pool.map(lambda j: execute(j[2], j[3]), jobs))
    # A render that hit its time limit while the pool kept every core busy gets one serial retry; any other
    # failure (and a second timeout) stands.
    for k, ((_, _, lang, code, should), (ok, detail)) in enumerate(zip(jobs, results)):
        if should and not ok and (detail == "timeout" or detail.startswith("exit 124")):
            results[k] = execute(lang, code)
    wrong = [f"{uuid} ({which}, {lang}): {'failed' if should else 'unexpectedly passed'}: {detail}"
             for (uuid, which, lang, _, should), (ok, detail) in zip(jobs, results) if ok != should]
    assert not wrong, f"{len(wrong)} of {len(jobs)} programs misbehaved:\n" + "\n".join(wrong)
