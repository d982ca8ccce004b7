"""The blank-image rule (vc2/eval/images.py) on images built here: what must count as blank and what
must not.

Run: python -m pytest tests/eval/test_images.py
"""
import numpy as np
import pytest
from PIL import Image

from vc2.eval.images import UnusableImage, blank_reason, open_rgb


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
    with pytest.raises(UnusableImage, match="cannot decode"):
        blank_reason(bad)


def test_a_frame_alone_is_blank(tmp_path):
    """A white page with a thin grey (or black) frame is no drawing: the background is the image's most
    common colour, not its border's, and ink is counted away from the edges."""
    for width, colour in ((1, 128), (2, 0), (3, 200)):
        img = np.full((300, 400, 3), 255)
        img[:width], img[-width:], img[:, :width], img[:, -width:] = colour, colour, colour, colour
        assert blank_reason(save(tmp_path, img)), f"a {width}-px frame of {colour} counted as a drawing"
        img[150, 50:350] = 0  # a line inside the frame is a drawing again
        assert blank_reason(save(tmp_path, img)) is None


def test_dark_and_full_bleed_pictures_are_not_blank(tmp_path):
    img = np.full((300, 400, 3), 20)
    img[100:200, 100:300] = (250, 200, 0)        # a dark theme with one bar
    assert blank_reason(save(tmp_path, img)) is None
    rng = np.random.default_rng(0)
    heat = np.repeat(np.repeat(rng.integers(0, 256, (10, 10, 3)), 30, 0), 40, 1)  # a heatmap to the edges
    assert blank_reason(save(tmp_path, heat)) is None


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path)  # 400 M pixels in a few kB of PNG
    with pytest.raises(UnusableImage, match="more than|bomb"):
        open_rgb(path)


def test_drivers_cap_renders_at_the_same_size():
    """py_driver and browser_driver run with `python -I` and cannot import vc2: their copies of the
    render cap must stay equal to images.MAX_RENDER_PIXELS."""
    import re
    from pathlib import Path

    from vc2.eval import images
    for name in ("py_driver.py", "browser_driver.py"):
        text = (Path(images.__file__).parent / "executors" / name).read_text()
        assert int(re.search(r"^MAX_RENDER_PIXELS = ([\d_]+)", text, re.M).group(1)) == images.MAX_RENDER_PIXELS, name


def test_a_filled_shape_cropped_to_its_outline_is_a_drawing(tmp_path):
    """Asymptote and standalone TikZ crop to the picture: one filled square with a black outline fills
    the whole image. That is a drawing; a plain fill with no outline, white or not, is not."""
    img = np.full((120, 120, 3), (173, 216, 230))
    assert blank_reason(save(tmp_path, img))                 # one colour: blank
    img[:2], img[-2:], img[:, :2], img[:, -2:] = 0, 0, 0, 0
    assert blank_reason(save(tmp_path, img)) is None          # the same with an outline: a square
    assert blank_reason(save(tmp_path, np.zeros((100, 100, 3))))  # all black: blank
