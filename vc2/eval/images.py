"""Image checks on rendered PNGs: is it blank? And the background/ink rule that decides it.

    from vc2.eval.images import blank_reason
    blank_reason("out.png")   # None if something is drawn, else a short reason ("only 3 ink pixels")

The same rule (load_rgb, background, ink_mask, enough_ink) is what vc2/eval/fidelity.py crops to and
scores 0 on, so "blank" means one thing everywhere.

The rule is a tolerance-based ink count, not VisPlotBench's "dominant colour >= 98%" test: that one
rejects real sparse plots (a thin line, an A4 LilyPond page, plotly.js) and misses a faint gradient or
noise, whose dominant colour is split across near-identical shades. Steps:
1. decode; fewer than 8 px on a side is blank; fully transparent is blank; else composite onto white
   (matplotlib transparent=True, rsvg and R produce transparent PNGs);
2. shrink to at most 512 px (box filter) -- 1 to 60 ms per image;
3. background = the most common colour on the 1-px border; "ink" = pixels whose largest channel
   differs from it by more than 24/255;
4. blank if ink < max(20 px, 0.02 % of the pixels). (This also covers "a single colour at 16 levels
   per channel", a test this module used to run as well at up to 0.4 CPU-s per image: pixels sharing
   one 16-level bucket differ by at most 15 per channel, so none of them is ink against the
   background, itself one of those pixels.)
Not caught: "semantically empty" plots that still draw axes (matplotlib empty axes has ~1.3 % ink);
executors add per-language signals for those (e.g. Vega-Lite data that cannot be loaded is an error).
"""
from collections import Counter

import numpy as np
from PIL import Image

INK_DELTA = 24        # out of 255: a channel difference below this is background (JPEG-ish noise, AA fringe)
MIN_INK_PX = 20
MIN_INK_FRAC = 0.0002


def load_rgb(path):
    """The image composited onto white as RGB, or None when it is fully transparent."""
    img = Image.open(path)
    img.load()
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][1] == 0:
            return None  # fully transparent
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def background(a):
    """The most common colour on the 1-px border of an (H, W, 3) int array."""
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return Counter(map(tuple, border.tolist())).most_common(1)[0][0]


def ink_mask(a, bg=None):
    """(H, W) bool: pixels whose largest channel differs from the background by more than INK_DELTA."""
    a = np.asarray(a, dtype=np.int16)
    bg = background(a) if bg is None else bg
    return np.abs(a - np.array(bg, dtype=np.int16)).max(axis=2) > INK_DELTA


def enough_ink(n_ink, n_pixels):
    """(is it a picture, the ink pixels it needs) for n_ink ink pixels among n_pixels."""
    need = max(MIN_INK_PX, MIN_INK_FRAC * n_pixels)
    return n_ink >= need, need


def blank_reason(path):
    """None when the image shows something; otherwise a short human-readable reason."""
    try:
        img = load_rgb(path)
    except Exception as e:  # truncated or not an image at all: blank for our purposes
        return f"unreadable image ({type(e).__name__}: {e})"
    if img is None:
        return "fully transparent"
    w, h = img.size
    if min(w, h) < 8:
        return f"tiny image ({w}x{h})"
    img.thumbnail((512, 512), Image.BOX)
    a = np.asarray(img, dtype=np.int16)
    ink = int(ink_mask(a).sum())
    ok, need = enough_ink(ink, a.shape[0] * a.shape[1])
    if not ok:
        return f"only {ink} ink pixels (need {need:.0f}) on a {w}x{h} image"
    return None


def is_blank(path):
    return blank_reason(path) is not None
