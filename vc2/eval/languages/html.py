"""HTML (Chart.js / D3 / ECharts / Plotly / Vega-embed / ApexCharts / plain canvas and SVG): one page
in Debian's Chromium driven by Playwright (browser_driver.py), 800x600 viewport, full-page screenshot.

Offline by design: CDN script URLs of the vendored libraries (vc2/eval/assets/vendor, from npm) are
answered locally, the page can fetch("data.csv"), everything else is aborted and listed in
detail["blocked"]. A JS SyntaxError is a syntax_error, any other uncaught page error a runtime_error;
console errors alone are only reported (VisPlotBench failed on them, and on every failed request).
A page that needed a blocked library usually comes out blank -> blank_image; a page that shows only
text (no canvas, svg, image or painted box) is no_image: a model's JavaScript pasted into <body>
renders as text, and must not count as a chart. The animation clock is faked and run forward (5 s,
then 2 s steps until two screenshots agree) instead of sleeping 5 s. Warm, pages take turns in a kept
browser's kept tab (see browser_driver.HtmlTab): a new tab's renderer process was most of the cost.
Limits: ES-module imports (`d3@7/+esm`) are not served; web fonts, map tiles and the Google Charts
loader cannot work offline.
"""
import re

from vc2.eval.executors.common import browser_render, module_version, tool_version
from vc2.eval.languages import Language


def render(code, workdir, mode, timeout_s, warm=None):
    (workdir / "page.html").write_text(code, encoding="utf-8")
    return browser_render("html", workdir, mode, timeout_s, warm)


def version():
    chromium = tool_version(["chromium", "--version"], r"Chromium (\S+)")
    return f"chromium {chromium}, playwright {module_version('playwright')}"


def repair(code):
    """A fragment (no <html> or <!doctype>) is wrapped in a minimal UTF-8 page; text after </html> is cut."""
    m = re.search(r"</html\s*>", code, re.I)
    if m:
        code = code[:m.end()]
    if re.search(r"<!doctype|<html\b", code, re.I):
        start = re.search(r"<!doctype|<html\b", code, re.I).start()
        return code[start:]
    return f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"></head>\n<body>\n{code}\n</body>\n</html>\n'


LANGUAGE = Language(
    name="html", display="HTML", aliases=("htm",), benchmark=8,
    fence="html", tags=frozenset({"html", "htm", "xhtml"}),
    instruction="You build web visualizations. Write one complete HTML page that shows the visualization "
                "described below. It is opened in a headless browser without general network access: common "
                "chart libraries (Chart.js, D3, ECharts, Plotly, Vega-Embed, ApexCharts) load from their usual "
                "CDN URLs, nothing else does (no web fonts, map tiles or APIs). Reply with the whole page in a "
                "single ```{fence} code block.",
    data="csv", data_access='The page is opened next to the file; load it with `fetch("data.csv")` and parse the text in '
                            "your script.",
    no_image_hint="Make sure the page draws visible content in its body when it loads.",
    looks_complete=lambda c: re.search(r"<(!doctype|html|body|div|svg|canvas|script|table)\b", c, re.I) is not None,
    repair=repair, render=render, version=version, timeout_s=90.0, warm=True,
    tools=("chromium",), modules=("playwright",), image="web",
    apt=("chromium", "libatomic1", "fonts-dejavu-core", "fonts-liberation", "fonts-noto-cjk", "fonts-noto-color-emoji"),
    pip=("playwright",),
)
