"""Training: data checks, packing, loss normalisation, FSDP parity, resume, golden loss curve.

    python -m pytest tests/test_train.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vc2
from vc2.config import PRESETS
from vc2.data import IGNORE, load_conversations, pack, tokenize
from vc2.model import Transformer
from vc2.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_LOSS = Path(__file__).parent / "assets" / "golden_train_loss.json"

CHARTS = ["bar chart", "line plot", "scatter plot", "pie chart", "histogram", "heatmap", "box plot", "area chart"]


def conversation(i):
    """A small synthetic conversation; every third one is a multi-turn correction dialogue."""
    chart = CHARTS[i % len(CHARTS)]
    msgs = [{"role": "user", "content": f"Draw a {chart} of sales {i} in python."},
            {"role": "assistant", "content": f"```python\nimport matplotlib.pyplot as plt\nplt.plot([{i}, 2, 3])\n"
                                             f"plt.savefig('out.png')\n```"}]
    if i % 3 == 0:
        msgs += [{"role": "user", "content": "Error: NameError: name 'plt' is not defined"},
                 {"role": "assistant", "content": f"```python\nimport matplotlib.pyplot as plt\nplt.bar([1], [{i}])\n```"}]
    return {"uuid": f"c{i}", "messages": msgs, "language": "python"}


@pytest.fixture(scope="module")
def run_env(tmp_path_factory, tokenizer_dir):
    """A debug-size model directory with the test tokenizer, and a data file."""
    root = tmp_path_factory.mktemp("train")
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    vc2.save_model(model, root / "model", tokenizer_dir=tokenizer_dir)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(24)))
    return root


RUN_ARGS = ["--preset", "cpu-demo", "--lr", "3e-3", "--max-length", "256", "--max-steps", "6", "--no-export",
            "--device", "cpu", "--global-batch", "2"]


def run(run_env, out, *extra):
    args = ["--model", str(run_env / "model"), "--data", str(run_env / "data.jsonl"), "--out", str(out),
            "--data-cache", str(run_env / "cache"), *RUN_ARGS, *extra]
    train_main(args)
    return [json.loads(l)["loss"] for l in (Path(out) / "log.jsonl").read_text().splitlines()]


# --- data -------------------------------------------------------------------------------------------

def test_malformed_rows_are_skipped_and_reported(tmp_path):
    f = tmp_path / "d.jsonl"
    bad = [{"uuid": "x"}, {"messages": [{"role": "robot", "content": "x"}]},
           {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
           {"messages": [{"role": "user", "content": "only a question"}]}]
    f.write_text(json.dumps(conversation(0)) + "\n" + "".join(json.dumps(b) + "\n" for b in bad) + "{not json\n")
    rows, report = load_conversations(f)
    assert len(rows) == 1 and report.skipped == 5
    assert [p[1] for p in report.problems] == [2, 3, 4, 5, 6]  # line numbers of the first offenders
    assert "bad role 'robot'" in str(report) and "empty assistant turn" in str(report)
    with pytest.raises(ValueError, match=r"d\.jsonl:2: missing or empty 'messages'"):
        load_conversations(f, strict=True)


def test_labels_shift_inside_documents_and_cover_assistant_turns(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    convs = [conversation(i) for i in range(5)]
    docs, dropped = tokenize(convs, tok, max_length=10_000)
    rows, eff = pack(docs, max_length=10_000, seed=0)
    assert dropped == 0 and len(rows) == 1 and 0 < eff <= 1
    row = rows[0]
    cu = row["cu_seqlens"].tolist()
    for d, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
        ids, labels = row["input_ids"][s:e], row["labels"][s:e]
        assert row["position_ids"][s] == 0 and row["position_ids"][e - 1] == e - s - 1
        assert labels[-1] == IGNORE  # the last token of a document predicts nothing (not the next document)
        sup = labels != IGNORE
        assert torch.equal(labels[:-1][sup[:-1]], ids[1:][sup[:-1]])  # label = next token of the same doc
    # all supervised targets, decoded per document, are exactly the assistant turns + <|im_end|>
    targets = [t for t in row["labels"].tolist() if t != IGNORE]
    by_doc = {tuple(d[0]): d for d in docs}
    want = "".join(m["content"] + "<|im_end|>" for c in [convs[i] for i in range(5)] for m in c["messages"]
                   if m["role"] == "assistant")
    assert sorted(tok.decode(targets)) == sorted(want)  # same characters; document order is shuffled by packing


def test_packing_drops_too_long_and_is_deterministic(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    convs = [conversation(i) for i in range(40)]
    lengths = [len(tok.render_chat(c["messages"])[0]) for c in convs]
    limit = max(lengths) - 1  # the longest conversations (multi-turn ones) no longer fit
    docs, dropped = tokenize(convs, tok, max_length=limit)
    assert dropped == sum(n > limit for n in lengths) > 0 and len(docs) == 40 - dropped
    rows_a, eff = pack(docs, 2 * limit, seed=1)
    rows_b, _ = pack(docs, 2 * limit, seed=1)
    rows_c, _ = pack(docs, 2 * limit, seed=2)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rows_a, rows_b))
    assert any(not torch.equal(a["input_ids"], c["input_ids"]) for a, c in zip(rows_a, rows_c))
    assert len(rows_a) >= 4 and all(len(r["input_ids"]) <= 2 * limit for r in rows_a)
    assert sum(len(r["input_ids"]) for r in rows_a) == sum(len(d[0]) for d in docs)  # nothing lost


# --- loss and gradients -----------------------------------------------------------------------------

def test_packed_loss_and_grads_equal_unpacked(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    docs, _ = tokenize([conversation(i) for i in range(4)], tok, 10_000)
    model = Transformer(PRESETS["debug"]).init_weights(seed=3).double()
    [row], _ = pack(docs, 10_000)
    loss = model(row["input_ids"][None], position_ids=row["position_ids"][None], cu_seqlens=row["cu_seqlens"],
                 labels=row["labels"][None], loss_chunk=37)
    loss.backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = 0
    for ids, labels in docs:  # each conversation alone, plain full-vocab CE
        logits = model(torch.tensor([ids]))[0]
        ref = ref + torch.nn.functional.cross_entropy(logits, torch.tensor(labels), ignore_index=IGNORE, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    for g, p in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=1e-8)


def test_one_row_of_n_equals_n_rows_accumulated(run_env, tmp_path):
    """All conversations in one packed row vs each in its own row with grad accumulation: same update."""
    def params_after(out, *extra):
        run(run_env, out, "--max-steps", "1", "--epochs", "1", *extra)
        from vc2.train import complete_checkpoints
        import torch.distributed.checkpoint as dcp
        last = complete_checkpoints(Path(out) / "checkpoints")[-1]
        model = Transformer(PRESETS["debug"])
        sd = {"model": {k: v.clone() for k, v in model.state_dict().items()}}
        dcp.load(sd, checkpoint_id=str(last / "dcp"))
        return sd["model"]
    one_row = params_after(tmp_path / "a", "--max-length", "8192", "--global-batch", "1")
    many = params_after(tmp_path / "b", "--max-length", "512", "--global-batch", "64")
    for k in one_row:
        torch.testing.assert_close(one_row[k], many[k], rtol=1e-4, atol=2e-6)


# --- the loop ---------------------------------------------------------------------------------------

def test_golden_loss_curve(run_env, tmp_path):
    """A seeded debug run's losses; refactors that change numerics change these. Regenerate deliberately
    by deleting tests/assets/golden_train_loss.json and running this test once."""
    losses = run(run_env, tmp_path / "run")
    assert losses[-1] < losses[0]  # it learns
    if not GOLDEN_LOSS.exists():
        GOLDEN_LOSS.write_text(json.dumps(losses))
        pytest.fail("golden loss file was missing and has been written: check it in and re-run")
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(json.loads(GOLDEN_LOSS.read_text())), rtol=1e-4, atol=1e-5)


def test_resume_reproduces_uninterrupted_run(run_env, tmp_path):
    full = run(run_env, tmp_path / "full")
    first = run(run_env, tmp_path / "part", "--stop-after", "3")  # leaves after step 3, as if killed
    # a crash mid-save leaves a .tmp dir that resume must ignore
    (tmp_path / "part" / "checkpoints" / "step_0000005.tmp").mkdir()
    rest = run(run_env, tmp_path / "part", "--resume")
    assert len(first) == 3
    torch.testing.assert_close(torch.tensor(rest), torch.tensor(full), rtol=1e-5, atol=1e-6)  # log has all 6 steps


def torchrun(n, run_env, out, *extra):
    """run_train.py on n gloo ranks (the same arguments as run())."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(ROOT / "run_train.py"), "--model", str(run_env / "model"), "--data", str(run_env / "data.jsonl"),
           "--out", str(out), "--data-cache", str(run_env / "cache"), *RUN_ARGS, *extra]
    p = subprocess.run(cmd, env=env, timeout=600, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    return [json.loads(l)["loss"] for l in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_fsdp_two_processes_match_one(run_env, tmp_path):
    one = run(run_env, tmp_path / "one")
    torchrun(2, run_env, tmp_path / "two")
    two = [json.loads(l)["loss"] for l in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    # 1 process x 2 rows per step == 2 processes x 1 row per step (same rows, same global normalisation)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-5)
