"""The shipped SFT sample (vc2/assets/train_sample.jsonl): format, coverage, disjointness from the bundled
eval tasks, and -- in the slow test -- that it validates 110/110 through `vc2.data.validate`: every final
program renders in the sandbox (its language's executor, all twelve of vc2.eval.languages) and every
buggy first attempt of a correction dialogue really fails.
"""
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from vc2.data import row_problem
from vc2.eval import languages
from vc2.eval.extract import extract_code

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "vc2" / "assets" / "train_sample.jsonl"
TASKS_DIR = ROOT / "vc2" / "eval" / "assets" / "tasks"

MIN_PER_LANGUAGE = 5   # every language of the registry
MIN_TOTAL = 110
MIN_CORRECTIONS = 18
MIN_CORRECTION_LANGUAGES = 10


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
    assert set(counts) == set(languages.LANGUAGES), counts
    short = {lang: n for lang, n in counts.items() if n < MIN_PER_LANGUAGE}
    assert not short, f"too few conversations: {short}"
    assert len(rows) >= MIN_TOTAL, len(rows)
    corrections = [r for r in rows if is_correction(r)]
    assert len(corrections) >= MIN_CORRECTIONS, len(corrections)
    assert len({r["language"] for r in corrections}) >= MIN_CORRECTION_LANGUAGES
    for r in corrections:
        assert len(r["messages"]) == 4, r["uuid"]
        feedback = r["messages"][2]["content"]
        assert "error" in feedback.lower() and "```" in feedback, (r["uuid"], feedback[:200])


def test_every_assistant_turn_is_one_block_of_its_language():
    for r in load_rows():
        lang = r["language"]
        tags = languages.get(lang).tags
        for m in r["messages"]:
            if m["role"] != "assistant":
                continue
            opened = re.findall(r"^```([\w+\-]*)[ \t]*$", m["content"], re.M)
            assert len(opened) == 2 and opened[0] in tags and opened[1] == "", (r["uuid"], opened)
            assert m["content"].split("```")[0].strip(), f"{r['uuid']}: the answer starts with a sentence"
            assert extract_code(lang, m["content"]).strip()
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

@pytest.mark.slow
def test_sample_validates_110_of_110(tmp_path):
    """Through the dataset validation itself: final programs pass, buggy first attempts fail."""
    from vc2.data.validate import validate
    report = validate([SAMPLE], tmp_path / "kept.jsonl")
    rows = len(load_rows())
    if report["written"] != rows:
        state = [json.loads(line) for line in (tmp_path / "kept.state.jsonl").read_text().splitlines()]
        wrong = [f"{v['uuid']} ({v['language']}): {v['class']}: {v['detail'][-300:]}" for v in state if v["class"] != "kept"]
        pytest.fail(f"{len(wrong)} of {rows} rows do not validate:\n" + "\n".join(wrong))
    assert (tmp_path / "kept.jsonl").read_bytes() == SAMPLE.read_bytes()  # every row, as it was
