"""Dataset validation (vc2/data/validate.py): every class a row can get, what is written, the report,
resuming after a kill, parquet in, and the two command names. The shipped sample's 110/110 is in
tests/test_train_sample.py.

    python -m pytest tests/test_validate.py
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vc2.data import validate as V

ROOT = Path(__file__).resolve().parents[1]
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="80" height="60"><rect x="5" y="5" width="60" height="40" fill="teal"/></svg>'
BROKEN_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="80" height="60"><rect'


def conv(language, *answers, uuid=None):
    msgs = []
    for i, a in enumerate(answers):
        msgs += [{"role": "user", "content": "Draw it." if i == 0 else "That failed with an error. Fix it."},
                 {"role": "assistant", "content": a}]
    row = {"uuid": uuid or f"u-{language}-{len(answers)}", "messages": msgs}
    if language:
        row["language"] = language
    return row


def fence(tag, code):
    return f"Here it is.\n```{tag}\n{code}\n```"


ROWS = [  # (row, class)
    (conv("svg", fence("svg", SVG), uuid="pass"), "kept"),
    (conv("svg", fence("svg", BROKEN_SVG), fence("svg", SVG), uuid="fixed"), "kept"),
    (conv("svg", fence("svg", SVG), fence("svg", SVG), uuid="not-broken"), "earlier_attempt_passes"),
    (conv("svg", fence("svg", BROKEN_SVG), uuid="syntax"), "syntax_error"),
    (conv("python", fence("python", "print(sum(range(10)))"), uuid="algorithm"), "not_visual"),
    (conv("python", fence("python", "import matplotlib.pyplot as plt\nimport nosuchmodule_vc2\nplt.plot([1, 2])"),
          uuid="missing"), "missing_dependency"),
    (conv("java", fence("java", "class A {}"), uuid="java"), "unsupported_language"),
    (conv(None, fence("svg", SVG), uuid="no-language-field"), "kept"),
    ({"uuid": "no-answer", "messages": [{"role": "user", "content": "hi"}], "language": "svg"}, "malformed"),
    (conv("svg", "I cannot draw that, sorry.", uuid="prose"), "syntax_error"),  # prose is not XML
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate")
    data = write(d / "data.jsonl", [r for r, _ in ROWS])
    report = V.validate([data], d / "kept.jsonl", workers=2)
    return d, data, report


def test_every_row_gets_its_class(first_run):
    d, _, report = first_run
    state = {v["uuid"]: v for v in map(json.loads, (d / "kept.state.jsonl").read_text().splitlines())}
    got = {row["uuid"]: state[row["uuid"]]["class"] for row, _ in ROWS}
    assert got == {row["uuid"]: cls for row, cls in ROWS}
    assert state["missing"]["detail"] == "nosuchmodule_vc2"
    assert report["rows"] == len(ROWS) + 1 and report["classes"]["malformed"] == 2  # + the line that is not JSON
    assert report["languages"]["python"]["missing_packages"] == {"nosuchmodule_vc2": 1}


def test_only_kept_rows_are_written_in_input_order(first_run):
    d, _, report = first_run
    kept = [json.loads(line)["uuid"] for line in (d / "kept.jsonl").read_text().splitlines()]
    assert kept == ["pass", "fixed", "no-language-field"] and report["written"] == 3
    md = (d / "kept.report.md").read_text()
    assert "| svg |" in md and "## python / not_visual" in md and "`syntax`" in md


def test_rerun_decides_nothing_again_and_keep_flags_only_rewrite(first_run, monkeypatch):
    d, data, _ = first_run
    monkeypatch.setattr(V, "check", lambda *a, **k: pytest.fail("a decided row was run again"))
    report = V.validate([data], d / "kept.jsonl", keep={"kept", "not_visual", "missing_dependency"}, workers=2)
    kept = [json.loads(line)["uuid"] for line in (d / "kept.jsonl").read_text().splitlines()]
    assert kept == ["pass", "fixed", "algorithm", "missing", "no-language-field"] and report["written"] == 5


def test_resume_after_a_kill(tmp_path, monkeypatch):
    """A state file cut mid-line by a kill, and an infra error: those rows run again, the others do not."""
    data = write(tmp_path / "data.jsonl", [r for r, _ in ROWS[:4]])
    key = lambda n: f"{data.resolve()}:{n}"
    state = tmp_path / "kept.state.jsonl"
    state.write_text(json.dumps({"key": key(1), "class": "kept", "language": "svg", "detail": "", "uuid": "pass"}) + "\n" +
                     json.dumps({"key": key(2), "class": "infra_error", "language": "svg", "detail": "x", "uuid": "fixed"}) + "\n" +
                     '{"key": "' + key(3) + '", "cla')
    ran = []
    real = V.check
    monkeypatch.setattr(V, "check", lambda row, *a, **k: ran.append(row["uuid"]) or real(row, *a, **k))
    report = V.validate([data], tmp_path / "kept.jsonl", workers=1)
    assert sorted(ran) == ["fixed", "not-broken", "syntax"]
    assert report["classes"] == {"kept": 2, "earlier_attempt_passes": 1, "syntax_error": 1, "malformed": 1}


def test_parquet_in(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    rows = [dict(r, messages=json.dumps(r["messages"])) for r, _ in ROWS[:2]]  # messages stored as a JSON string
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-0.parquet")
    report = V.validate([tmp_path], tmp_path / "out" / "kept.jsonl", workers=2)
    assert report["written"] == 2 and report["classes"] == {"kept": 2}


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        V.main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "k.jsonl")])
    assert "missing.jsonl: no such data file" in capsys.readouterr().err
    data = write(tmp_path / "d.jsonl", [])
    with pytest.raises(SystemExit):
        V.main([str(data), "--out", str(tmp_path / "k.jsonl"), "--keep", "everything"])
    assert "--keep everything: unknown class" in capsys.readouterr().err


def test_both_command_names(tmp_path):
    data = write(tmp_path / "d.jsonl", [ROWS[0][0]])
    for module in ("vc2.validate", "vc2.data.validate"):
        out = tmp_path / module / "kept.jsonl"
        out.parent.mkdir()
        r = subprocess.run([sys.executable, "-m", module, str(data), "--out", str(out), "--workers", "1", "--no-warm"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "| **all** | 2 | 1 |" in r.stdout and len(out.read_text().splitlines()) == 1


def test_limit_reads_only_the_first_rows(tmp_path):
    data = write(tmp_path / "d.jsonl", [r for r, _ in ROWS[:3]])
    report = V.validate([data], tmp_path / "kept.jsonl", workers=1, limit=2, warm=False)
    assert report["rows"] == 2 and report["written"] == 2
