"""Task loading (JSONL, parquet), error messages for bad files, and the bundled benchmark sample.

Run: python -m pytest tests/eval/test_tasks.py
"""
import base64
import io
import json
from collections import Counter

import pytest
from PIL import Image

from vc2.eval import languages, tasks as T


def row(i=1, **over):
    r = {"id": f"svg_{i}", "task__plot_description": "A red circle.", "task__plot_style": "Flat.", "data": "",
         "used_lib": ["svg"], "vis_cate": "Diagramming", "subtype": "shape", "image": None}
    r.update(over)
    return r


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def png_bytes(color=(200, 30, 30)):
    img = Image.new("RGB", (40, 30), "white")
    img.paste(color, (10, 10, 30, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_canonical_language_aliases():
    assert languages.canonical("Vega-Lite") == "vegalite"
    assert languages.canonical("vega_lite") == "vegalite"
    assert languages.canonical("asy") == "asymptote"
    assert languages.canonical("LaTeX") == "latex"
    assert languages.canonical("LilyPond") == "lilypond"
    assert languages.canonical("C++") == "cpp" and languages.canonical("JS") == "javascript"
    assert [languages.canonical(x) for x in languages.LANGUAGES] == list(languages.LANGUAGES)
    with pytest.raises(ValueError, match="unknown language 'cobol'"):
        languages.canonical("cobol")


def test_load_jsonl_fields_and_order(tmp_path):
    (tmp_path / "img.png").write_bytes(png_bytes())
    f = write_jsonl(tmp_path / "svg.jsonl", [
        row(10), "", row(2, data="  ", used_lib="svg", image="img.png", reference_code="<svg/>")])
    got = T.load_tasks(f)
    assert [t.id for t in got] == ["svg_2", "svg_10"]  # natural order, blank lines skipped
    t = got[0]
    assert (t.language, t.description, t.style, t.vis_cate, t.subtype) == ("svg", "A red circle.", "Flat.",
                                                                            "Diagramming", "shape")
    assert t.data is None and t.used_lib == ["svg"] and t.reference_code == "<svg/>"
    assert t.reference_image == tmp_path / "img.png" and got[1].reference_image is None


def test_language_from_folder_field_or_id(tmp_path):
    (tmp_path / "Vega-Lite").mkdir()
    write_jsonl(tmp_path / "Vega-Lite" / "test-00000-of-00001.jsonl", [row(1, id="vegalite_1")])
    write_jsonl(tmp_path / "misc.jsonl", [row(1, id="x1", language="asy"), row(2, id="latex_7")])
    got = {(t.language, t.id) for t in T.load_tasks(tmp_path)}
    assert got == {("vegalite", "vegalite_1"), ("asymptote", "x1"), ("latex", "latex_7")}
    assert [t.id for t in T.load_tasks(tmp_path, languages=["tex"])] == ["latex_7"]


def test_csv_data_only_for_csv_languages(tmp_path):
    f = write_jsonl(tmp_path / "asymptote.jsonl", [row(1, id="asymptote_1", data="real[] x = {1, 2};")])
    t = T.load_tasks(f)[0]
    assert t.data == "real[] x = {1, 2};" and t.data_csv is None
    f = write_jsonl(tmp_path / "python.jsonl", [row(1, id="python_1", data="a,b\n1,2\n")])
    assert T.load_tasks(f)[0].data_csv == "a,b\n1,2\n"


@pytest.mark.parametrize("bad, message", [
    ('{"id": "svg_1", ', r"svg.jsonl:3: not valid JSON"),
    (json.dumps({k: v for k, v in row().items() if k != "vis_cate"}), r"svg.jsonl:3: missing field 'vis_cate'"),
    (json.dumps(row(task__plot_description="  ")), r"svg.jsonl:3: field 'task__plot_description' must be a non-empty"),
    (json.dumps(row(used_lib=[1, 2])), r"svg.jsonl:3: field 'used_lib' must be a list of strings"),
    (json.dumps(row(id="a b")), r"svg.jsonl:3: field 'id' must be"),
    (json.dumps(row(image=42)), r"svg.jsonl:3: field 'image' must be"),
    (json.dumps(row(reference_code=["x"])), r"svg.jsonl:3: field 'reference_code'"),
    (json.dumps([1, 2]), r"svg.jsonl:3: a task row must be an object"),
    (json.dumps(row(1)), r"task id 'svg_1' \(svg\) already defined"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, bad, message):
    f = tmp_path / "svg.jsonl"
    f.write_text(json.dumps(row(1)) + "\n\n" + bad + "\n")  # the bad row is on line 3
    with pytest.raises(ValueError, match=message):
        T.load_tasks(f)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="no such task file"):
        T.load_tasks(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no .jsonl or .parquet task files"):
        T.load_tasks(tmp_path)
    (tmp_path / "tasks.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="must be .jsonl or .parquet"):
        T.load_tasks(tmp_path / "tasks.csv")
    write_jsonl(tmp_path / "stuff.jsonl", [row(1, id="thing")])
    with pytest.raises(ValueError, match=r"stuff.jsonl:1: cannot tell the language"):
        T.load_tasks(tmp_path / "stuff.jsonl")
    with pytest.raises(ValueError, match="unknown language"):
        T.load_tasks(languages=["klingon"])


def test_image_bytes_in_json_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = png_bytes()
    f = write_jsonl(tmp_path / "svg.jsonl", [row(1, image={"bytes": base64.b64encode(data).decode(), "path": None})])
    t = T.load_tasks(f)[0]
    assert t.reference_image.read_bytes() == data and str(tmp_path / "cache") in str(t.reference_image)
    write_jsonl(f, [row(1, image={"bytes": "not base64!!", "path": None})])
    with pytest.raises(ValueError, match=r"svg.jsonl:1: field 'image' has 'bytes' that are not base64"):
        T.load_tasks(f)


def test_parquet_in_hf_layout(tmp_path, monkeypatch):
    # pyarrow is the optional `data` extra; without it this test is skipped and says so (-ra).
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = png_bytes()
    rows = [dict(row(i, id=f"vegalite_{i}"), image={"bytes": data, "path": f"{i}.png"}) for i in (3, 1)]
    rows[0]["data"] = "x,y\n1,2\n"
    (tmp_path / "Vega-Lite").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "Vega-Lite" / "test-00000-of-00001.parquet")
    got = T.load_tasks(tmp_path)
    assert [(t.language, t.id) for t in got] == [("vegalite", "vegalite_1"), ("vegalite", "vegalite_3")]
    assert got[1].data == "x,y\n1,2\n" and got[0].data is None and got[0].used_lib == ["svg"]
    assert got[0].reference_image.read_bytes() == data
    bad = [dict(rows[0]), dict(rows[1], task__plot_description=None)]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "python.parquet")
    with pytest.raises(ValueError, match=r"python.parquet: row 2: field 'task__plot_description' must be"):
        T.load_tasks(tmp_path / "python.parquet")
    no_column = [{k: v for k, v in r.items() if k != "subtype"} for r in rows]
    pq.write_table(pa.Table.from_pylist(no_column), tmp_path / "python.parquet")
    with pytest.raises(ValueError, match=r"python.parquet: row 1: missing field 'subtype'"):
        T.load_tasks(tmp_path / "python.parquet")


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "svg.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"svg.parquet: reading parquet needs pyarrow"):
        T.load_tasks(tmp_path / "svg.parquet")


def test_shrink_png_is_small_and_white_backed(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (900, 1200, 4), dtype=np.uint8), "RGBA")
    noisy.save(tmp_path / "big.png")
    size, nbytes = T.shrink_png(tmp_path / "big.png", tmp_path / "small.png", max_side=480, max_bytes=60_000)
    assert max(size) <= 480 and nbytes <= 60_000 or max(size) <= 160
    assert (tmp_path / "small.png").stat().st_size == nbytes
    clear = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    T.shrink_png(tmp_path / "clear.png", tmp_path / "clear_small.png")
    assert Image.open(tmp_path / "clear_small.png").convert("RGB").getpixel((5, 5)) == (255, 255, 255)


# ---------------------------------------------------------------------------------------------------
# the bundled sample

def ink_fraction(path):
    """Share of pixels that differ clearly from the most common border colour."""
    import numpy as np
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    colors, counts = np.unique(border, axis=0, return_counts=True)
    bg = colors[counts.argmax()]
    return float((np.abs(a - bg).max(axis=2) > 24).mean())


@pytest.fixture(scope="module")
def bundled():
    return T.load_tasks()


def test_bundled_sample_counts_and_categories(bundled):
    by_lang = Counter(t.language for t in bundled)
    assert set(by_lang) == set(languages.BENCHMARK)  # the bundled sample is the benchmark's eight
    for lang in languages.BENCHMARK:
        mine = [t for t in bundled if t.language == lang]
        assert len(mine) >= 12, (lang, len(mine))
        cats = {t.vis_cate for t in mine}
        assert cats <= set(T.CATEGORIES), (lang, cats - set(T.CATEGORIES))
        if lang == "lilypond":  # the benchmark's LilyPond tasks are all Music/sheet-music
            assert cats == {"Music"} and len({t.subtype for t in mine}) == 1
        else:
            assert len(cats) >= 3, (lang, cats)
    assert len({t.vis_cate for t in bundled}) >= 10


def test_bundled_tasks_are_complete(bundled):
    for t in bundled:
        where = f"{t.language}/{t.id}"
        assert t.id.startswith(t.language + "_"), where
        assert len(t.description) > 40 and t.style.strip() and t.used_lib and t.subtype, where
        assert t.reference_code and t.reference_code.strip(), where
        lang = languages.get(t.language)
        if lang.data is None:  # lilypond, mermaid, svg
            assert t.data is None, where
        if t.data_csv:
            assert len(t.data_csv.splitlines()) >= 3, where
        if t.data_csv:  # the reference really reads its data instead of copying it
            assert "data.csv" in t.reference_code, where


def test_bundled_reference_images_are_small_nonblank_pngs(bundled):
    total = 0
    for t in bundled:
        p = t.reference_image
        assert p is not None and p.is_file(), f"{t.language}/{t.id}: missing image {p}"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
        assert p.stat().st_size < 60_000, (p, p.stat().st_size)
        total += p.stat().st_size
        img = Image.open(p)
        assert min(img.size) >= 16 and max(img.size) <= 480, (p, img.size)
        assert ink_fraction(p) > 0.003, f"{p} looks blank"
    assert total < 4_000_000


def test_blank_check_catches_blank():  # the check above can fail
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        Image.new("RGB", (100, 100), "white").save(f"{d}/w.png")
        assert ink_fraction(f"{d}/w.png") == 0
