"""Repository invariants: the README's test command is what CI runs; every module says what it is.

    python -m pytest tests/test_repo.py
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES_PATHS = [".." + "/shared", "shared" + "/notes"]  # split so this file does not match itself


def readme_commands():
    """The bash lines of the README's code blocks, in order."""
    readme = (ROOT / "README.md").read_text()
    return [line.strip() for b in re.findall(r"```bash\n(.*?)```", readme, re.S) for line in b.splitlines()]


def test_ci_runs_exactly_the_readme_test_command():
    """.ci/run may hold shell options, comments and a cd to the repo root besides the README's test command,
    and nothing else: an install step only CI runs would let CI pass where a new user's run fails."""
    test_cmd = next(line for line in readme_commands() if "pytest" in line)
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    allowed = re.compile(r"^(#.*|set( [-+]?\w+)+|cd .*|)$")
    extra = [l for l in ci_lines if not allowed.match(l) and l != test_cmd]
    assert not extra, f".ci/run does more than the README test command {test_cmd!r}: {extra}"
    assert test_cmd in ci_lines, f"README test command {test_cmd!r} is not a line of .ci/run"
    assert "set -euo pipefail" in ci_lines  # a failing install or test fails CI


def test_readme_creates_a_venv_before_the_two_commands():
    """Debian 12's system pip refuses installs (PEP 668): the README's first command makes and enters a venv."""
    cmds = [c for c in readme_commands() if c and not c.startswith("#")]
    first_install = next(i for i, c in enumerate(cmds) if "pip install" in c)
    assert any("-m venv" in c and "activate" in c for c in cmds[:first_install]), cmds[:first_install + 1]


def test_install_lists_cover_the_tools_the_tests_run():
    """The tools the executors and the training-sample test call come from the install lists, not from the
    base image (a fresh Debian has no g++, node, npm or R)."""
    lists = ROOT / "sandbox_images"
    apt = {line.split()[0] for line in (lists / "apt-packages.txt").read_text().splitlines()
           if line.split("#")[0].strip()}
    assert {"r-base-core", "g++", "nodejs", "npm", "bubblewrap", "chromium", "lilypond", "asymptote"} <= apt
    node = (lists / "node-tools.txt").read_text()
    assert re.search(r"^typescript@\d+\.\d+\.\d+$", node, re.M) and re.search(r"^@types/node@[\d.]+$", node, re.M)
    install = (lists / "install_host.sh").read_text()
    assert "node-tools.txt" in install and "/opt/vc2/node-tools" in install


def test_every_module_opens_with_a_docstring():
    files = [p for p in ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    assert len(files) > 10
    missing = [str(p.relative_to(ROOT)) for p in files
               if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"


def test_product_never_reads_shared_notes():
    offenders = [str(p.relative_to(ROOT)) for p in list((ROOT / "vc2").rglob("*.py")) + [ROOT / "run_eval.py"]
                 if any(needle in p.read_text() for needle in NOTES_PATHS)]
    assert not offenders
