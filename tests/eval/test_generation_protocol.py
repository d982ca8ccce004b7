"""run_eval.py's generation settings and what a run records of them: the VisPlotBench protocol by default
(greedy, no repetition penalty, 5,000 new tokens), the checkpoint's generation_config.json only when asked,
flags on top; per-row budgets capped at the model's context; why each attempt stopped; the live
generation line; --resume refusing a run with other settings.

    python -m pytest tests/eval/test_generation_protocol.py
"""
import json
from types import SimpleNamespace

import pytest
import torch

import run_eval
import vc2
from vc2.config import PRESETS
from vc2.eval import runner
from vc2.eval.tasks import Task
from vc2.model import Transformer
from vc2.sample import generate

QWEN_INSTRUCT_GEN_CFG = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                         "repetition_penalty": 1.05, "eos_token_id": [151645, 151643]}


def settings(*flags, model_name="some/ckpt", gen_cfg=QWEN_INSTRUCT_GEN_CFG, context=32768):
    _, args = run_eval.parse_args(["--model", model_name, *flags])
    model = SimpleNamespace(generation_config=gen_cfg, config=SimpleNamespace(max_position_embeddings=context))
    return run_eval.generation_settings(args, model)


def test_protocol_is_the_default_whatever_the_checkpoint_says():
    g = settings()
    assert g["sampling"] == "protocol"
    assert (g["temperature"], g["top_p"], g["top_k"], g["repetition_penalty"]) == (0.0, 1.0, 0, 1.0)
    assert g["max_new_tokens"] == 5000 and g["context"] == 32768 and g["seed"] is None and g["note"] is None


def test_model_sampling_only_when_asked_and_flags_override_either():
    g = settings("--sampling", "model")
    assert (g["temperature"], g["top_p"], g["top_k"], g["repetition_penalty"]) == (0.7, 0.8, 20, 1.05)
    assert g["seed"] == 0 and g["max_new_tokens"] == 5000
    g = settings("--sampling", "model", "--temperature", "0", "--repetition-penalty", "1.0", "--max-new-tokens", "77")
    assert (g["temperature"], g["top_p"], g["repetition_penalty"], g["max_new_tokens"]) == (0.0, 0.8, 1.0, 77)
    g = settings("--top-k", "5", "--temperature", "0.5", "--seed", "3")
    assert (g["temperature"], g["top_k"], g["top_p"], g["seed"]) == (0.5, 5, 1.0, 3)
    assert settings("--sampling", "model", gen_cfg={"do_sample": False})["temperature"] == 0.0


def test_embedded_demo_model_gets_a_shorter_budget_and_says_why():
    g = settings(model_name="smollm2-135m")
    assert g["max_new_tokens"] == run_eval.DEMO_MAX_NEW_TOKENS < 5000
    assert "demo" in g["note"] and "5,000" in g["note"]
    assert settings("--max-new-tokens", "5000", model_name="smollm2-135m")["max_new_tokens"] == 5000


@pytest.fixture(scope="module")
def debug_model():
    return Transformer(PRESETS["debug"]).init_weights(seed=0)


def test_per_row_budgets_and_stop_reasons(debug_model):
    prompts = [[5, 9, 13], [11, 4], [3, 3, 8, 100]]
    free = generate(debug_model, prompts, 6, stop_ids=[], temperature=0.0)
    reasons = {}
    out = generate(debug_model, prompts, [6, 2, 4], stop_ids=[], temperature=0.0,
                   on_done=lambda i, why: reasons.__setitem__(i, why))
    assert out == [free[0], free[1][:2], free[2][:4]]  # a shorter budget cuts the same greedy answer
    assert reasons == {0: "budget", 1: "budget", 2: "budget"}
    stop = free[0][3]  # the 4th greedy token of row 0 as a stop id: row 0 ends there, at "eos"
    reasons.clear()
    out = generate(debug_model, prompts, 6, stop_ids=[stop], temperature=0.0,
                   on_done=lambda i, why: reasons.__setitem__(i, why))
    assert out[0] == free[0][:free[0].index(stop)] and reasons[0] == "eos"
    assert len(reasons) == 3


class _Tok:
    eos_ids = []

    def render_chat(self, conv, add_generation_prompt=True):
        return [3 + (ord(ch) % 200) for ch in conv[-1]["content"]], None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


class _Progress:
    def __init__(self):
        self.events = []

    def start(self, i):
        self.events.append(("start", i))

    def token(self, i):
        self.events.append(("token", i))

    def done(self, i):
        self.events.append(("done", i))


def test_model_answers_cap_at_the_context_and_report_progress(debug_model, monkeypatch):
    context = 40
    monkeypatch.setattr(debug_model.config, "max_position_embeddings", context)
    src = runner.ModelAnswers(debug_model, _Tok(), {**runner.PROTOCOL_SAMPLING, "max_new_tokens": 12}, batch_size=4)
    convs = [[{"role": "user", "content": "x" * n}] for n in (5, 33, 40)]  # room: 35, 7, 0 tokens
    prog = _Progress()
    answers = src(convs, seed=0, progress=prog)
    assert [a.stop for a in answers] == ["budget", "context", "context"]
    assert [a.new_tokens for a in answers] == [12, 7, 0]
    assert [a.prompt_tokens for a in answers] == [5, 33, 40]
    # every generated token was reported for its row, and each generated row started and ended once
    assert [e for e in prog.events if e[0] == "token"].count(("token", 0)) == 12
    assert [e for e in prog.events if e[0] == "token"].count(("token", 1)) == 7
    assert sorted(e for e in prog.events if e[0] != "token") == [("done", 0), ("done", 1), ("start", 0), ("start", 1)]


def test_generation_progress_line_counts_rows_and_tokens(capsys):
    bar = runner.GenerationProgress("round 0 generate", budget=100)
    bar.wait(5)
    assert bar.bar.total == 500  # before any row ends, every row is assumed to use the whole budget
    for i in range(2):
        bar.start(i)
    for _ in range(10):
        bar.token(0)
    bar.done(0)
    assert (len(bar.live), bar.waiting, bar.n_done, bar.bar.n) == (1, 3, 1, 10)
    assert bar.bar.total == 10 + 10 * 3 + 10  # then as long as the mean finished answer (10 tokens)
    assert "1 generating, 3 waiting, 1 done" in str(bar.bar)
    bar.close()


class _Source:
    """Answers "```\\nGOOD\\n```" for every task; reports its rows to the progress line like a model would."""
    batch_size, max_new_tokens = 2, 8

    def __init__(self, name="m"):
        self.name = name

    def __call__(self, conversations, seed, progress=None):
        for j in range(len(conversations)):
            progress.start(j)
            progress.token(j)
            progress.done(j)
        return [runner.Answer("```\nGOOD\n```", "eos", 10, 1) for _ in conversations]


def test_settings_are_recorded_and_resume_refuses_other_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.executors, "describe_sandbox", lambda mode, names=None: {"sandbox": "fake"})
    monkeypatch.setattr(runner.executors, "run", lambda *a, **k: SimpleNamespace(
        status="runtime_error", error="no", image=None, sandbox="fake"))
    tasks = [Task(language="svg", id=f"svg_{i}", description="d", style="s", vis_cate="Bars") for i in range(3)]
    gen = {"sampling": "protocol", **runner.PROTOCOL_SAMPLING, "max_new_tokens": 8, "context": 64, "seed": None,
           "note": None, "stop_ids": [2]}
    summary = runner.evaluate(tasks, _Source(), tmp_path, rounds=1, workers=1, generation=gen)
    assert summary["meta"]["generation"] == gen
    assert json.loads((tmp_path / "summary.json").read_text())["meta"]["generation"] == gen
    assert summary["overall"]["stop_reasons_by_round"] == [{"eos": 3}, {"eos": 3}]
    report = (tmp_path / "report.md").read_text()
    assert "Generation: protocol settings: greedy, repetition_penalty 1.0, max_new_tokens 8" in report
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["stop"], r["prompt_tokens"], r["new_tokens"]) for r in rows} == {("eos", 10, 1)}
    with pytest.raises(ValueError, match=r"max_new_tokens: was 8, now 9.*--force"):
        runner.evaluate(tasks, _Source(), tmp_path, rounds=2, resume=True, generation={**gen, "max_new_tokens": 9})
    with pytest.raises(ValueError, match=r"source: was 'm', now 'other'"):
        runner.evaluate(tasks, _Source("other"), tmp_path, rounds=2, resume=True, generation=gen)
    summary = runner.evaluate(tasks, _Source(), tmp_path, rounds=2, resume=True, generation=gen)  # same: resumes
    assert summary["overall"]["stop_reasons_by_round"] == [{"eos": 3}, {"eos": 3}, {"eos": 3}]
    runner.evaluate(tasks, _Source(), tmp_path, rounds=2, resume=True, force=True,
                    generation={**gen, "temperature": 0.5})
    assert json.loads((tmp_path / "run.json").read_text())["generation"]["temperature"] == 0.5
