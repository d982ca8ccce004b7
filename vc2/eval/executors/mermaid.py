"""Mermaid: the `mermaid` npm package's browser bundle (vendored, 11.x) in Debian's Chromium via
Playwright (browser_driver.py): mermaid.parse, then mermaid.render, then a screenshot of the SVG.

A parse error is a syntax_error; an error while rendering a diagram that parsed, a runtime_error.
The SVG is drawn at its viewBox size (useMaxWidth would shrink it). securityLevel "strict".
Measured here: median 2.2 s per diagram cold, nearly all browser start-up and parsing the 3 MB
bundle (mmdc needs 500 MB of npm packages and a loopback websocket; this needs neither); warm, one
kept page with the bundle loaded, reset per diagram: ~0.4 s.
"""
from vc2.eval.executors.common import module_version
from vc2.eval.executors.html import browser_render

TOOLS = ["chromium"]
MODULES = ["playwright"]
TIMEOUT_S = 90.0
WARM = True


def render(code, workdir, mode, timeout_s, warm=None):
    (workdir / "diagram.mmd").write_text(code, encoding="utf-8")
    return browser_render("mermaid", workdir, mode, timeout_s, warm)


def version():
    return f"mermaid 11 (vendored), playwright {module_version('playwright')}"
