"""Image checks on rendered PNGs: is it blank?

    from vc2.eval.images import blank_reason
    blank_reason("out.png")   # None if something is drawn, else a short reason ("only 3 ink pixels")

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


def _load(path):
    img = Image.open(path)
    img.load()
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][1] == 0:
            return None  # fully transparent
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def blank_reason(path):
    """None when the image shows something; otherwise a short human-readable reason."""
    try:
        img = _load(path)
    except Exception as e:  # truncated or not an image at all: blank for our purposes
        return f"unreadable image ({type(e).__name__}: {e})"
    if img is None:
        return "fully transparent"
    w, h = img.size
    if min(w, h) < 8:
        return f"tiny image ({w}x{h})"
    img.thumbnail((512, 512), Image.BOX)
    a = np.asarray(img, dtype=np.int16)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = Counter(map(tuple, border.tolist())).most_common(1)[0][0]
    ink = int((np.abs(a - np.array(bg, dtype=np.int16)).max(axis=2) > INK_DELTA).sum())
    need = max(MIN_INK_PX, MIN_INK_FRAC * a.shape[0] * a.shape[1])
    if ink < need:
        return f"only {ink} ink pixels (need {need:.0f}) on a {w}x{h} image"
    return None


def is_blank(path):
    return blank_reason(path) is not None
