"""Repository invariants: the README's test command is what CI runs; every module says what it is.

    python -m pytest tests/test_repo.py
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES_PATHS = [".." + "/shared", "shared" + "/notes"]  # split so this file does not match itself


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = next(line for b in blocks for line in b.splitlines() if "pytest" in line)
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert test_cmd.strip() in ci_lines, f"README test command {test_cmd!r} is not a line of .ci/run"
    assert "set -euo pipefail" in ci_lines  # a failing install or test fails CI


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
