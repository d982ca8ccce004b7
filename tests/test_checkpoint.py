"""HF checkpoint I/O and config reading: round trips, transformers interop, clear errors.

    python -m pytest tests/test_checkpoint.py
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vc2
from vc2.checkpoint import hf_key_map
from vc2.config import PRESETS, ModelConfig
from vc2.model import Transformer
from conftest import make_hf_model


@pytest.mark.parametrize("name", list(PRESETS))
def test_key_map_covers_every_parameter(name):
    cfg = PRESETS[name]
    with torch.device("meta"):
        model = Transformer(cfg)
    ours = set(model.state_dict())  # a tied head appears under both names
    mapped = {name for name, _ in hf_key_map(cfg).values()}
    if cfg.tie_word_embeddings:
        mapped.add("lm_head.weight")
    assert mapped == ours
    # the parts of every fused parameter tile its rows exactly, in order
    from vc2.checkpoint import part_rows
    for name, p in model.named_parameters():
        parts = sorted((part_rows(cfg, part) for ours, part in hf_key_map(cfg).values() if ours == name),
                       key=lambda s: s.start or 0)
        rows = [r for s in parts for r in range(*s.indices(p.shape[0]))]
        assert rows == list(range(p.shape[0])), name
    n_hf = len(hf_key_map(cfg))
    assert n_hf == cfg.num_hidden_layers * 12 + 2 + (0 if cfg.tie_word_embeddings else 1)  # 339 for 7B


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shard_bytes", [2**40, 40_000])  # one file, and many shards with an index
def test_save_load_round_trip_bit_exact(tmp_path, dtype, shard_bytes):
    model = Transformer(PRESETS["debug"]).init_weights(seed=0).to(dtype)
    vc2.save_model(model, tmp_path / "ckpt", max_shard_bytes=shard_bytes)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    if shard_bytes < 2**40:
        assert "model.safetensors.index.json" in files and "model-00002-of-" in " ".join(files)
    else:
        assert "model.safetensors" in files
    again = vc2.load_model(tmp_path / "ckpt")
    assert again.config.tie_word_embeddings and again.lm_head.weight is again.embed.weight
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and p2.dtype == dtype and torch.equal(p1, p2), n1


@pytest.mark.parametrize("model_type,tied", [("qwen2", True), ("qwen2", False), ("llama", True)])
def test_transformers_loads_what_we_save(tmp_path, model_type, tied):
    import transformers
    hf, path = make_hf_model(tmp_path, model_type, tied=tied)
    ours = vc2.load_model(path, dtype=torch.float32)
    vc2.save_model(ours, tmp_path / "out", max_shard_bytes=200_000)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(0, 320, (2, 20))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hf(ids).logits)
    keys = set()
    for f in (tmp_path / "out").glob("*.safetensors"):
        keys |= set(load_file(f))
    assert ("lm_head.weight" in keys) == (not tied)  # HF convention: a tied checkpoint omits the head


def test_tokenizer_files_and_generation_config_are_copied(tmp_path, tokenizer_dir):
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    model.generation_config = {"temperature": 0.3, "eos_token_id": [2, 3]}
    vc2.save_model(model, tmp_path / "out", tokenizer_dir=tokenizer_dir)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    again = vc2.load_model(tmp_path / "out")
    assert again.generation_config["temperature"] == 0.3
    vc2.save_model(again, tmp_path / "out2")  # tokenizer follows the model from where it was loaded
    assert (tmp_path / "out2" / "tokenizer_config.json").is_file()


def test_untied_checkpoint_with_both_keys_and_tied_extra_head(tmp_path):
    """A tied checkpoint that also contains lm_head.weight (some exporters write both) still loads."""
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    path = vc2.save_model(model, tmp_path / "ckpt")
    sd = load_file(path / "model.safetensors")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    again = vc2.load_model(path)
    assert torch.equal(again.lm_head.weight, model.embed.weight)


# --- bad checkpoints: each gives a ValueError naming what is wrong ---------------------------------

@pytest.fixture
def saved(tmp_path):
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    return vc2.save_model(model, tmp_path / "ckpt")


def _edit(path, fn):
    sd = load_file(path / "model.safetensors")
    fn(sd)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor(saved):
    _edit(saved, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"lacks tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        vc2.load_model(saved)


def test_unexpected_tensor(saved):
    _edit(saved, lambda sd: sd.__setitem__("model.layers.7.mlp.up_proj.weight", torch.zeros(1)))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.7"):
        vc2.load_model(saved)


def test_misshaped_tensor(saved):
    _edit(saved, lambda sd: sd.__setitem__("model.norm.weight", torch.ones(65)))
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \(65,\).*\(64,\)"):
        vc2.load_model(saved)


def test_missing_shard_and_no_weights(tmp_path):
    model = Transformer(PRESETS["debug"]).init_weights(seed=0)
    path = vc2.save_model(model, tmp_path / "ckpt", max_shard_bytes=40_000)
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ValueError, match=f"{shard.name} which does not exist"):
        vc2.load_model(path)
    for f in path.glob("model*"):
        f.unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        vc2.load_model(path)
    with pytest.raises(ValueError, match="no such directory"):
        vc2.load_model(tmp_path / "nowhere")


def _hf_dict(**changes):
    d = PRESETS["qwen2.5-coder-0.5b"].to_hf()
    d.update(changes)
    return d


@pytest.mark.parametrize("changes,message", [
    (dict(model_type="mistral"), "model_type='mistral' is not supported"),
    (dict(use_sliding_window=True), "use_sliding_window=true is not implemented"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), "rope scaling 'yarn'"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e6}), "rope scaling 'linear'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
])
def test_unsupported_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(_hf_dict(**changes))


def test_missing_config_field(tmp_path):
    d = _hf_dict()
    del d["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"config\.json: missing required field.*hidden_size"):
        ModelConfig.from_hf(tmp_path)


def test_config_forms_classic_and_transformers5():
    classic = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
               "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
               "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": True,
               "use_sliding_window": False, "sliding_window": 32768, "rope_scaling": None}
    v5 = {k: v for k, v in classic.items() if k not in ("rope_theta", "torch_dtype", "rope_scaling")}
    v5.update(dtype="bfloat16", rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})
    a, b = ModelConfig.from_hf(classic), ModelConfig.from_hf(v5)
    for field in ("rope_theta", "torch_dtype", "hidden_size", "num_key_value_heads", "tie_word_embeddings", "head_dim"):
        assert getattr(a, field) == getattr(b, field) == getattr(PRESETS["qwen2.5-coder-0.5b"], field), field


def test_llama_config_reads_attention_bias():
    d = _hf_dict(model_type="llama")
    assert ModelConfig.from_hf(d).attention_bias is False
    assert ModelConfig.from_hf({**d, "attention_bias": True}).attention_bias is True
    assert ModelConfig.from_hf(_hf_dict()).attention_bias is True  # qwen2 always has q/k/v bias


def test_preset_param_counts():
    # published sizes: 0.49B, 1.54B, 3.09B, 7.61B, 14.7B, 32.5B parameters
    want = {"0.5b": 0.494, "1.5b": 1.544, "3b": 3.086, "7b": 7.616, "14b": 14.770, "32b": 32.764}
    for size, billions in want.items():
        assert abs(PRESETS[f"qwen2.5-coder-{size}"].n_params / 1e9 - billions) < 1e-3, size


# --- sharded loading: each rank fills only its own rows, and the result is the one-process model ------

def _load_on_rank(rank, world, model_dir, store, out, cpu_offload):
    import argparse
    import torch.distributed as dist
    from vc2.train import build_model
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    args = argparse.Namespace(activation_checkpointing=True, compile=False, dtype="float32", cpu_offload=cpu_offload)
    model = build_model(model_dir, torch.device("cpu"), args, fsdp=True)
    local = {n: p.to_local().numel() for n, p in model.named_parameters()}
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    tied = model.lm_head.weight is model.embed.weight
    ids = torch.arange(40).remainder(model.config.vocab_size)[None]
    with torch.no_grad():
        logits = model(ids)
    if rank == 0:
        torch.save({"full": full, "local": local, "tied": tied, "logits": logits}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("tied,world,cpu_offload", [(True, 2, True), (False, 3, False)])
def test_sharded_load_equals_one_process_load(tmp_path, tied, world, cpu_offload):
    """meta -> fully_shard -> to_empty -> load_weights on gloo ranks gives exactly vc2.load_model's parameters.
    Odd sizes on 3 ranks put shard boundaries inside the fused qkv and gate_up parameters."""
    import torch.multiprocessing as mp
    from dataclasses import replace
    cfg = replace(PRESETS["debug"], vocab_size=509, hidden_size=48, intermediate_size=101, tie_word_embeddings=tied)
    src = Transformer(cfg).init_weights(seed=7)
    with torch.no_grad():
        for n, p in src.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))  # not all ones/zeros
    path = vc2.save_model(src, tmp_path / "ckpt", max_shard_bytes=60_000)  # several shard files
    mp.spawn(_load_on_rank, args=(world, str(path), tmp_path / "store", tmp_path / "out.pt", cpu_offload), nprocs=world)
    got = torch.load(tmp_path / "out.pt")
    ref = vc2.load_model(path, dtype=torch.float32)
    assert got["tied"] == tied
    for n, p in ref.named_parameters():
        assert torch.equal(got["full"][n], p), n
        assert got["local"][n] <= -(-p.shape[0] // world) * p[0].numel(), n  # rank 0 held only its rows
    with torch.no_grad():
        torch.testing.assert_close(got["logits"], ref(torch.arange(40).remainder(cfg.vocab_size)[None]), rtol=1e-5, atol=1e-5)
