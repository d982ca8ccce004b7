"""Training: data checks, packing, loss normalisation, FSDP parity, resume, golden loss curve.

    python -m pytest tests/test_train.py
"""
import json
import math
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
    log = Path(out) / "log.jsonl"
    return [json.loads(l)["loss"] for l in log.read_text().splitlines()] if log.is_file() else []


def test_fsdp_two_processes_match_one(run_env, tmp_path):
    one = run(run_env, tmp_path / "one")
    torchrun(2, run_env, tmp_path / "two")
    two = [json.loads(l)["loss"] for l in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    # 1 process x 2 rows per step == 2 processes x 1 row per step (same rows, same global normalisation)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-5)


def write_checkpoint(cfg, path, tokenizer_dir, shard_bytes=1 << 30):
    """A HF-layout fp32 checkpoint of this shape written one shard at a time (never the whole model in
    memory); every tensor is filled with a constant of its own: for memory tests, not numerics."""
    import shutil
    from safetensors.torch import save_file
    from vc2.checkpoint import hf_key_map, part_rows
    with torch.device("meta"):
        params = dict(Transformer(cfg).named_parameters())
    shapes = {hf: params[ours][part_rows(cfg, part)].shape for hf, (ours, part) in hf_key_map(cfg).items()}
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = 4 * math.prod(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    path.mkdir(parents=True)
    weight_map = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: torch.full(shapes[n], 0.01 * (i % 7 + 1)) for i, n in enumerate(names)}, str(path / file),
                  metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({**cfg.to_hf(), "torch_dtype": "float32"}))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="session")
def checkpoint_1p5b(tmp_path_factory, tokenizer_dir):
    """The Qwen2.5-Coder-1.5B shape in fp32 (6.2 GB on disk), built once per test session, deleted after it."""
    import shutil
    path = write_checkpoint(PRESETS["qwen2.5-coder-1.5b"], tmp_path_factory.mktemp("ckpt") / "1.5b", tokenizer_dir)
    yield path
    shutil.rmtree(path)


def dry_run(model_dir, run_env, out, n):
    torchrun(n, run_env, out, "--model", str(model_dir), "--dry-run")
    return json.loads((out / "dry_run.json").read_text())


@pytest.mark.slow
def test_dry_run_peak_memory_is_a_shard_not_the_model(run_env, checkpoint_1p5b, tmp_path):
    """2 gloo ranks load the 1.5B shape as training would: each rank's peak RSS above a tiny model's run is
    about half the fp32 model (plus at most one tensor in flight), not the whole model."""
    cfg = PRESETS["qwen2.5-coder-1.5b"]
    full = 4 * cfg.n_params
    largest = 4 * cfg.vocab_size * cfg.hidden_size
    base = dry_run(run_env / "model", run_env, tmp_path / "base", 2)
    big = dry_run(checkpoint_1p5b, run_env, tmp_path / "big", 2)
    assert big["plan_gib"]["parameters (fp32)"] == pytest.approx(full / 2 / 2**30)
    for b, r in zip(base["ranks"], big["ranks"]):
        excess = (r["peak_rss_gb"] - b["peak_rss_gb"]) * 2**30
        assert 0.9 * full / 2 < excess < full / 2 + largest, (r, b, full / 2**30)


@pytest.mark.slow
def test_resume_on_another_number_of_ranks(run_env, tmp_path):
    """A checkpoint written by 2 ranks resumes on 1, and one written by 1 resumes on 2, each reproducing the
    uninterrupted run's losses. 23 rows, 4 per step: each epoch's last step has 3, so on 2 ranks one rank
    runs a zero-weight dummy row (step 6), whose effect on the weights the second epoch's losses would show."""
    data = tmp_path / "d23.jsonl"
    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(23)))
    extra = ["--data", str(data), "--max-length", "300", "--global-batch", "4", "--max-steps", "0", "--epochs", "2"]
    full = run(run_env, tmp_path / "full", *extra)
    assert len(full) == 12  # ceil(23 / 4) steps per epoch: no row dropped for equal shards
    first = torchrun(2, run_env, tmp_path / "a", *extra, "--stop-after", "7")
    rest = run(run_env, tmp_path / "a", *extra, "--resume")
    assert len(first) == 7
    torch.testing.assert_close(torch.tensor(rest), torch.tensor(full), rtol=1e-4, atol=1e-5)  # 2 ranks -> 1
    run(run_env, tmp_path / "b", *extra, "--stop-after", "3")
    rest = torchrun(2, run_env, tmp_path / "b", *extra, "--resume")
    torch.testing.assert_close(torch.tensor(rest), torch.tensor(full), rtol=1e-4, atol=1e-5)  # 1 rank -> 2


def test_dummy_row_changes_nothing(tokenizer_dir):
    """The zero-weight dummy row a rank runs when a step has fewer rows than ranks leaves the update as is."""
    from contextlib import nullcontext
    from vc2.train import train_step
    tok = vc2.load_tokenizer(tokenizer_dir)
    docs, _ = tokenize([conversation(i) for i in range(3)], tok, 10_000)
    [row], _ = pack(docs, 10_000)
    n_sup = int((row["labels"] != IGNORE).sum())
    ctx = {"world": 1, "device": torch.device("cpu"), "autocast": nullcontext(), "loss_chunk": 64, "grad_clip": 1.0}
    after = []
    for rows in ([row], [row, None], [None, row]):
        model = Transformer(PRESETS["debug"]).init_weights(seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loss, _ = train_step(model, opt, rows, n_sup, 1e-2, ctx)
        after.append(([p.detach().clone() for p in model.parameters()], loss))
    for params, loss in after[1:]:
        assert loss == after[0][1]
        for p, q in zip(params, after[0][0]):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


# --- metrics and the memory plan ---------------------------------------------------------------------

def test_flops_count_attention_per_document():
    from vc2.train import train_flops
    cfg = PRESETS["qwen2.5-coder-7b"]
    docs = [1500, 9000, 5884]  # one packed 16K row
    per_doc = sum(train_flops(cfg, n, n, n * n) for n in docs)
    assert train_flops(cfg, sum(docs), sum(docs), sum(n * n for n in docs)) == per_doc  # additive over documents
    attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim
    assert train_flops(cfg, 100, 100, 101) - train_flops(cfg, 100, 100, 100) == attn
    # one document filling the row, all supervised: the usual 6N + 6 L H hd S per token (untied: no embedding)
    S = 16384
    matmul_params = cfg.n_params - cfg.vocab_size * cfg.hidden_size
    assert train_flops(cfg, S, S, S * S) == pytest.approx(S * (6 * matmul_params + attn * S))
    # the head counts only for supervised tokens (vc2 computes no logits elsewhere)
    head = 6 * cfg.vocab_size * cfg.hidden_size
    assert train_flops(cfg, S, S, S * S) - train_flops(cfg, S, 0, S * S) == S * head


@pytest.mark.parametrize("name,tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
                                         ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA B200", 2250), ("Some GPU", None)])
def test_peak_flops_by_device_name(monkeypatch, name, tflops):
    from vc2.train import peak_flops
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda")) == (tflops * 1e12 if tflops else None)
    assert peak_flops(torch.device("cuda"), 123) == 123e12  # --peak-tflops wins
    assert peak_flops(torch.device("cpu")) is None


def test_memory_plan_warns_when_it_does_not_fit():
    import argparse
    from vc2.train import format_plan, memory_plan
    args = argparse.Namespace(dtype="bfloat16", max_length=16384, activation_checkpointing=True, loss_chunk=4096,
                              cpu_offload=False)
    gpu = 80 * 2**30
    for size, fits in (("7b", True), ("32b", False)):
        cfg = PRESETS[f"qwen2.5-coder-{size}"]
        plan = memory_plan(cfg, 8, args, fsdp=True)
        assert plan["parameters (fp32)"] == pytest.approx(4 * cfg.n_params / 8)
        assert ("WARNING" in format_plan(plan, gpu, 8, args, cfg)) != fits, size
    args.cpu_offload = True  # parameters, gradients and optimizer state leave the GPU
    cfg = PRESETS["qwen2.5-coder-32b"]
    assert "WARNING" not in format_plan(memory_plan(cfg, 8, args, fsdp=True), gpu, 8, args, cfg)


def test_compile_per_block_shares_one_graph(tokenizer_dir):
    """apply_compile after activation checkpointing: no graph break (fullgraph), every block reuses the same
    graph (no per-block recompiles), and loss and gradients equal eager. aot_eager: dynamo and autograd
    tracing without inductor's code generation, which is what can break when the model changes."""
    import torch._dynamo
    from dataclasses import replace
    from torch._dynamo.utils import counters
    from vc2.train import apply_activation_checkpointing, apply_compile
    tok = vc2.load_tokenizer(tokenizer_dir)
    docs, _ = tokenize([conversation(i) for i in range(6)], tok, 10_000)
    rows, _ = pack(docs, 300)
    cfg = replace(PRESETS["debug"], num_hidden_layers=4)
    results = []
    for compiled in (False, True):
        model = Transformer(cfg).init_weights(seed=0)
        model.set_attention_backend("sdpa_mask")  # the CPU loop backend reads cu_seqlens on the host: a graph break
        apply_activation_checkpointing(model)
        if compiled:
            torch._dynamo.reset()
            counters.clear()
            apply_compile(model, fullgraph=True, backend="aot_eager")
        losses = []
        for r in rows[:3]:  # three row lengths: one static graph, then one dynamic
            loss = model(r["input_ids"][None], position_ids=r["position_ids"][None], cu_seqlens=r["cu_seqlens"],
                         max_seqlen=r["max_seqlen"], labels=r["labels"][None])
            loss.backward()
            losses.append(loss.detach())
        results.append((torch.stack(losses), [p.grad.clone() for p in model.parameters()]))
    assert len({len(r["input_ids"]) for r in rows[:3]}) > 1
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # not one per block
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
