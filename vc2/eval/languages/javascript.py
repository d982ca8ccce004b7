"""JavaScript: `node main.js` (Node.js 20, CommonJS or ES modules, detected by Node itself).

The program must write its picture to a file (SVG text, PPM, PNG: executors/common.written_image).
A program that fails with a SyntaxError is checked again with `node --check`, which parses without
running: a parse error is a syntax_error, anything else (a SyntaxError the program raised itself,
e.g. from JSON.parse) a runtime_error. Built-in modules only: `require` of a package we lack fails
with "Cannot find module", which dataset validation classifies as a missing dependency.
"""
import re

from vc2.eval.executors.common import Outcome, execute, tool_version, trim, written_image
from vc2.eval.executors.status import Status
from vc2.eval.languages import Language

NODE_MEM_MB = 4096  # RLIMIT_DATA: V8 reserves far more than it uses


def run_node(script, workdir, mode, timeout_s, before):
    """Run a JavaScript file written in workdir: the Outcome of running it (shared with typescript.py)."""
    res, out = execute(["node", script], workdir, mode, timeout_s, mem_mb=NODE_MEM_MB)
    if out:
        return out
    if res.returncode != 0:
        status = Status.RUNTIME_ERROR
        if "SyntaxError" in res.stderr:
            check, out = execute(["node", "--check", script], workdir, mode, timeout_s, mem_mb=NODE_MEM_MB)
            if out:
                return out
            status = Status.SYNTAX_ERROR if check.returncode != 0 else Status.RUNTIME_ERROR
        return Outcome(status, trim(res.stderr) or f"node exited with status {res.returncode}")
    return written_image(workdir, before, mode, max(timeout_s - res.wall_s, 5.0))


def render(code, workdir, mode, timeout_s):
    before = {p.name for p in workdir.iterdir()} | {"main.js"}
    (workdir / "main.js").write_text(code, encoding="utf-8")
    return run_node("main.js", workdir, mode, timeout_s, before)


def version():
    return "node " + tool_version(["node", "--version"], r"v(\S+)")


LANGUAGE = Language(
    name="javascript", display="JavaScript", aliases=("js", "node", "nodejs"),
    fence="javascript", tags=frozenset({"javascript", "js", "node", "nodejs", "mjs", "cjs"}),
    instruction="You write JavaScript programs that draw. Write one complete Node.js program (built-in modules "
                "only) that draws the figure described below and writes it to an image file in the working "
                "directory (e.g. SVG text with fs.writeFileSync). It runs with node, without a browser, a display "
                "or network access. Reply with the whole program in a single ```{fence} code block.",
    data="csv", data_access='Read it with `fs.readFileSync("data.csv", "utf8")` and parse the text.',
    no_image_hint="Make sure the program writes the picture to an image file (e.g. fs.writeFileSync(\"chart.svg\", svg)).",
    looks_complete=lambda c: re.search(r"\b(const|let|var|function|require|import)\b", c) is not None,
    draws=r"\.(png|svg|ppm|pgm|pbm|pnm|bmp|jpe?g|gif)\b|<svg\b|\bcanvas\b",
    missing_dependency=r"Cannot find (?:module|package) '([^']+)'",
    render=render, version=version, timeout_s=60.0,
    tools=("node", "rsvg-convert"), image="native", apt=("nodejs", "librsvg2-bin", "fonts-dejavu-core", "fonts-liberation"),
)
