"""The language registry (vc2/eval/languages): one record per file, the benchmark's eight in order,
names and aliases, every record's packages in the install lists (the drift check the container image
build files will share), and the drivers' exit-code file loaded by path, never through vc2.

    python -m pytest tests/eval/test_languages.py
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vc2.eval import languages, prompts
from vc2.eval.executors import status
from vc2.eval.executors.status import Status

ROOT = Path(__file__).resolve().parents[2]
LISTS = ROOT / "sandbox_images"
DRIVERS = ROOT / "vc2" / "eval" / "executors"


def listed(name):
    """Package names of one of the install lists (first column; pins and comments dropped)."""
    out = set()
    for line in (LISTS / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            out.add(re.split(r"==|\s|(?<=.)@", line)[0].lower())
    return out


def test_one_file_per_record_and_the_benchmark_order():
    files = sorted(p.stem for p in (ROOT / "vc2" / "eval" / "languages").glob("*.py") if p.stem != "__init__")
    assert sorted(languages.LANGUAGES) == files and len(files) == 12
    assert [languages.LANGUAGES[n].benchmark for n in languages.BENCHMARK] == list(range(1, 9))
    assert list(languages.LANGUAGES)[:8] == list(languages.BENCHMARK)  # --lang all, in the paper's table order
    assert all(r.benchmark is None for n, r in languages.LANGUAGES.items() if n not in languages.BENCHMARK)


def test_names_aliases_and_tags():
    for name, lang in languages.LANGUAGES.items():
        assert languages.get(name) is lang and languages.get(lang.display) is lang, name
        for alias in lang.aliases:
            assert languages.canonical(alias) == name, alias
        assert all(t == t.lower() for t in lang.tags), name
        assert "{fence}" in lang.instruction, name  # the prompt asks for the fence it will accept
    with pytest.raises(ValueError, match="unknown language 'cobol'"):
        languages.get("cobol")


def test_every_record_names_what_it_needs_and_the_lists_install_it():
    """A record's Debian / pip / npm packages are in the install lists; a record without any would run
    on whatever the base image happens to have."""
    apt, pip, npm = listed("apt-packages.txt"), listed("pip-requirements.txt"), listed("node-tools.txt")
    for name, lang in languages.LANGUAGES.items():
        assert lang.apt or lang.pip, name
        assert set(lang.apt) <= apt, (name, set(lang.apt) - apt)
        assert {p.lower() for p in lang.pip} <= pip, (name, set(lang.pip) - pip)
        assert set(lang.npm) <= npm, (name, set(lang.npm) - npm)
    images = {lang.image for lang in languages.LANGUAGES.values()}
    assert images == {"python", "web", "tex", "lilypond", "r", "native"}


def test_record_patterns_compile_and_match_their_own_examples():
    for name, lang in languages.LANGUAGES.items():
        for pattern in (lang.draws, lang.missing_dependency):
            if pattern:
                re.compile(pattern)
    assert re.search(languages.get("python").missing_dependency, "ModuleNotFoundError: No module named 'pyecharts'").group(1) == "pyecharts"
    assert re.search(languages.get("latex").missing_dependency, "! LaTeX Error: File `tikz-cd.sty' not found.").group(1) == "tikz-cd.sty"
    assert not re.search(languages.get("python").draws, "print(sum(range(10)))")


def test_every_failure_status_has_a_self_debug_text():
    for s in Status:
        if s != Status.PASS:
            assert prompts.debug_message("svg", s, "x")
    assert f"{Status.TIMEOUT}" == "timeout" and Status("no_image") is Status.NO_IMAGE


@pytest.mark.parametrize("driver", ["py_driver", "vl_driver", "warm_server", "py_show", "seccomp_exec"])
def test_drivers_load_the_exit_codes_by_path_and_never_vc2(driver):
    """They run with python -I inside the sandbox, where importing vc2 (and torch) must not happen."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('d', {str(DRIVERS / (driver + '.py'))!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "st = getattr(mod, 'status', None)\n"
            "print(sorted(k for k in sys.modules if k == 'vc2' or k.startswith('vc2.') or k == 'torch'), "
            "st.EXIT_SYNTAX if st else None)")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported, syntax = r.stdout.split("]")
    assert imported == "[", f"{driver} imported {imported}]"
    assert syntax.strip() in ("None", str(status.EXIT_SYNTAX))
    assert (DRIVERS / "lily_server.scm").read_text().count("vc2-exit-engine") >= 4  # Scheme gets it handed over


def test_run_eval_lang_all_is_the_benchmark_and_the_others_go_by_name(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import json

    import run_eval
    assert run_eval.parse_args(["--lang", "all"])[1].lang == list(languages.BENCHMARK)
    assert run_eval.parse_args(["--lang", "r", "svg"])[1].lang == ["r", "svg"]
    with pytest.raises(SystemExit):
        run_eval.parse_args(["--lang", "cobol"])
    assert "unknown language" in capsys.readouterr().err
    # a task file of a VisCode-Multi language runs through the whole evaluator
    task = {"id": "r_1", "task__plot_description": "Plot three bars.", "task__plot_style": "Orange bars.",
            "data": "k,v\na,3\nb,5\nc,4\n", "used_lib": ["graphics"], "vis_cate": "Bars", "subtype": "bar",
            "reference_code": 'df <- read.csv("data.csv")\nbarplot(df$v, names.arg = df$k, col = "orange")\n'}
    (tmp_path / "r.jsonl").write_text(json.dumps(task) + "\n")
    rc = run_eval.main(["--lang", "r", "--tasks", str(tmp_path / "r.jsonl"), "--model", "reference",
                        "--out", str(tmp_path / "out"), "--workers", "1"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert rc == 0 and summary["languages"]["r"]["pass_rate_by_round"][0] == 100.0
