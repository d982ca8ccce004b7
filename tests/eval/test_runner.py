"""The evaluation loop with a stand-in executor: self-debug turns, batching, resume, reports.

The real renderers are exercised by tests/eval/test_executors.py and by the reference replay test;
here the executor is replaced so the loop's bookkeeping can be checked exactly and fast.

    python -m pytest tests/eval/test_runner.py
"""
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from vc2.eval import runner
from vc2.eval.tasks import Task

TASKS = [Task(language=lang, id=f"{lang}_{i}", description=f"draw thing {i}", style="plain", vis_cate="Bars")
         for lang in ("svg", "python") for i in range(5)]


class FakeExecutor:
    """Passes code containing 'GOOD'; 'INFRA' is an infra error; anything else a runtime error."""

    def __init__(self, fail_after=None):
        self.calls, self.lock, self.fail_after = [], threading.Lock(), fail_after

    def __call__(self, language, code, workdir, data_csv=None, sandbox="auto", timeout_s=None, warm=None):
        with self.lock:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.calls.append(code)
        if "INFRA" in code:
            return SimpleNamespace(status="infra_error", error="tool missing: install it", image=None, sandbox="fake")
        if "GOOD" in code:
            img = Path(workdir) / "out.png"
            img.write_bytes(b"\x89PNG fake")
            return SimpleNamespace(status="pass", error="", image=img, sandbox="fake")
        return SimpleNamespace(status="runtime_error", error=f"Boom in {code}", image=None, sandbox="fake")


class FakeModel:
    """Task i gets it right at attempt i (0-based): task 0 first time, task 4 never within 3 rounds...
    except task 3 of svg, which is an infra error."""

    name, batch_size = "fake-model", 3

    def __init__(self):
        self.seen = []

    def __call__(self, conversations, seed, progress=None):
        self.seen.append(conversations)
        out = []
        for conv in conversations:
            attempt = sum(m["role"] == "assistant" for m in conv)
            i = int(conv[0]["content"].split("draw thing ")[1][0])
            lang = "svg" if "SVG" in conv[0]["content"] or "svg" in conv[0]["content"].lower() else "python"
            if lang == "svg" and i == 3:
                out.append("```\nINFRA\n```")
            else:
                out.append(f"```\n{'GOOD' if attempt >= i else 'bad'} {i} attempt {attempt}\n```")
        return out


@pytest.fixture(autouse=True)
def fake_environment(monkeypatch):
    monkeypatch.setattr(runner.executors, "describe_sandbox", lambda mode, names=None: {"sandbox": "fake", "svg": "fake 1.0"})


@pytest.fixture
def fake_exec(monkeypatch):
    ex = FakeExecutor()
    monkeypatch.setattr(runner.executors, "run", ex)
    return ex


def test_self_debug_rounds_and_summary(tmp_path, fake_exec):
    model = FakeModel()
    summary = runner.evaluate(TASKS, model, tmp_path, rounds=3, workers=2)
    rows = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    # python: tasks 0..3 pass at attempts 0..3, task 4 never. svg: same but task 3 is infra (not retried)
    py = summary["languages"]["python"]
    assert py["passed_by_round"] == [1, 2, 3, 4] and py["scored"] == 5
    assert py["pass_rate_by_round"] == [20.0, 40.0, 60.0, 80.0]
    svg = summary["languages"]["svg"]
    assert svg["scored"] == 4 and svg["infra_errors"] == ["svg/svg_3"] and svg["passed_by_round"] == [1, 2, 3, 3]
    assert summary["overall"]["passed_by_round"] == [2, 4, 6, 7]
    assert svg["final_failures"] == {"runtime_error": 1}
    assert summary["meta"]["sandbox"] == "fake" and summary["meta"]["environment"] == {"svg": "fake 1.0"}
    # attempts: round 0 all 10; then only failing, non-infra ones
    assert [sum(r["round"] == k for r in rows) for k in range(4)] == [10, 7, 5, 3]
    # the conversation of the last round for python_4: prompt, then each attempt once with its error
    last_conv = [c for batch in model.seen for c in batch if "draw thing 4" in c[0]["content"]][-1]
    assert [m["role"] for m in last_conv] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert "Boom in bad 4 attempt 2" in last_conv[-1]["content"]
    assert len({m["content"] for m in last_conv if m["role"] == "assistant"}) == 3  # no duplicated turns
    # generation is batched (batch_size 3 over 10 tasks = 4 batches in round 0)
    assert [len(b) for b in model.seen[:4]] == [3, 3, 3, 1]
    # reports
    assert "| python | 5 | 20.0 | 40.0 | 60.0 | 80.0 | 0 |" in (tmp_path / "report.md").read_text()
    assert "svg/svg_3" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").read_text().count('class="task') == 10
    assert all((tmp_path / r["image"]).is_file() for r in rows if r["outcome"] == "pass")


def test_resume_after_kill_repeats_nothing(tmp_path, monkeypatch):
    killed = FakeExecutor(fail_after=13)
    monkeypatch.setattr(runner.executors, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(TASKS, FakeModel(), tmp_path, rounds=3, workers=1)
    n_before = len((tmp_path / "results.jsonl").read_text().splitlines())
    assert n_before == 13
    with pytest.raises(ValueError, match="--resume"):
        runner.evaluate(TASKS, FakeModel(), tmp_path, rounds=3, workers=1)
    again = FakeExecutor()
    monkeypatch.setattr(runner.executors, "run", again)
    summary = runner.evaluate(TASKS, FakeModel(), tmp_path, rounds=3, workers=2, resume=True)
    rows = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    # only what was missing, plus svg_3's round-0 infra error, which --resume tries again
    assert len(again.calls) == 25 - 13 + 1 and sum("INFRA" in c for c in again.calls) == 1
    assert len({(r["key"], r["round"]) for r in rows}) == 25 and len(rows) == 26  # nothing else repeated
    assert summary["overall"]["passed_by_round"] == [2, 4, 6, 7]  # same result as an uninterrupted run


def test_fixed_answers_and_responses_file(tmp_path, fake_exec):
    f = tmp_path / "resp.jsonl"
    f.write_text(json.dumps({"id": "svg_0", "code": "GOOD"}) + "\n" + json.dumps({"id": "svg_1", "answer": "```\nbad\n```"}) + "\n")
    answers = runner.load_responses(f)
    src = runner.FixedAnswers("responses", {f"svg/{tid}": a for (_, tid), a in answers.items()})
    summary = runner.evaluate(TASKS[:2], src, tmp_path / "out", rounds=3)
    assert summary["languages"]["svg"]["passed_by_round"] == [1, 1, 1, 1]  # fixed answers: no self-debug
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: a response row needs"):
        runner.load_responses(bad)


def test_interleave_round_robins_languages_keeping_their_order():
    tasks = [SimpleNamespace(language=lang, id=f"{lang}_{i}") for lang, n in (("python", 3), ("svg", 1), ("html", 2))
             for i in range(n)]
    order = [t.id for t in runner.interleave(tasks)]
    assert order == ["python_0", "svg_0", "html_0", "python_1", "html_1", "python_2"]
    assert runner.interleave([]) == []
