"""vc2: a minimal pure-PyTorch VisCoder2 (Qwen2.5-Coder model, SFT trainer, sampler, VisPlotBench evaluation).

    import vc2
    model = vc2.load_model("path/to/checkpoint")   # HF directory or an embedded name ("smollm2-135m")
    tok = vc2.load_tokenizer("path/to/checkpoint")
    ids, loss_mask = tok.render_chat(messages)
"""
from vc2.checkpoint import load_model, save_model
from vc2.config import PRESETS, ModelConfig
from vc2.model import Transformer
from vc2.sample import generate
from vc2.tokenizer import load_tokenizer

__all__ = ["ModelConfig", "PRESETS", "Transformer", "load_model", "save_model", "load_tokenizer", "generate"]
