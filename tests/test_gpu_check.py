"""bench/gpu_check.py on a machine without CUDA: it must skip cleanly (exit 0, saying why), and the parts
it builds on the CPU before touching the GPU (its tokenizer, its section registry) must work.

    python -m pytest tests/test_gpu_check.py
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would run the real check: run bench/gpu_check.py")
def test_skips_cleanly_without_cuda(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "SKIP: no CUDA device" in p.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "SKIP"


def test_sections_are_a_registry():
    import gpu_check
    assert list(gpu_check.SECTIONS)[:2] == ["env", "attention"]
    assert {"cross_entropy", "load_meta", "train_single", "train_fsdp", "mfu_16k", "generate"} <= set(gpu_check.SECTIONS)
    assert all(fn.__doc__ for fn in gpu_check.SECTIONS.values())
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--only", "nonsense"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "unknown section" in p.stderr


def test_its_tokenizer_renders_chatml(tmp_path):
    import random
    import gpu_check
    import vc2
    from bench_data import make_conversation
    rng = random.Random(0)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(make_conversation(rng, i)) + "\n" for i in range(30)))
    tok = vc2.load_tokenizer(gpu_check.build_tokenizer(tmp_path / "tok", data, vocab_size=600))
    convs = [json.loads(line)["messages"] for line in data.read_text().splitlines()]
    assert tok._pieces_are_independent() and tok.default_system_prompt.startswith("You are Qwen")
    assert tok.render_chats(convs) == [tok.render_chat(m) for m in convs]
    ids, mask = tok.render_chat(convs[0])
    assert ids[0] == tok.im_start_id and 0 < sum(mask) < len(ids)
