"""HTML (Chart.js / D3 / ECharts / Plotly / Vega-embed / ApexCharts / plain canvas and SVG): one page
in Debian's Chromium driven by Playwright (browser_driver.py), 800x600 viewport, full-page screenshot.

Offline by design: CDN script URLs of the vendored libraries (vc2/eval/assets/vendor, from npm) are
answered locally, the page can fetch("data.csv"), everything else is aborted and listed in
detail["blocked"]. A JS SyntaxError is a syntax_error, any other uncaught page error a runtime_error;
console errors alone are only reported (VisPlotBench failed on them, and on every failed request).
A page that needed a blocked library usually comes out blank -> blank_image; a page that shows only
text (no canvas, svg, image or painted box) is no_image: a model's JavaScript pasted into <body>
renders as text, and must not count as a chart. The animation clock is
faked and run forward (5 s, then 2 s steps until two screenshots agree) instead of sleeping 5 s.
Measured here: median 2.2 s per page cold (~1.9 CPU-s); warm (a kept browser and tab, see
browser_driver.HtmlTab) ~0.8 s and ~0.7 CPU-s: a new tab's renderer process was most of the cost. Limits: ES-module imports (`d3@7/+esm`) are not served; web fonts,
map tiles and the Google Charts loader cannot work offline.
"""
import json
import sys

from vc2.eval import images
from vc2.eval.warm import WarmJob
from vc2.eval.executors.common import HERE, Outcome, execute, module_version, tool_version, trim

TOOLS = ["chromium"]
MODULES = ["playwright"]
TIMEOUT_S = 90.0
WARM = True
VENDOR = HERE.parent / "assets" / "vendor"


def browser_render(kind, workdir, mode, timeout_s, warm):
    """Shared with mermaid.py: run browser_driver.py, map its exit code to an Outcome."""
    res, out = execute([sys.executable, "-I", HERE / "browser_driver.py", kind, VENDOR], workdir, mode, timeout_s,
                       mem_mb=8192, nproc=1024,  # Chromium: many threads, big V8 heaps
                       warm=warm and (warm, WarmJob("browser", task_args=(kind, VENDOR))))
    if out:
        return out
    info = workdir / "_vc2_browser.json"
    detail = json.loads(info.read_text()) if info.exists() else {}
    err = trim(res.stderr)
    if res.returncode == 4:
        return Outcome("infra_error", err, detail=detail)
    if res.returncode == 3:
        return Outcome("syntax_error", err, detail=detail)
    if res.returncode == 5:  # the page rendered, but only text (or nothing at all): no chart was drawn
        png = workdir / "image.png"
        why = png.exists() and images.blank_reason(png)
        if why:
            return Outcome("blank_image", f"the image is blank: {why}", image=png, detail=detail)
        return Outcome("no_image", err, detail=detail)
    if res.returncode != 0:
        return Outcome("runtime_error", err, detail=detail)
    png = workdir / "image.png"
    return Outcome("pass", image=png, detail=detail) if png.exists() else Outcome("no_image", err, detail=detail)


def render(code, workdir, mode, timeout_s, warm=None):
    (workdir / "page.html").write_text(code, encoding="utf-8")
    return browser_render("html", workdir, mode, timeout_s, warm)


def version():
    chromium = tool_version(["chromium", "--version"], r"Chromium (\S+)")
    return f"chromium {chromium}, playwright {module_version('playwright')}"
