"""The blank-image rule (vc2/eval/images.py) on images built here: what must count as blank and what
must not.

Run: python -m pytest tests/eval/test_images.py
"""
import numpy as np
from PIL import Image

from vc2.eval.images import blank_reason


def save(tmp_path, array, mode="RGB"):
    path = tmp_path / "img.png"
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path


def test_noise_within_one_16_level_bucket_is_blank(tmp_path):
    """images.py dropped its separate "single colour at 16 levels" test as implied by the ink count;
    check that on fresh random images: any noise inside one bucket per channel is blank."""
    rng = np.random.default_rng()
    for _ in range(20):
        base = rng.integers(0, 16, 3) * 16
        img = base + rng.integers(0, 16, (rng.integers(8, 300), rng.integers(8, 300), 3))
        assert blank_reason(save(tmp_path, img)), f"bucket {base} came out as a picture"


def test_sparse_drawings_are_not_blank(tmp_path):
    img = np.full((400, 600, 3), 255)
    img[200, 50:550] = (30, 60, 200)          # one thin line: 500 px of ink on 240k
    assert blank_reason(save(tmp_path, img)) is None
    img = np.full((400, 600, 3), 255)
    img[100:110, 100:110] = 0                 # 100 px of ink: above the floor of 20 px / 0.02 %
    assert blank_reason(save(tmp_path, img)) is None


def test_blank_kinds(tmp_path):
    assert "ink" in blank_reason(save(tmp_path, np.full((300, 300, 3), 255)))
    speck = np.full((300, 300, 3), 255)
    speck[5:8, 5:8] = 0                       # 9 px: a stray dot is not a chart
    assert "ink" in blank_reason(save(tmp_path, speck))
    assert "transparent" in blank_reason(save(tmp_path, np.zeros((50, 50, 4)), "RGBA"))
    assert "tiny" in blank_reason(save(tmp_path, np.zeros((4, 200, 3))))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    assert "unreadable" in blank_reason(bad)
