"""VisPlotBench tasks: the published schema, loaders (JSONL, parquet) and our bundled benchmark sample.

    python -m vc2.eval.tasks                                  # summary of the bundled sample
    python -m vc2.eval.tasks --render-references [--lang svg]  # re-run every reference solution, save its PNG

A task file holds rows in VisPlotBench's published schema: `id`, `task__plot_description`,
`task__plot_style`, `data` (as the language record's `data` says: CSV text for python, vegalite,
latex and html, Asymptote data code for asymptote, empty otherwise), `used_lib` (list of str),
`vis_cate`, `subtype`, `image` (the reference render).
Our bundled rows add `reference_code`, the solution that produced `image` (the benchmark ships no code).
A task source is a .jsonl or .parquet file, or a directory of them (one per language, or the Hugging
Face layout `<Language>/test-00000-of-00001.parquet`); the language comes from the file or folder name,
else from a `language` column, else from the id prefix (`python_12`). Any language of vc2.eval.languages
can have tasks; the bundled sample covers the benchmark's eight.

The bundled sample lives in vc2/eval/assets/tasks/: `<language>.jsonl` + `images/<language>/<id>.png`.
It is written by us (descriptions, data, solutions), is disjoint from the training sample, and is the
evaluator's default --tasks. Its images are real renders of the reference solutions through
vc2.eval.executors, downscaled to keep the repo light; `--render-references` regenerates them.
"""
import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vc2.eval.languages import LANGUAGES, canonical

BUNDLED_DIR = Path(__file__).parent / "assets" / "tasks"
# The benchmark's 13 visual categories (paper Fig. 4).
CATEGORIES = ("Diagramming", "Lines", "Bars", "Scatter & Relation", "Radial & Polar", "Distribution", "Music",
              "Matrix & Heatmaps", "Areas", "3D", "Hierarchies", "Networks & Flows", "Maps")


@dataclass
class Task:
    language: str                 # a name of vc2.eval.languages.LANGUAGES
    id: str                       # unique within a language, e.g. "python_3"
    description: str              # task__plot_description: what to draw
    style: str                    # task__plot_style: how it should look
    data: str | None = None       # CSV text or code, as the language's record says (`data`), else None
    used_lib: list = field(default_factory=list)
    vis_cate: str = ""
    subtype: str = ""
    reference_code: str | None = None   # our extra field: a solution that renders `reference_image`
    reference_image: Path | None = None

    @property
    def data_csv(self):
        """The CSV the executor should place next to the code (None for languages without CSV data)."""
        return self.data if LANGUAGES[self.language].data == "csv" else None


# ---------------------------------------------------------------------------------------------------
# loading

_REQUIRED = ("id", "task__plot_description", "task__plot_style", "data", "used_lib", "vis_cate", "subtype")


def _image_cache_dir(source: Path):
    """Where embedded image bytes (parquet, or JSON with base64) are written, one folder per source file."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vc2" / "task-images"
    return root / hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]


def _row_to_task(row, language, where, source: Path):
    """One schema row -> Task; `where` ("file:line") is prefixed to every error."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a task row must be an object, got {type(row).__name__}")
    for key in _REQUIRED:
        if key not in row:
            raise ValueError(f"{where}: missing field '{key}'")

    def text(key, allow_empty=True):
        v = row[key]
        if v is None and allow_empty:
            return ""
        if not isinstance(v, str) or (not allow_empty and not v.strip()):
            raise ValueError(f"{where}: field '{key}' must be a {'non-empty ' if not allow_empty else ''}string, "
                             f"got {v!r:.60}")
        return v

    task_id = row["id"]
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        task_id = f"{language}_{task_id}"
    if not isinstance(task_id, str) or not re.fullmatch(r"[\w.\-]+", task_id):
        raise ValueError(f"{where}: field 'id' must be a string of letters, digits, '_', '-', '.', got {task_id!r}")
    used_lib = row["used_lib"]
    if used_lib is None:
        used_lib = []
    if isinstance(used_lib, str):  # a single library written as a plain string
        used_lib = [used_lib]
    if isinstance(used_lib, tuple):
        used_lib = list(used_lib)
    if not isinstance(used_lib, list) or not all(isinstance(x, str) for x in used_lib):
        raise ValueError(f"{where}: field 'used_lib' must be a list of strings, got {row['used_lib']!r:.60}")
    reference_code = row.get("reference_code")
    if reference_code is not None and not isinstance(reference_code, str):
        raise ValueError(f"{where}: field 'reference_code' must be a string or null")

    image = row.get("image")
    if image is None or image == "":
        image_path = None
    elif isinstance(image, str):  # our JSONL: a path relative to the task file
        image_path = (source.parent / image) if not os.path.isabs(image) else Path(image)
    elif isinstance(image, dict) and (image.get("bytes") or image.get("path")):
        # Hugging Face Image feature: {"bytes": PNG bytes (base64 text in JSON), "path": original name}
        data = image.get("bytes")
        if data is None:
            image_path = source.parent / image["path"]
        else:
            if isinstance(data, str):
                try:
                    data = base64.b64decode(data, validate=True)
                except ValueError:
                    raise ValueError(f"{where}: field 'image' has 'bytes' that are not base64") from None
            image_path = _image_cache_dir(source) / f"{task_id}.png"
            if not image_path.is_file() or image_path.stat().st_size != len(data):
                image_path.parent.mkdir(parents=True, exist_ok=True)
                image_path.write_bytes(data)
    else:
        raise ValueError(f"{where}: field 'image' must be a path, an {{'bytes', 'path'}} object or null")

    data = text("data")
    return Task(language=language, id=task_id, description=text("task__plot_description", allow_empty=False),
                style=text("task__plot_style"), data=data if data.strip() else None, used_lib=used_lib,
                vis_cate=text("vis_cate"), subtype=text("subtype"), reference_code=reference_code,
                reference_image=image_path)


def _language_of(path: Path, row):
    """File stem ('vegalite.jsonl'), else folder ('Vega-Lite/test-0.parquet'), else the row itself."""
    for name in (path.stem, path.parent.name):
        lang = canonical(name, default=None)
        if lang:
            return lang
    if isinstance(row, dict):
        if row.get("language"):
            return canonical(row["language"], default=None)
        if isinstance(row.get("id"), str) and "_" in row["id"]:
            return canonical(row["id"].rsplit("_", 1)[0], default=None)
    return None


def _read_rows(path: Path):
    """Yield (line_or_row_number, row) from a .jsonl or .parquet file."""
    if path.suffix == ".jsonl":
        from vc2.data import read_jsonl
        for n, row in read_jsonl(path):
            if isinstance(row, json.JSONDecodeError):
                raise ValueError(f"{path}:{n}: not valid JSON ({row.msg} at column {row.colno})")
            yield n, row
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow: pip install -e \".[data]\" "
                             "(or convert the file to JSONL)") from None
        for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield n, row
    else:
        raise ValueError(f"{path}: task files must be .jsonl or .parquet")


def load_task_file(path, language=None):
    """All tasks of one .jsonl/.parquet file; rows are numbered from 1 in errors (the line for JSONL)."""
    path = Path(path)
    tasks = []
    for n, row in _read_rows(path):
        where = f"{path}:{n}" if path.suffix == ".jsonl" else f"{path}: row {n}"
        lang = canonical(language) if language else _language_of(path, row)
        if lang is None:
            raise ValueError(f"{where}: cannot tell the language: name the file after it (e.g. svg.jsonl) "
                             "or add a 'language' field")
        tasks.append(_row_to_task(row, lang, where, path))
    return tasks


def _natural_key(task):
    return list(LANGUAGES).index(task.language), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", task.id)]


def load_tasks(path=None, languages=None):
    """Tasks from a file or a directory (default: the bundled sample), optionally only some languages.

    Returns tasks sorted by language (the registry's order) then id; ValueError on bad files or duplicate ids.
    """
    path = BUNDLED_DIR if path is None else Path(path)
    wanted = None if languages is None else {canonical(lang) for lang in languages}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file())
        if not files:
            raise ValueError(f"{path}: no .jsonl or .parquet task files in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"{path}: no such task file or directory")
    tasks, seen = [], {}
    for f in files:
        for t in load_task_file(f):
            if wanted is not None and t.language not in wanted:
                continue
            key = (t.language, t.id)
            if key in seen:
                raise ValueError(f"{f}: task id '{t.id}' ({t.language}) already defined in {seen[key]}")
            seen[key] = f
            tasks.append(t)
    return sorted(tasks, key=_natural_key)


# ---------------------------------------------------------------------------------------------------
# reference images of the bundled sample

def shrink_png(src, dst, max_side=480, max_bytes=60_000):
    """Save a small copy of a render: white background, at most max_side px, a palette PNG < max_bytes."""
    from PIL import Image
    img = Image.open(src)
    img.load()
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    side = max_side
    while True:
        small = img.copy()
        small.thumbnail((side, side), Image.LANCZOS)
        # a 256-colour palette without dithering keeps flat chart areas flat (PNG compresses them well);
        # the octree keeps rare colours (a colour bar's ends) that median cut merges away
        small = small.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or side <= 160:
            break
        side = int(side * 0.8)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(buf.getvalue())
    return small.size, buf.tell()


def render_references(languages=None, sandbox="auto", timeout_s=None, directory=BUNDLED_DIR):
    """Run every bundled reference solution through the executors; save its shrunk PNG as the task image.

    Returns {(language, id): status}; only passing renders are written, so a failure keeps the old image.
    """
    import tempfile
    from vc2.eval import executors  # imported here: loading tasks must not need the renderers

    statuses = {}
    for task in load_tasks(directory, languages):
        assert task.reference_code, f"bundled task {task.language}/{task.id} has no reference_code"
        with tempfile.TemporaryDirectory(prefix="vc2-ref-") as tmp:
            out = executors.run(task.language, task.reference_code, Path(tmp), data_csv=task.data_csv,
                                sandbox=sandbox, timeout_s=timeout_s)
            statuses[(task.language, task.id)] = out.status
            if out.status == "pass":
                dst = directory / "images" / task.language / f"{task.id}.png"
                size, nbytes = shrink_png(out.image, dst)
                print(f"{task.language:10s} {task.id:14s} pass  {size[0]}x{size[1]} {nbytes / 1000:.1f} KB")
            else:
                err = (out.error or "").strip().splitlines()
                print(f"{task.language:10s} {task.id:14s} {out.status}: {err[-1] if err else ''}")
    return statuses


def summary(tasks):
    """A plain-text table: tasks per language and per category."""
    by_lang = Counter(t.language for t in tasks)
    lines = [f"{len(tasks)} tasks"]
    for lang in LANGUAGES:
        if by_lang[lang]:
            cats = Counter(t.vis_cate for t in tasks if t.language == lang)
            lines.append(f"  {lang:10s} {by_lang[lang]:3d}  " + ", ".join(f"{c} {n}" for c, n in cats.most_common()))
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default=None, help="task file or directory (default: the bundled sample)")
    ap.add_argument("--lang", nargs="*", default=None, help="only these languages")
    ap.add_argument("--render-references", action="store_true", help="re-render the bundled reference images")
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per render (default: per language)")
    args = ap.parse_args()
    if args.render_references:
        statuses = render_references(args.lang, sandbox=args.sandbox, timeout_s=args.timeout,
                                     directory=Path(args.tasks) if args.tasks else BUNDLED_DIR)
        bad = {k: s for k, s in statuses.items() if s != "pass"}
        print(f"{len(statuses) - len(bad)}/{len(statuses)} reference solutions pass")
        sys.exit(1 if bad else 0)
    print(summary(load_tasks(args.tasks, args.lang)))
