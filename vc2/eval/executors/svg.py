"""SVG: rsvg-convert (librsvg) on a white background, code written to image.svg.

An XML parse error is a syntax_error; any other refusal (e.g. the root element is not <svg>) a
runtime_error. Fonts: fonts-liberation provides Arial/Times/Courier, so text never silently vanishes
(resvg drops text whose family is missing; rsvg falls back through fontconfig). Measured: 0.03 s.
Limits: no CSS animation/scripting/<foreignObject> HTML (use the html language for those); an SVG with
no width/height renders at its content's size.
"""
from vc2.eval.executors.common import Outcome, execute, tool_version, trim

TOOLS = ["rsvg-convert"]
MODULES = []
TIMEOUT_S = 30.0


def render(code, workdir, mode, timeout_s):
    (workdir / "image.svg").write_text(code, encoding="utf-8")
    res, out = execute(["rsvg-convert", "--background-color=white", "--output=image.png", "image.svg"],
                       workdir, mode, timeout_s)
    if out:
        return out
    err = trim(res.stderr)
    if res.returncode != 0:
        return Outcome("syntax_error" if "XML parse error" in err else "runtime_error", err)
    png = workdir / "image.png"
    return Outcome("pass", image=png) if png.exists() and png.stat().st_size else Outcome("no_image", err)


def version():
    return "rsvg-convert " + tool_version(["rsvg-convert", "--version"])
