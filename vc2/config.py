"""Model hyper-parameters: one ModelConfig dataclass, named presets, and a reader for HF config.json.

    from vc2.config import ModelConfig, PRESETS
    cfg = PRESETS["qwen2.5-coder-0.5b"]            # a named size
    cfg = ModelConfig.from_hf("path/to/checkpoint")  # a directory, a config.json path, or a dict

Qwen2 and Llama are the same decoder (pre-norm RMSNorm, RoPE rotate-half, GQA, SwiGLU) except that
Qwen2 has a bias on q/k/v. `attention_bias` carries that one difference, so small real Llama-family
models (SmolLM2) run through the same code. Anything we do not implement (sliding-window attention,
rope scaling, another architecture) is refused with a ValueError rather than producing wrong logits.
"""
import json
import os
from dataclasses import asdict, dataclass, field, fields


@dataclass
class ModelConfig:
    vocab_size: int = 151936          # embedding rows (Qwen pads past the 151,665 real tokens)
    hidden_size: int = 896
    intermediate_size: int = 4864     # SwiGLU inner width
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2      # GQA: each kv head serves num_attention_heads // num_key_value_heads q heads
    head_dim: int = 0                 # 0 -> hidden_size // num_attention_heads
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True  # tied checkpoints have no lm_head.weight
    attention_bias: bool = True       # q/k/v bias: True for Qwen2, False for Llama
    max_position_embeddings: int = 32768
    model_type: str = "qwen2"         # "qwen2" or "llama": written back into config.json on save
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    torch_dtype: str = "bfloat16"     # the dtype the checkpoint is stored in
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, kept for saving

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r} is not supported (vc2 runs {sorted(SUPPORTED_MODEL_TYPES)})")

    @property
    def n_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, h, kv, L = self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.num_hidden_layers
        attn = d * h * self.head_dim * 2 + d * kv * self.head_dim * 2  # q, o, k, v
        if self.attention_bias:
            attn += (h + 2 * kv) * self.head_dim
        mlp = 3 * d * self.intermediate_size
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return L * (attn + mlp + 2 * d) + d + emb

    # --- HF config.json <-> ModelConfig --------------------------------------------------------

    @classmethod
    def from_hf(cls, path_or_dict) -> "ModelConfig":
        """Read a HF config.json (classic or transformers-5 form). Accepts a dir, a file path or a dict."""
        where = "config dict"
        if isinstance(path_or_dict, dict):
            hf = dict(path_or_dict)
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            where = path
            if not os.path.isfile(path):
                raise ValueError(f"{path}: no config.json found")
            try:
                with open(path) as f:
                    hf = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None

        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{where}: model_type={model_type!r} is not supported "
                             f"(vc2 implements {sorted(SUPPORTED_MODEL_TYPES)})")
        # transformers 5 writes rope_parameters={"rope_theta":..., "rope_type":"default"}; older files a
        # top-level rope_theta and maybe rope_scaling. Only plain RoPE is implemented.
        rope = hf.get("rope_parameters") or {}
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or {}
        for spec in (rope, scaling):
            rope_type = spec.get("rope_type", spec.get("type", "default"))
            if rope_type not in (None, "default"):
                raise ValueError(f"{where}: rope scaling {rope_type!r} is not implemented; "
                                 "vc2 would give wrong logits at long positions, so it refuses")
        if hf.get("use_sliding_window", False):
            raise ValueError(f"{where}: use_sliding_window=true is not implemented "
                             "(every Qwen2.5-Coder checkpoint has it off)")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{where}: hidden_act={hf['hidden_act']!r} is not implemented (only silu)")
        if model_type == "llama" and hf.get("mlp_bias", False):
            raise ValueError(f"{where}: mlp_bias=true is not implemented")

        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        missing = [k for k in required if k not in hf]
        if missing:
            raise ValueError(f"{where}: missing required field(s) {missing}")
        n_head = hf["num_attention_heads"]
        known = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=n_head,
            num_key_value_heads=hf.get("num_key_value_heads") or n_head,
            head_dim=hf.get("head_dim") or 0,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type == "qwen2")),
            attention_bias=True if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            model_type=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            torch_dtype=hf.get("torch_dtype") or hf.get("dtype") or "float32",
        )
        consumed = set(known) | {"dtype", "rope_parameters", "rope_scaling", "use_sliding_window",
                                 "hidden_act", "architectures", "transformers_version"}
        known["extra"] = {k: v for k, v in hf.items() if k not in consumed}
        return cls(**known)

    def to_hf(self) -> dict:
        """The config.json dict for this config, in the classic form both transformers 4 and 5 read."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d = {**self.extra, **d}
        d["architectures"] = ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"]
        d["hidden_act"] = "silu"
        d["use_sliding_window"] = False
        if self.model_type == "qwen2":
            d.pop("attention_bias")  # implied by the architecture
        else:
            d["mlp_bias"] = False
        d.setdefault("attention_dropout", 0.0)
        d.setdefault("initializer_range", 0.02)
        d.setdefault("use_cache", True)
        return d

    def to_dict(self) -> dict:
        return asdict(self)


SUPPORTED_MODEL_TYPES = {"qwen2", "llama"}

# The six Qwen2.5-Coder sizes, values from their HF config.json files
# (https://huggingface.co/Qwen/Qwen2.5-Coder-{size}-Instruct/blob/main/config.json).
# All: rope_theta 1e6, max_position_embeddings 32768, rms_norm_eps 1e-6 (Instruct), q/k/v bias,
# bos 151643, eos 151645 (Instruct; base checkpoints use 151643). 0.5B-3B tie the head to the embedding.
_QWEN = dict(rope_theta=1_000_000.0, rms_norm_eps=1e-6, attention_bias=True, model_type="qwen2",
             max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645)
PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-coder-0.5b": ModelConfig(**_QWEN, vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                      num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                      tie_word_embeddings=True),
    "qwen2.5-coder-1.5b": ModelConfig(**_QWEN, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                      tie_word_embeddings=True),
    "qwen2.5-coder-3b": ModelConfig(**_QWEN, vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                                    num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                                    tie_word_embeddings=True),
    "qwen2.5-coder-7b": ModelConfig(**_QWEN, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                    num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                    tie_word_embeddings=False),
    "qwen2.5-coder-14b": ModelConfig(**_QWEN, vocab_size=152064, hidden_size=5120, intermediate_size=13824,
                                     num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                                     tie_word_embeddings=False),
    "qwen2.5-coder-32b": ModelConfig(**_QWEN, vocab_size=152064, hidden_size=5120, intermediate_size=27648,
                                     num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                                     tie_word_embeddings=False),
    # A tiny model for tests and CPU smoke runs: same code paths (GQA 2:1, bias, tied head), ~0.1M params.
    "debug": ModelConfig(**{**_QWEN, "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 2048}, vocab_size=512, hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, torch_dtype="float32"),
}
