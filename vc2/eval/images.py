"""Image checks on rendered PNGs: can the host decode it, and is it blank?

    from vc2.eval.images import blank_reason, open_rgb
    blank_reason("out.png")   # None if something is drawn, else a short reason ("only 3 ink pixels")
    open_rgb("out.png")       # RGB on white, or UnusableImage naming why (undecodable, too large)

Every host-side decode of a program's output goes through open_rgb: the file is the program's, so it
may be truncated, not an image, or a decompression bomb. Images over MAX_PIXELS are refused before
decoding (the renderers cap honest large figures at render time, well below it).

The same rule (open_rgb, content_mask) is what vc2/eval/fidelity.py crops to and scores 0 on, so
"blank" means one thing everywhere.

The rule is a tolerance-based ink count, not VisPlotBench's "dominant colour >= 98%" test: that one
rejects real sparse plots (a thin line, an A4 LilyPond page, plotly.js) and misses a faint gradient or
noise, whose dominant colour is split across near-identical shades. Steps:
1. decode; fewer than 8 px on a side is blank; fully transparent is blank; else composite onto white
   (matplotlib transparent=True, rsvg and R produce transparent PNGs);
2. shrink to at most 512 px (box filter) -- 1 to 60 ms per image;
3. background = the most common colour of the outer band (3 % of the side, >= 4 px); "ink" = pixels
   whose largest channel differs from it by more than 24/255, counted away from the edges (a margin
   of 1 % of the side, >= 2 px), so a frame alone, or a one-pixel border of another colour, is no drawing;
4. blank if ink < max(20 px, 0.02 % of the pixels), unless the one colour inside is not white and has
   an outline of its own: a filled shape that the renderer cropped to (content_mask). (This also covers "a single colour at 16 levels
   per channel", a test this module used to run as well at up to 0.4 CPU-s per image: pixels sharing
   one 16-level bucket differ by at most 15 per channel, so none of them is ink against the
   background, itself one of those pixels.)
Not caught: "semantically empty" plots that still draw axes (matplotlib empty axes has ~1.3 % ink);
executors add per-language signals for those (e.g. Vega-Lite data that cannot be loaded is an error).
"""
import warnings

import numpy as np
from PIL import Image

INK_DELTA = 24        # out of 255: a channel difference below this is background (JPEG-ish noise, AA fringe)
MIN_INK_PX = 20
MIN_INK_FRAC = 0.0002
MAX_PIXELS = 100_000_000  # decoded on the host at most (300 MB as RGB); renderers cap at MAX_RENDER_PIXELS
MAX_RENDER_PIXELS = 36_000_000  # what executors scale honest large figures down to (e.g. 6000 x 6000)


class UnusableImage(Exception):
    """A program's output file that the host cannot use as an image (the reason is the message)."""


def render_scale(width, height, limit=MAX_RENDER_PIXELS):
    """The factor (<= 1) that brings a width x height render under `limit` pixels."""
    return min(1.0, (limit / max(width * height, 1)) ** 0.5)


def open_rgb(path):
    """The image as RGB composited onto white; None if it is fully transparent. UnusableImage if it is
    not an image, is truncated, or has more than MAX_PIXELS (checked from the header, before decoding)."""
    try:
        img = Image.open(path)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise UnusableImage(f"{w}x{h} pixels is more than the {MAX_PIXELS:,} the host decodes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except UnusableImage:
        raise
    except Exception as e:  # truncated, not an image, a bomb: the program's output, not our failure
        raise UnusableImage(f"cannot decode ({type(e).__name__}: {str(e)[:200]})") from None
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        with warnings.catch_warnings():  # "palette images with transparency ... should be converted": we do
            warnings.simplefilter("ignore", UserWarning)
            rgba = img.convert("RGBA")
        if rgba.getextrema()[3][1] == 0:
            return None  # fully transparent
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def background(a):
    """The paper an (H, W, 3) uint8 picture is drawn on: the commonest colour of its outer band (3 % of
    the side, at least 4 px deep). A band, not the 1-px border, so that a thin frame of another colour
    is outvoted by the paper inside it; not the whole image, where a big bar can outnumber the paper.
    RGB is packed into one int for the count (np.unique(axis=0) costs up to 0.4 CPU-s an image)."""
    h, w = a.shape[:2]
    d = max(4, round(0.03 * min(h, w)))
    band = np.concatenate([a[:d].reshape(-1, 3), a[-d:].reshape(-1, 3), a[:, :d].reshape(-1, 3),
                           a[:, -d:].reshape(-1, 3)]).astype(np.int32)
    values, counts = np.unique((band[:, 0] << 16) | (band[:, 1] << 8) | band[:, 2], return_counts=True)
    v = int(values[counts.argmax()])
    return np.array([v >> 16, (v >> 8) & 255, v & 255])


def load_rgb(path):
    """open_rgb under the name fidelity.py uses."""
    return open_rgb(path)


def enough_ink(n_ink, n_pixels):
    """(is it a picture, the ink pixels it needs) for n_ink ink pixels among n_pixels."""
    need = max(MIN_INK_PX, MIN_INK_FRAC * n_pixels)
    return n_ink >= need, need


def ink_mask(a, bg=None, edges=False):
    """Bool (H, W): pixels that differ from the background by more than INK_DELTA; the image's edges
    (a margin of 1 % of the side, >= 2 px) count as no ink unless edges=True."""
    bg = background(a) if bg is None else bg
    ink = np.abs(a.astype(np.int16) - np.asarray(bg, dtype=np.int16)).max(axis=2) > INK_DELTA
    if not edges:
        m = max(2, round(0.01 * min(a.shape[:2])))
        ink[:m], ink[-m:], ink[:, :m], ink[:, -m:] = False, False, False, False
    return ink


def content_mask(a):
    """(mask, why_blank) for an (H, W, 3) uint8 picture: what is drawn, or an empty mask and the reason.

    Ink is what differs from the paper (background()), away from the edges. When there is none, the
    image is one colour inside: blank if that colour is white-ish paper (whatever frame surrounds it)
    or if the edges are that colour too (a plain fill); a shape of another colour filling the picture
    to an outline of its own (Asymptote and TikZ crop to the drawing) is content: all of it."""
    bg = background(a)
    ink = ink_mask(a, bg)
    n = a.shape[0] * a.shape[1]
    ok, need = enough_ink(int(ink.sum()), n)
    if ok:
        return ink, None
    paper_is_white = bool((np.asarray(bg) >= 255 - INK_DELTA).all())
    outline = ink_mask(a, bg, edges=True)
    if paper_is_white or not enough_ink(int(outline.sum()), n)[0]:
        return ink, f"only {int(ink.sum())} ink pixels (need {need:.0f})"
    return np.ones(a.shape[:2], dtype=bool), None


def blank_reason(path):
    """None when the image shows something; otherwise a short human-readable reason. UnusableImage
    (from open_rgb) when it cannot be decoded at all: not a blank picture, no picture."""
    img = open_rgb(path)
    if img is None:
        return "fully transparent"
    w, h = img.size
    if min(w, h) < 8:
        return f"tiny image ({w}x{h})"
    img.thumbnail((512, 512), Image.BOX)
    _, why = content_mask(np.asarray(img))
    return f"{why} on a {w}x{h} image" if why else None


def is_blank(path):
    return blank_reason(path) is not None
