"""Shared fixtures: tiny random HF models and a tiny byte-level BPE tokenizer, all built offline.

Run the suite: `python -m pytest` (add `-m "not slow"` for the quick part).
"""
import json
import os

import pytest
import torch

torch.set_num_threads(2)
# "auto" stays on the host modes (bwrap first) even where the container images are built, so no test's
# verdicts or timings depend on which images a machine has; container mode is tested where it is asked for
os.environ["VC2_AUTO_CONTAINERS"] = "0"
if not torch.cuda.is_available():
    # Triton runs on CPU only under its interpreter, and only for kernels decorated after this is set,
    # i.e. before anything imports vc2 (tests/test_kernels.py forces the kernels on). A GPU machine runs
    # them compiled instead.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def make_hf_model(tmp_path, model_type="qwen2", tied=True, n_head=4, n_kv_head=2, seed=0, **overrides):
    """Save a tiny random `transformers` Qwen2/Llama model to tmp_path; return (hf_model, path)."""
    import transformers  # the test-only reference (pip install -e .[test]); missing it is a failure, not a skip
    torch.manual_seed(seed)
    kw = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=n_head, num_key_value_heads=n_kv_head, tie_word_embeddings=tied,
              max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0)
    kw.update(overrides)
    if model_type == "qwen2":
        cfg = transformers.Qwen2Config(**kw)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**kw, attention_bias=False)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF inits biases to zero and norms to one: randomise them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    path = tmp_path / f"{model_type}-{'tied' if tied else 'untied'}-{n_head}-{n_kv_head}"
    model.save_pretrained(path)
    return model, path


CHATML_TEMPLATE = (
    # Written by us from the documented Qwen2.5 ChatML behaviour (turn format, default system prompt,
    # generation prompt); the tool-calling branches of the real template are left out.
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE trained in a few ms on our own text, with Qwen's special tokens and split regex."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    path = tmp_path_factory.mktemp("tok")
    tk = Tokenizer(models.BPE())
    qwen_split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen_split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    corpus = ["import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.savefig('out.png')\n",
              "Draw a bar chart of sales per month with a title.", "<svg width='10'><rect/></svg>",
              "def f(x):\n    return x * 2\n\n\n", "Ünïcödé text — with dashes, 数字 and emoji 🎨."] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tk.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": CHATML_TEMPLATE, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "model_max_length": 4096, "tokenizer_class": "Qwen2Tokenizer"}))
    eos = tk.token_to_id("<|im_end|>")
    (path / "generation_config.json").write_text(json.dumps({
        "eos_token_id": [eos, tk.token_to_id("<|endoftext|>")], "pad_token_id": tk.token_to_id("<|endoftext|>")}))
    return path


@pytest.fixture(autouse=True)
def _real_executors_after_each_test():
    """A test that replaces the executors without restoring them (setattr instead of monkeypatch) would
    make every later test run fakes: fail the test that leaked, not the hundred after it."""
    import sys
    yield
    ex = sys.modules.get("vc2.eval.executors")
    if ex is not None:
        assert ex.run.__module__ == "vc2.eval.executors" and ex.describe_sandbox.__module__ == "vc2.eval.executors", \
            "this test left vc2.eval.executors patched: use monkeypatch so the real functions come back"
