"""vc2.generate(): token-identical to transformers' greedy generate(), batch == one by one, seeds, stop
ids, vocabulary padding, streaming, sampling settings. (The engine under it: tests/test_engine.py.)

    python -m pytest tests/test_sample.py
"""
import pytest
import torch

import vc2
from vc2.config import PRESETS
from vc2.model import Transformer
from vc2.sample import generate, process_logits
from conftest import make_hf_model

PROMPTS = [[5, 9, 13, 200, 7], [11], [3, 3, 8, 100, 250, 17, 42, 42, 9, 1, 60], [77, 78]]


def hf_greedy(hf, prompts, n):
    """transformers generate() on a left-padded batch (its recommended layout for decoder-only models)."""
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                      pad_token_id=0, eos_token_id=None, repetition_penalty=1.0)
    return [row[L:].tolist() for row in out]


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_greedy_equals_transformers_generate(tmp_path, model_type):
    hf, path = make_hf_model(tmp_path, model_type, tied=model_type == "qwen2", n_head=4, n_kv_head=2)
    ours = vc2.load_model(path, dtype=torch.float32)
    n = 24
    assert generate(ours, PROMPTS, n, stop_ids=[], temperature=0.0) == hf_greedy(hf, PROMPTS, n)  # ragged batch
    for p in PROMPTS[:2]:
        assert generate(ours, [p], n, stop_ids=[], temperature=0.0) == hf_greedy(hf, [p], n)  # batch 1


@pytest.fixture(scope="module")
def model():
    return Transformer(PRESETS["debug"]).init_weights(seed=0)


def test_batch_equals_one_by_one(model):
    batch = generate(model, PROMPTS, 30, stop_ids=[], temperature=0.0)
    assert batch == [generate(model, [p], 30, stop_ids=[], temperature=0.0)[0] for p in PROMPTS]


def test_seed_reproduces_and_differs(model):
    kw = dict(temperature=1.0, top_p=0.95, top_k=50, stop_ids=[])
    a = generate(model, PROMPTS, 20, seed=1, **kw)
    assert a == generate(model, PROMPTS, 20, seed=1, **kw)
    assert a != generate(model, PROMPTS, 20, seed=2, **kw)


def test_stop_ids_end_rows_and_are_excluded(model):
    free = generate(model, PROMPTS, 20, stop_ids=[], temperature=0.0)
    stop = free[0][3]  # a token row 0 produces at step 3
    out = generate(model, PROMPTS, 20, stop_ids=[stop], temperature=0.0)
    for row_free, row in zip(free, out):
        cut = row_free.index(stop) if stop in row_free else len(row_free)
        assert row == row_free[:cut]  # same tokens up to the stop, stop excluded, nothing after
    assert len(out[0]) <= 3


def test_padding_rows_of_vocabulary_never_sampled(model):
    # push all probability mass onto padding ids >= 300: they must still never be sampled
    with torch.no_grad():
        saved = model.lm_head.weight[300:].clone()
        model.lm_head.weight[300:] *= 50
    try:
        for seed in range(3):
            out = generate(model, PROMPTS, 15, stop_ids=[], temperature=1.5, seed=seed, vocab_size=300)
            assert max(max(r) for r in out) < 300
        assert max(max(r) for r in generate(model, PROMPTS, 15, stop_ids=[], temperature=1.5, seed=0)) >= 300
    finally:
        with torch.no_grad():
            model.lm_head.weight[300:] = saved


def test_streaming_callback_sees_every_token_in_order(model):
    seen = {}
    out = generate(model, PROMPTS, 12, stop_ids=[], temperature=0.0,
                   callback=lambda row, tok: seen.setdefault(row, []).append(tok))
    assert [seen[i] for i in range(len(PROMPTS))] == out


def test_top_k_top_p_and_repetition_penalty():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, False, False, False, True]])
    out = process_logits(logits.clone(), seen, 1.0, 1.0, 2, 1.0, None)
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    p = logits.softmax(-1)[0]  # top_p just above the first token's mass keeps exactly two tokens
    out = process_logits(logits.clone(), seen, 1.0, float(p[0]) + 0.01, 0, 1.0, None)
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False, False]
    out = process_logits(logits.clone(), seen, 0.0, 1.0, 0, 2.0, None)
    assert out[0].tolist() == [2.0, 3.0, 2.0, 1.0, -2.0]  # seen: positive halved, negative doubled


def test_generation_config_defaults_and_bad_settings(model):
    model.generation_config = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "eos_token_id": 999}
    try:
        a = generate(model, PROMPTS, 10, seed=3)
        assert a == generate(model, PROMPTS, 10, seed=3, temperature=0.7, top_p=0.8, top_k=20, stop_ids=[999])
        assert a != generate(model, PROMPTS, 10, seed=3, temperature=0.0)
    finally:
        model.generation_config = {}
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, [[]], 5)
    with pytest.raises(ValueError, match="bad sampling settings"):
        generate(model, PROMPTS, 5, top_p=0.0)
    with pytest.raises(ValueError, match="compile=True needs CUDA"):
        generate(model, PROMPTS, 5, compile=True)
