"""TypeScript: the pinned tsc (sandbox_images/node-tools.txt, installed into /opt/vc2/node-tools by
install_host.sh) compiles main.ts to main.js with --strict against Node's type declarations (without
type-checking those declarations themselves, --skipLibCheck: that was most of tsc's time), then node
runs it, in a second sandbox with the rest of the time budget.

Any compile error, a type error included, is a syntax_error: the program is not valid TypeScript,
and tsc's messages are the feedback. The rest is JavaScript's (javascript.py): the picture must be
written to a file; `import` of a package we lack fails to compile with "Cannot find module", which
dataset validation classifies as a missing dependency.
"""
import re

from vc2.eval.executors.common import Outcome, execute, tool_version, trim
from vc2.eval.executors.status import Status
from vc2.eval.languages import Language
from vc2.eval.languages.javascript import NODE_MEM_MB, run_node

NODE_TOOLS = "/opt/vc2/node-tools/node_modules"  # under /opt/vc2: visible inside the sandbox (sandbox.ROOT_RO)
TSC = f"{NODE_TOOLS}/typescript/bin/tsc"
COMPILE = ["node", TSC, "--strict", "--skipLibCheck", "--noEmitOnError", "--pretty", "false", "--target", "es2020", "--module", "commonjs",
           "--typeRoots", f"{NODE_TOOLS}/@types", "--types", "node", "--outDir", ".", "main.ts"]


def render(code, workdir, mode, timeout_s):
    before = {p.name for p in workdir.iterdir()} | {"main.ts", "main.js"}
    (workdir / "main.ts").write_text(code, encoding="utf-8")
    res, out = execute(COMPILE, workdir, mode, timeout_s, mem_mb=NODE_MEM_MB)
    if out:
        return out
    if res.returncode != 0 or not (workdir / "main.js").is_file():
        return Outcome(Status.SYNTAX_ERROR, trim(res.stdout + res.stderr) or f"tsc exited with status {res.returncode}")
    return run_node("main.js", workdir, mode, max(timeout_s - res.wall_s, 1.0), before)


def version():
    return "tsc " + tool_version(["node", TSC, "--version"], r"Version (\S+)") + ", node " + \
        tool_version(["node", "--version"], r"v(\S+)")


LANGUAGE = Language(
    name="typescript", display="TypeScript", aliases=("ts",),
    fence="typescript", tags=frozenset({"typescript", "ts", "tsx"}),
    instruction="You write TypeScript programs that draw. Write one complete TypeScript program (Node.js built-in "
                "modules only, e.g. `import * as fs from \"fs\"`) that draws the figure described below and writes "
                "it to an image file in the working directory (e.g. SVG text). It is compiled with tsc --strict and "
                "run with node, without a browser, a display or network access. Reply with the whole program in a "
                "single ```{fence} code block.",
    data="csv", data_access='Read it with `fs.readFileSync("data.csv", "utf8")` and parse the text.',
    no_image_hint="Make sure the program writes the picture to an image file (e.g. fs.writeFileSync(\"chart.svg\", svg)).",
    looks_complete=lambda c: re.search(r"\b(const|let|var|function|import|interface|type)\b", c) is not None,
    draws=r"\.(png|svg|ppm|pgm|pbm|pnm|bmp|jpe?g|gif)\b|<svg\b|\bcanvas\b",
    missing_dependency=r"Cannot find (?:module|package) '([^']+)'",
    render=render, version=version, timeout_s=90.0,
    tools=("node", TSC, "rsvg-convert"), image="native",
    apt=("nodejs", "npm", "librsvg2-bin", "fonts-dejavu-core", "fonts-liberation"), npm=("typescript", "@types/node"),
)
