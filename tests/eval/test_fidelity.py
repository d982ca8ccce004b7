"""The offline fidelity score (vc2/eval/fidelity.py) on pictures drawn here at random, its CLI, and the
shipped graded pair set (bench/fidelity_pairs): what must score ~1, what must fall, what must be 0.

Run: python -m pytest tests/eval/test_fidelity.py      # ~8 s
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vc2.eval import fidelity, images

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "bench" / "fidelity_pairs" / "pairs.jsonl"


def chart(rng, w=480, h=320, values=None, colour=None, kind="bar"):
    """A bar or line chart with axes and a title bar, drawn with PIL (random data unless given)."""
    values = rng.uniform(0.2, 1.0, 6) if values is None else values
    colour = tuple(int(c) for c in rng.integers(0, 200, 3)) if colour is None else colour
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = int(.12 * w), int(.15 * h), int(.95 * w), int(.88 * h)
    d.line([(x0, y1), (x1, y1)], fill="black", width=2)
    d.line([(x0, y0), (x0, y1)], fill="black", width=2)
    d.rectangle([int(.35 * w), int(.03 * h), int(.65 * w), int(.08 * h)], fill=(40, 40, 40))  # a "title"
    step = (x1 - x0) / len(values)
    pts = []
    for i, v in enumerate(values):
        top = y1 - v * (y1 - y0)
        if kind == "bar":
            d.rectangle([x0 + i * step + step * .15, top, x0 + (i + 1) * step - step * .15, y1 - 1], fill=colour)
        pts.append((x0 + (i + .5) * step, top))
    if kind == "line":
        d.line(pts, fill=colour, width=3)
    return img, values, colour


def save(img, path):
    img.save(path)
    return path


def test_invariances_and_falls_on_random_charts(tmp_path):
    rng = np.random.default_rng()
    for trial in range(3):
        img, values, colour = chart(rng)
        ref = save(img, tmp_path / "ref.png")
        same = fidelity.score(ref, save(img.copy(), tmp_path / "same.png"))
        assert same["score"] == pytest.approx(1.0, abs=1e-6), same
        bigger = fidelity.score(ref, save(chart(rng, 720, 480, values, colour)[0], tmp_path / "big.png"))["score"]
        small = img.resize((240, 160), Image.LANCZOS)
        smaller = fidelity.score(ref, save(small, tmp_path / "small.png"))["score"]
        margin = Image.new("RGB", (img.width + 200, img.height + 120), "white")
        margin.paste(img, (100, 60))
        with_margin = fidelity.score(ref, save(margin, tmp_path / "margin.png"))["score"]
        rgba = np.array(img.convert("RGBA"))
        rgba[(rgba[..., :3] == 255).all(axis=2)] = 0  # the white background made transparent
        transparent = fidelity.score(ref, save(Image.fromarray(rgba, "RGBA"), tmp_path / "transp.png"))["score"]
        other_colour = fidelity.score(ref, save(chart(rng, values=values, colour=(255 - colour[0], colour[2], 90))[0],
                                                tmp_path / "colour.png"))["score"]
        other_type = fidelity.score(ref, save(chart(rng, values=values, colour=colour, kind="line")[0],
                                              tmp_path / "line.png"))["score"]
        noise = rng.integers(0, 256, (320, 480, 3)).astype(np.uint8)
        unrelated = fidelity.score(ref, save(Image.fromarray(noise), tmp_path / "noise.png"))["score"]
        blank = fidelity.score(ref, save(Image.new("RGB", (480, 320), "white"), tmp_path / "blank.png"))
        # what does not change the picture keeps the score near 1
        assert min(with_margin, transparent) > 0.97, (with_margin, transparent)
        assert min(bigger, smaller) > 0.85, (bigger, smaller)
        # what does change it lowers it, in this order
        assert min(with_margin, transparent, bigger, smaller) > other_colour > other_type > unrelated > 0, \
            (trial, bigger, smaller, other_colour, other_type, unrelated)
        assert blank["score"] == 0.0 and blank["blank"].startswith("candidate") and blank["phash"] is None


def test_blank_rule_is_the_blank_checks(tmp_path):
    """Whatever images.blank_reason calls blank scores 0, on either side; a sparse real drawing does not."""
    rng = np.random.default_rng()
    ref = save(chart(rng)[0], tmp_path / "ref.png")
    speck = np.full((300, 300, 3), 255, np.uint8)
    speck[5:8, 5:8] = 0
    base = rng.integers(0, 16, 3) * 16
    bucket = (base + rng.integers(0, 16, (200, 200, 3))).astype(np.uint8)  # noise inside one 16-level bucket
    for name, arr in (("speck", speck), ("bucket", bucket)):
        p = save(Image.fromarray(arr), tmp_path / f"{name}.png")
        assert images.blank_reason(p)
        assert fidelity.score(ref, p)["score"] == 0.0
        assert fidelity.score(p, ref)["blank"].startswith("reference")
    line = np.full((400, 600, 3), 255, np.uint8)
    line[200, 50:550] = (30, 60, 200)
    p = save(Image.fromarray(line), tmp_path / "line.png")
    assert images.blank_reason(p) is None and fidelity.score(ref, p)["score"] > 0


def test_cli_single_pair_and_pairs_file(tmp_path, capsys):
    rng = np.random.default_rng()
    a = save(chart(rng)[0], tmp_path / "a.png")
    b = save(chart(rng)[0], tmp_path / "b.png")
    r = subprocess.run([sys.executable, "-m", "vc2.eval.fidelity", str(a), str(b)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    expect = fidelity.score(a, b)
    assert r.stdout.splitlines()[0] == f"score {expect['score']:.4f}" and "edges" in r.stdout
    pairs = tmp_path / "sub" / "pairs.jsonl"
    pairs.parent.mkdir()
    pairs.write_text(json.dumps({"ref": "../a.png", "cand": "../b.png", "tag": 7}) + "\n\n"
                     + json.dumps({"ref": "../a.png", "cand": "../a.png"}) + "\n")
    assert fidelity.main(["--pairs", str(pairs)]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [row["score"] for row in rows] == [expect["score"], 1.0] and rows[0]["tag"] == 7
    pairs.write_text(json.dumps({"ref": "../a.png"}) + "\n")
    for argv, message in ((["--pairs", str(pairs)], "pairs.jsonl:1: field 'cand'"),
                          ([str(a), str(tmp_path / "missing.png")], "missing.png: no such file")):
        with pytest.raises(SystemExit) as e:
            fidelity.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err


def test_shipped_pair_set_is_complete_and_ranks_its_first_reference():
    rows = [json.loads(l) for l in PAIRS.read_text().splitlines()]
    langs = {r["language"] for r in rows}
    assert langs == {"python", "vegalite", "lilypond", "mermaid", "svg", "latex", "asymptote", "html"}
    for lang in langs:
        assert {r["class"] for r in rows if r["language"] == lang} == {0, 1, 2, 3, 4, 5}, lang
    for r in rows:
        assert (PAIRS.parent / r["ref"]).is_file() and (PAIRS.parent / r["cand"]).is_file(), r
    size = sum(p.stat().st_size for p in PAIRS.parent.iterdir())
    assert size < 2_000_000, f"the pair set should stay small ({size} bytes)"
    # the first reference of every language: same picture > style/data > type/unrelated > blank = 0
    # (pair means per group; single boundaries can invert, bench/RESULTS.md has those figures)
    first = {}
    for r in rows:
        first.setdefault(r["language"], r["ref"])
    for lang, ref in first.items():
        s = {r["cand"]: (r["class"], fidelity.score(PAIRS.parent / r["ref"], PAIRS.parent / r["cand"])["score"])
             for r in rows if r["ref"] == ref}
        group = lambda classes: np.mean([v for c, v in s.values() if c in classes])  # noqa: E731
        assert group({5}) > group({4, 3}) > group({2, 1}) > group({0}) == 0.0, (lang, ref, s)
