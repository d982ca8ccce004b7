"""Mermaid: the `mermaid` npm package's browser bundle (vendored, 11.x) in Debian's Chromium via
Playwright (browser_driver.py): mermaid.parse, then mermaid.render, then a screenshot of the SVG.

A parse error is a syntax_error; an error while rendering a diagram that parsed, a runtime_error.
The SVG is drawn at its viewBox size (useMaxWidth would shrink it). securityLevel "strict". Cold,
nearly all of a diagram's time is browser start-up and parsing the 3 MB bundle (mmdc would need
500 MB of npm packages and a loopback websocket; this needs neither); warm, one kept page with the
bundle loaded is reset per diagram.
"""
import re

from vc2.eval.executors.common import browser_render, module_version
from vc2.eval.languages import Language


START = re.compile(
    r"^\s*(---|%%|graph|flowchart|sequenceDiagram|classDiagram|stateDiagram|erDiagram|gantt|pie|journey|gitGraph|"
    r"mindmap|timeline|quadrantChart|xychart|sankey|requirementDiagram|C4\w*|block|packet|architecture|kanban|"
    r"radar|treemap|zenuml)(?![\w])", re.M)


def render(code, workdir, mode, timeout_s, warm=None):
    (workdir / "diagram.mmd").write_text(code, encoding="utf-8")
    return browser_render("mermaid", workdir, mode, timeout_s, warm)


def version():
    return f"mermaid 11 (vendored), playwright {module_version('playwright')}"


def repair(code):
    """Drop prose lines before the diagram keyword (an unfenced answer that starts with 'Here is ...')."""
    m = START.search(code)
    return code[m.start():].lstrip("\n") if m and code[:m.start()].strip() else code


LANGUAGE = Language(
    name="mermaid", display="Mermaid", aliases=("mmd",), benchmark=4,
    fence="mermaid", tags=frozenset({"mermaid", "mmd"}),
    instruction="You draw diagrams with Mermaid. Write one complete Mermaid diagram definition for the diagram "
                "described below (no HTML around it). Reply with the definition in a single ```{fence} code block.",
    looks_complete=lambda c: START.search(c) is not None,
    repair=repair, render=render, version=version, timeout_s=90.0, warm=True,
    tools=("chromium",), modules=("playwright",), image="web",
    apt=("chromium", "libatomic1", "fonts-dejavu-core", "fonts-liberation", "fonts-noto-cjk"), pip=("playwright",),
)
