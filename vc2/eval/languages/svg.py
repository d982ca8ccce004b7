"""SVG: rsvg-convert (librsvg) on a white background, code written to image.svg.

An XML parse error is a syntax_error; any other refusal (e.g. the root element is not <svg>) a
runtime_error. Fonts: fonts-liberation provides Arial/Times/Courier, so text never silently vanishes
(resvg drops text whose family is missing; rsvg falls back through fontconfig).
Limits: no CSS animation/scripting/<foreignObject> HTML (use the html language for those); an SVG with
no width/height renders at its content's size.
"""
import re

from vc2.eval.executors.common import Outcome, execute, tool_version, trim
from vc2.eval.languages import Language

COMMAND = ["rsvg-convert", "--background-color=white", "--output=image.png", "image.svg"]


def render(code, workdir, mode, timeout_s):
    (workdir / "image.svg").write_text(code, encoding="utf-8")
    res, out = execute(COMMAND, workdir, mode, timeout_s)
    if out:
        return out
    err = trim(res.stderr)
    if res.returncode != 0:
        return Outcome("syntax_error" if "XML parse error" in err else "runtime_error", err)
    png = workdir / "image.png"
    return Outcome("pass", image=png) if png.exists() and png.stat().st_size else Outcome("no_image", err)


def version():
    return "rsvg-convert " + tool_version(["rsvg-convert", "--version"])


def repair(code):
    """Cut prose around the document (from <?xml or <svg to the last </svg>) and add the SVG namespace
    to the root if it is missing (renderers then see no SVG at all)."""
    start = re.search(r"<\?xml|<!DOCTYPE svg|<svg\b", code)
    end = code.rfind("</svg>")
    if start and end > start.start():
        code = code[start.start():end + len("</svg>")]
    m = re.search(r"<svg\b[^>]*>", code)
    if m and "xmlns=" not in m.group(0):
        code = code[:m.start()] + '<svg xmlns="http://www.w3.org/2000/svg"' + code[m.start() + 4:]
    return code


LANGUAGE = Language(
    name="svg", display="SVG", benchmark=5,
    fence="svg", tags=frozenset({"svg", "xml", "svg+xml"}),
    instruction="You draw graphics in SVG. Write one complete, standalone SVG document (a root <svg> element with "
                "the xmlns attribute, a width/height or viewBox) for the image described below. Do not use scripts "
                "or external resources. Reply with the whole document in a single ```{fence} code block.",
    looks_complete=lambda c: "<svg" in c,
    repair=repair, render=render, version=version, timeout_s=30.0,
    tools=("rsvg-convert",), image="web", apt=("librsvg2-bin", "fonts-dejavu-core", "fonts-liberation", "fonts-noto-cjk"),
)
