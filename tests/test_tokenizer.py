"""Tokenizer and ChatML rendering: ids equal transformers' apply_chat_template; the loss mask is exact.

    python -m pytest tests/test_tokenizer.py
"""
import pytest

import vc2

CONVERSATIONS = [
    [{"role": "user", "content": "Draw a bar chart of sales per month."}],
    [{"role": "system", "content": "You write plotting code."},
     {"role": "user", "content": "Plot y = x^2"},
     {"role": "assistant", "content": "```python\nimport matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\n```"}],
    # a multi-turn correction dialogue: two assistant turns, both supervised
    [{"role": "user", "content": "Draw an <svg> circle."},
     {"role": "assistant", "content": "<svg><circle r='5'></svg>"},
     {"role": "user", "content": "Error: mismatched tag at line 1"},
     {"role": "assistant", "content": "<svg width='10'><circle r='5'/></svg>\n"},
     {"role": "user", "content": "Ünïcödé 数字 🎨 thanks"},
     {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="module")
def hf_tok(tokenizer_dir):
    import transformers
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"),
                                                chat_template=vc2.load_tokenizer(tokenizer_dir).chat_template)


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("gen_prompt", [False, True])
def test_render_chat_equals_transformers(tokenizer_dir, hf_tok, conv, gen_prompt):
    tok = vc2.load_tokenizer(tokenizer_dir)
    ids, mask = tok.render_chat(conv, add_generation_prompt=gen_prompt)
    ref = hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen_prompt, return_dict=False)
    assert ids == list(ref)
    assert len(mask) == len(ids)


def test_default_system_prompt_from_template(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    text, _ = tok.render_chat_text(CONVERSATIONS[0], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nDraw a bar chart of sales per month.<|im_end|>\n<|im_start|>assistant\n")


def test_template_with_real_newlines_and_own_system_prompt(tokenizer_dir, tmp_path):
    """SmolLM2-style templates write real newlines and their own default system prompt."""
    import json, shutil, transformers
    template = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a careful plotting assistant.<|im_end|>\n' }}{% endif %}"
                "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    for name in ("tokenizer.json", "generation_config.json"):
        shutil.copy(tokenizer_dir / name, tmp_path / name)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    tok = vc2.load_tokenizer(tmp_path)
    assert tok.default_system_prompt == "You are a careful plotting assistant."
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), chat_template=template)
    for conv in CONVERSATIONS:
        ids, _ = tok.render_chat(conv, add_generation_prompt=True)
        assert ids == list(hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=False))


def test_loss_mask_covers_exactly_assistant_turns(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    conv = CONVERSATIONS[2]
    ids, mask = tok.render_chat(conv)
    supervised = [i for i, m in zip(ids, mask) if m]
    # The supervised tokens, decoded, are exactly each assistant content followed by <|im_end|>.
    want = "".join(m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant")
    assert tok.decode(supervised) == want
    # exactly three <|im_end|> are supervised (one per assistant turn), the user/system ones are not
    im_end = tok.token_to_id("<|im_end|>")
    assert sum(1 for i, m in zip(ids, mask) if m and i == im_end) == 3
    assert sum(1 for i in ids if i == im_end) == 7  # system + 3 user + 3 assistant
    # role headers are never supervised
    im_start = tok.token_to_id("<|im_start|>")
    assert all(m == 0 for i, m in zip(ids, mask) if i == im_start)


def test_token_straddling_a_turn_boundary_is_supervised(tokenizer_dir):
    """Content that starts with newlines merges with the header's newline into one BPE token (the same
    ids apply_chat_template gives). That token carries content, so it is supervised: nothing is lost."""
    tok = vc2.load_tokenizer(tokenizer_dir)
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nplt.plot()"}]
    ids, mask = tok.render_chat(conv)
    supervised = tok.decode([i for i, m in zip(ids, mask) if m])
    assert supervised in ("\n\nplt.plot()<|im_end|>", "\n\n\nplt.plot()<|im_end|>")
    assert tok.decode(ids).endswith("assistant\n\n\nplt.plot()<|im_end|>\n")


def test_no_assistant_no_supervision(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    _, mask = tok.render_chat(CONVERSATIONS[0], add_generation_prompt=True)
    assert sum(mask) == 0


def test_encode_decode_round_trip_and_eos(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    text = "def f(x):\n    return x * 2  # Ünïcödé 数字 🎨"
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_ids[0] == tok.token_to_id("<|im_end|>") and tok.token_to_id("<|endoftext|>") in tok.eos_ids
    assert tok.encode("<|im_end|>") == [tok.token_to_id("<|im_end|>")]  # special tokens stay atomic


@pytest.mark.parametrize("bad,message", [
    ([{"role": "tool", "content": "x"}], r"messages\[0\]: unknown role 'tool'"),
    ([{"role": "user", "content": ["a list"]}], r"messages\[0\]: content must be a string, got list"),
    ([{"role": "user", "content": "hi"}, "oops"], r"messages\[1\] is str"),
    ([], "non-empty list"),
])
def test_bad_messages(tokenizer_dir, bad, message):
    with pytest.raises(ValueError, match=message):
        vc2.load_tokenizer(tokenizer_dir).render_chat(bad)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        vc2.load_tokenizer(tmp_path)
