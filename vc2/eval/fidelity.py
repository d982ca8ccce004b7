"""Offline visual fidelity: how close a rendered image is to the task's reference image, in [0, 1].

    python -m vc2.eval.fidelity REF.png CAND.png          # the score and its three parts
    python -m vc2.eval.fidelity --pairs pairs.jsonl       # rows {"ref", "cand", ...} -> the row + "score"

    from vc2.eval import fidelity
    fidelity.score("ref.png", "cand.png")   # {"score": 0.91, "phash": .., "edges": .., "colour": .., "blank": None}

No learned weights, no network, deterministic. It is meant to sit next to the execution pass rate, not
to replace a judge: it answers "does this look like the reference picture?", not "is the chart right?".

1. Normalise each image, so that what does not change the picture does not change the score (size,
   DPI, margins, transparent vs white background):
   alpha onto white; background = the commonest colour of the outer band, content = a channel difference
   > 24/255 from it (the blank check's rule, shared: vc2/eval/images.py); a blank image (that same
   check) scores 0 whatever the other side is; crop to the content box, paint non-content pixels
   white, pad by 2 %, stretch to 256x256 ignoring the aspect ratio (stretching ranked pairs better
   than letterboxing in the design study: a wider render of the same chart stays the same chart).
2. Compare three ways and mix 0.4 / 0.4 / 0.2:
   - phash: 1 - Hamming distance / 256 of the 16x16 DCT perceptual hashes (ImageHash): the layout;
   - edges: F-score of the Canny edge maps (scikit-image) where an edge pixel counts as matched when
     the other image has an edge within 4 px (distance transform): the marks, text and axes;
   - colour: histogram intersection of 6x6x6 RGB histograms over non-near-white pixels: the palette
     (pHash and edges are colour-blind).
   The weights come from a design study on 154 graded pairs in 5 languages; bench/bench_fidelity.py
   measures them on our own graded set over all 8 languages (results in bench/RESULTS.md).

Limits, measured or known: a size change that reflows a layout (LaTeX fonts vs plot size, LilyPond
line breaks) scores like a style change, so candidates should be rendered with the reference's
settings (our executors render both the same way); colour-only changes move the score little; a
dark-theme image against a light reference is not polarity-normalised; a lone dot is stretched to
fill the canvas; unrelated charts still score ~0.3-0.5 (shared axes, fonts and white space), so read
the score as a ranking, with >= 0.8 as "looks like the reference".
"""
import argparse
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vc2.eval import images

SIDE = 256            # normalised canvas
PAD_FRAC = 0.02       # white pad around the content box, per side
EDGE_TOL_PX = 4       # an edge pixel matches when the other image has an edge this close
CANNY_SIGMA = 1.0
HIST_BINS = 6         # per channel
NEAR_WHITE = 0.9      # colour histogram: pixels whose darkest channel is >= 90 % white are paper
WEIGHTS = {"phash": 0.4, "edges": 0.4, "colour": 0.2}


def _libs():
    """scikit-image, scipy and ImageHash, with an install hint instead of a bare ImportError."""
    try:
        import imagehash
        from scipy import ndimage
        from skimage import feature
    except ImportError as e:
        raise ImportError(f"vc2.eval.fidelity needs scikit-image and ImageHash ({e}); "
                          "install them with `pip install -e \".[eval]\"`") from None
    return imagehash, ndimage, feature


@dataclass
class Prepared:
    """One normalised image and the features the comparison needs (computed once; references are cached)."""
    blank: str | None                 # why it scores 0 (images.blank_reason), else None
    rgb: np.ndarray | None = None     # (SIDE, SIDE, 3) uint8, non-content painted white
    phash: object = None              # imagehash.ImageHash, 16x16 bits
    edges: np.ndarray | None = None   # (SIDE, SIDE) bool
    dist: np.ndarray | None = None    # (SIDE, SIDE) float: distance to the nearest edge pixel
    hist: np.ndarray | None = None    # (HIST_BINS**3,) float, sums to 1 (or all 0: no coloured pixel)


def prepare(path) -> Prepared:
    """Normalise an image file and compute its features; a blank or unreadable image gives Prepared(blank=...)."""
    imagehash, ndimage, feature = _libs()
    try:
        why = images.blank_reason(path)
    except images.UnusableImage as e:
        return Prepared(blank=f"unreadable image ({e})")
    if why:
        return Prepared(blank=why)
    a = np.asarray(images.load_rgb(path), dtype=np.uint8).copy()  # (H, W, 3)
    mask, _ = images.content_mask(a)                                 # (H, W) bool
    ys, xs = np.nonzero(mask)
    if not len(ys):  # ink in the thumbnail the blank check saw, none at full size (a faint speck)
        return Prepared(blank="no ink at full size")
    a[~mask] = 255
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = a[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    ph, pw = int(round(PAD_FRAC * h)) + 1, int(round(PAD_FRAC * w)) + 1
    crop = np.pad(crop, ((ph, ph), (pw, pw), (0, 0)), constant_values=255)
    rgb = np.asarray(Image.fromarray(crop).resize((SIDE, SIDE), Image.LANCZOS))  # (SIDE, SIDE, 3)
    gray = rgb.astype(np.float32).mean(axis=2)                                     # (SIDE, SIDE), 0..255
    edges = feature.canny(gray / 255.0, sigma=CANNY_SIGMA)
    dist = ndimage.distance_transform_edt(~edges)
    ink = rgb.min(axis=2) < NEAR_WHITE * 255
    q = (rgb[ink].astype(np.int32) * HIST_BINS) // 256                            # (N, 3) bins
    hist = np.bincount((q[:, 0] * HIST_BINS + q[:, 1]) * HIST_BINS + q[:, 2], minlength=HIST_BINS ** 3)
    hist = hist / hist.sum() if hist.sum() else hist.astype(np.float64)
    return Prepared(blank=None, rgb=rgb, phash=imagehash.phash(Image.fromarray(gray.astype(np.uint8)), hash_size=16),
                    edges=edges, dist=dist, hist=hist)


@functools.lru_cache(maxsize=256)
def _prepare_cached(path, mtime_ns, size):
    return prepare(path)


def prepare_cached(path) -> Prepared:
    """prepare() memoised by (path, mtime, size): a reference is normalised once per run."""
    st = os.stat(path)
    return _prepare_cached(str(path), st.st_mtime_ns, st.st_size)


def compare(ref: Prepared, cand: Prepared) -> dict:
    """The score of `cand` against `ref` and its parts (parts are None when a side is blank)."""
    if ref.blank or cand.blank:
        return {"score": 0.0, "phash": None, "edges": None, "colour": None,
                "blank": "candidate: " + cand.blank if cand.blank else "reference: " + ref.blank}
    phash = 1.0 - (ref.phash - cand.phash) / float(ref.phash.hash.size)
    n_ref, n_cand = int(ref.edges.sum()), int(cand.edges.sum())
    if n_ref == 0 or n_cand == 0:
        edges = float(n_ref == n_cand)
    else:
        precision = float((ref.dist[cand.edges] <= EDGE_TOL_PX).mean())  # candidate edges near a reference edge
        recall = float((cand.dist[ref.edges] <= EDGE_TOL_PX).mean())     # reference edges the candidate has
        edges = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if ref.hist.sum() == 0 or cand.hist.sum() == 0:
        colour = float(ref.hist.sum() == cand.hist.sum())  # both drawn in near-white only: nothing to compare
    else:
        colour = float(np.minimum(ref.hist, cand.hist).sum())
    s = WEIGHTS["phash"] * phash + WEIGHTS["edges"] * edges + WEIGHTS["colour"] * colour
    return {"score": round(float(s), 4), "phash": round(float(phash), 4), "edges": round(edges, 4),
            "colour": round(colour, 4), "blank": None}


def score(ref_path, cand_path) -> dict:
    """compare(prepare(ref), prepare(cand)), with the reference's preparation cached."""
    return compare(prepare_cached(ref_path), prepare(cand_path))


# ---------------------------------------------------------------------------------------------------
# CLI

def score_pairs(pairs_path):
    """Yield each row of a pairs file with "score" (and its parts) added; paths are relative to the file."""
    pairs_path = Path(pairs_path)
    base = pairs_path.parent
    with open(pairs_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{pairs_path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{pairs_path}:{n}: a row must be an object with 'ref' and 'cand'")
            for field in ("ref", "cand"):
                if not isinstance(row.get(field), str):
                    raise ValueError(f"{pairs_path}:{n}: field '{field}' must be an image path")
                if not (base / row[field]).is_file():
                    raise ValueError(f"{pairs_path}:{n}: field '{field}': no such file {base / row[field]}")
            parts = score(base / row["ref"], base / row["cand"])
            yield {**row, **parts}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vc2.eval.fidelity", description=__doc__.split("\n\n")[0],
                                epilog="Prints the score first, then its parts (phash, edges, colour; 'blank' names "
                                       "the side that scored 0).")
    p.add_argument("ref", nargs="?", help="reference image (PNG or anything Pillow reads)")
    p.add_argument("cand", nargs="?", help="candidate image")
    p.add_argument("--pairs", metavar="FILE.jsonl",
                   help="score every row {'ref': path, 'cand': path, ...} (paths relative to the file); prints each "
                        "row back as one JSON line with 'score' and its parts added")
    args = p.parse_args(argv)
    try:
        if args.pairs:
            if args.ref or args.cand:
                p.error("give either REF CAND or --pairs FILE, not both")
            for row in score_pairs(args.pairs):
                print(json.dumps(row), flush=True)
            return 0
        if not (args.ref and args.cand):
            p.error("give REF and CAND images, or --pairs FILE.jsonl")
        for path in (args.ref, args.cand):
            if not Path(path).is_file():
                p.error(f"{path}: no such file")
        parts = score(args.ref, args.cand)
    except ValueError as e:
        p.error(str(e))
    print(f"score {parts['score']:.4f}")
    for k in ("phash", "edges", "colour"):
        print(f"  {k:7s} {'-' if parts[k] is None else format(parts[k], '.4f')}  (weight {WEIGHTS[k]})")
    if parts["blank"]:
        print(f"  blank: {parts['blank']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
