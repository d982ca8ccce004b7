"""Hugging Face checkpoints <-> vc2 modules: `load_model` and `save_model`.

    import vc2
    model = vc2.load_model("path/to/Qwen2.5-Coder-1.5B-Instruct", dtype=torch.bfloat16)
    vc2.save_model(model, "out/my-finetune")  # config.json, generation_config.json, safetensors, tokenizer files

A checkpoint directory holds config.json and either one `model.safetensors` or shards listed in
`model.safetensors.index.json`. The HF-name -> vc2-name map below is data: every tensor of a checkpoint
must be mapped and every parameter of the model must be filled, else a ValueError names the tensor and
the file. Loading builds the model on the meta device and fills it tensor by tensor, so a model never
needs twice its size in RAM; `load_weights` fills a model that FSDP has already sharded, each rank reading
only its own rows of each tensor (the trainer's path for 7B-32B).
"""
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from vc2.config import ModelConfig
from vc2.model import Transformer

# HF tensor name -> (vc2 parameter name, part). "{}" is the layer index. vc2 fuses q/k/v into one
# `qkv` matrix and gate/up into one `gate_up` matrix: `part` names the block of rows (dim 0) an HF tensor
# fills, None for a whole parameter. The q/k/v biases exist only when config.attention_bias (Qwen2);
# lm_head.weight only when the head is untied.
HF_TO_VC2 = {
    "model.embed_tokens.weight": ("embed.weight", None),
    "model.layers.{}.input_layernorm.weight": ("layers.{}.attn_norm.weight", None),
    "model.layers.{}.self_attn.q_proj.weight": ("layers.{}.attn.qkv.weight", "q"),
    "model.layers.{}.self_attn.k_proj.weight": ("layers.{}.attn.qkv.weight", "k"),
    "model.layers.{}.self_attn.v_proj.weight": ("layers.{}.attn.qkv.weight", "v"),
    "model.layers.{}.self_attn.q_proj.bias": ("layers.{}.attn.qkv.bias", "q"),
    "model.layers.{}.self_attn.k_proj.bias": ("layers.{}.attn.qkv.bias", "k"),
    "model.layers.{}.self_attn.v_proj.bias": ("layers.{}.attn.qkv.bias", "v"),
    "model.layers.{}.self_attn.o_proj.weight": ("layers.{}.attn.o.weight", None),
    "model.layers.{}.post_attention_layernorm.weight": ("layers.{}.mlp_norm.weight", None),
    "model.layers.{}.mlp.gate_proj.weight": ("layers.{}.mlp.gate_up.weight", "gate"),
    "model.layers.{}.mlp.up_proj.weight": ("layers.{}.mlp.gate_up.weight", "up"),
    "model.layers.{}.mlp.down_proj.weight": ("layers.{}.mlp.down.weight", None),
    "model.norm.weight": ("norm.weight", None),
    "lm_head.weight": ("lm_head.weight", None),
}


def part_rows(cfg: ModelConfig, part: str | None) -> slice:
    """The rows of a fused parameter that one HF tensor occupies."""
    q, kv, inter = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    return {None: slice(None), "q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv),
            "gate": slice(0, inter), "up": slice(inter, 2 * inter)}[part]


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"]
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"


def hf_key_map(cfg: ModelConfig) -> dict[str, tuple[str, str | None]]:
    """The full HF name -> (vc2 name, part) map for one config (layers expanded, absent tensors left out)."""
    out = {}
    for hf, (ours, part) in HF_TO_VC2.items():
        if ".bias" in hf and not cfg.attention_bias:
            continue
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        for i in range(cfg.num_hidden_layers) if "{}" in hf else [None]:
            out[hf.format(i)] = (ours.format(i), part)
    return out


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e!r})") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise ValueError(f"{index}: lists shard {f.name} which does not exist in {path}")
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    if any(path.glob("*.bin")):
        raise ValueError(f"{path}: only PyTorch .bin weights found; vc2 reads safetensors "
                         "(convert them once with transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise ValueError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")


def resolve_model_path(path) -> Path:
    """A checkpoint directory as given, or the directory of a named embedded model ("smollm2-135m")."""
    if os.path.isdir(path):
        return Path(path)
    from vc2.convert_gguf import EMBEDDED_MODELS  # imported lazily: only the demo model needs gguf
    if str(path) in EMBEDDED_MODELS:
        return Path(EMBEDDED_MODELS[str(path)]())
    raise ValueError(f"{path}: no such directory (and not an embedded model name: {sorted(EMBEDDED_MODELS)})")


def load_model(path, dtype: torch.dtype | None = None, device="cpu") -> Transformer:
    """Load a HF checkpoint directory (or a named embedded model, e.g. "smollm2-135m").

    dtype None keeps the checkpoint's stored dtype (config.json `torch_dtype`/`dtype`).
    The returned model is in eval mode and remembers `source_dir` and `generation_config`.
    """
    path = resolve_model_path(path)
    cfg = ModelConfig.from_hf(path)
    if dtype is None:
        dtype = getattr(torch, cfg.torch_dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{path / 'config.json'}: unknown torch_dtype {cfg.torch_dtype!r}")
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)  # no memory yet
    model.to_empty(device=device)  # each parameter allocated once, in its final dtype
    model.tie_weights()  # to_empty gives each module a tensor of its own
    load_weights(model, path)
    return model.eval()


def local_rows(p) -> tuple[torch.Tensor, int]:
    """(the tensor this process holds of parameter p, the index of its first row in the full parameter).

    A plain tensor is all of itself. An FSDP2 parameter is a DTensor sharded on dim 0 the way torch.chunk
    splits it: ceil(rows / ranks) rows per rank, the last ranks' chunks shorter or empty.
    """
    if not hasattr(p, "to_local"):
        return p.data, 0
    from torch.distributed.tensor import Shard
    assert len(p.placements) == 1 and p.placements[0] == Shard(0), f"expected FSDP's Shard(0), got {p.placements}"
    mesh, n = p.device_mesh, p.shape[0]
    per_rank = -(-n // mesh.size())
    first = min(mesh.get_local_rank() * per_rank, n)
    local = p.to_local()
    assert local.shape[0] == min(per_rank, n - first), (tuple(local.shape), n, first)
    return local, first


@torch.no_grad()
def load_weights(model: Transformer, path):
    """Fill the parameters of `model` (already allocated: plain, or FSDP2-sharded DTensors) from the HF
    checkpoint in `path`. Each process reads only the rows it holds, straight from the safetensors files
    (one slice at a time, cast on copy), so no process ever holds the full model, and ranks need no
    communication: a 32B model loads onto 8 GPUs with ~1/8 of it per rank.
    Also sets model.source_dir / generation_config / n_real_tokens, as load_model does."""
    path = Path(resolve_model_path(path))
    cfg = model.config
    params = dict(model.named_parameters())  # a tied head is listed once, as embed.weight
    wanted = hf_key_map(cfg)
    filled = set()
    for file in _checkpoint_files(path):
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # some exporters write both tied keys; the embedding is the one we keep
                if name not in wanted:
                    raise ValueError(f"{file}: unexpected tensor {name!r} (not part of a "
                                     f"{cfg.model_type} model with this config.json)")
                ours, part = wanted[name]
                p = params[ours]
                rows = range(p.shape[0])[part_rows(cfg, part)]  # this tensor's rows of the (fused) parameter
                shape = tuple(f.get_slice(name).get_shape())
                want = (len(rows), *p.shape[1:])
                if shape != want:
                    raise ValueError(f"{file}: tensor {name!r} has shape {shape}, config.json implies {want}")
                local, first = local_rows(p)
                a, b = max(rows.start, first), min(rows.stop, first + local.shape[0])  # rows we hold of it
                if a < b:
                    local[a - first:b - first].copy_(f.get_slice(name)[a - rows.start:b - rows.start])
                filled.add(name)
    missing = sorted(set(wanted) - filled)
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"{path}: checkpoint lacks tensor(s) {missing[:5]}{more}")
    model.source_dir = path
    gen = path / "generation_config.json"
    model.generation_config = json.loads(gen.read_text()) if gen.is_file() else {}
    if (path / "tokenizer.json").is_file():  # the sampler masks embedding rows past the real vocabulary
        from tokenizers import Tokenizer
        model.n_real_tokens = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    return model


def save_model(model: Transformer, path, dtype: torch.dtype | None = None, state_dict: dict | None = None,
               max_shard_bytes: int = 5 * 2**30, tokenizer_dir=None):
    """Write a HF directory that `transformers` and `vc2.load_model` both read.

    dtype None keeps each tensor's dtype. `state_dict` (vc2 names) replaces model.state_dict(): the
    trainer passes the full state dict gathered from FSDP shards. Checkpoints over `max_shard_bytes`
    are split into shards with an index. Tokenizer files are copied from `tokenizer_dir`, else from the
    directory the model was loaded from.
    """
    cfg = model.config
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict() if state_dict is None else state_dict
    tensors = {}
    for hf, (ours, part) in hf_key_map(cfg).items():
        if ours not in sd:
            raise ValueError(f"state dict lacks {ours!r} (HF {hf!r})")
        t = sd[ours].detach()[part_rows(cfg, part)]
        tensors[hf] = t.to(device="cpu", dtype=dtype or t.dtype).clone()  # own storage: no shared/tied views

    # greedy sharding in key order; one shard -> the plain single-file layout
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    for old in list(path.glob("model*.safetensors")) + [path / INDEX_FILE]:
        old.unlink(missing_ok=True)  # stale shards of an earlier save would confuse loaders
    if len(shards) == 1:
        _atomic_save(shards[0], path / SINGLE_FILE)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, path / name)
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _atomic_write(path / INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    hf_config = cfg.to_hf()
    hf_config["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    _atomic_write(path / "config.json", json.dumps(hf_config, indent=2))
    gen = dict(getattr(model, "generation_config", None) or {})
    gen.setdefault("bos_token_id", cfg.bos_token_id)
    gen.setdefault("eos_token_id", cfg.eos_token_id)
    _atomic_write(path / "generation_config.json", json.dumps(gen, indent=2))
    src = Path(tokenizer_dir) if tokenizer_dir else getattr(model, "source_dir", None)
    if src is not None and Path(src).resolve() != path.resolve():
        for name in TOKENIZER_FILES:
            if (Path(src) / name).is_file():
                shutil.copyfile(Path(src) / name, path / name)
    return path


def _atomic_save(tensors: dict, file: Path):
    tmp = file.with_name(file.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, file)


def _atomic_write(file: Path, text: str):
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, file)
