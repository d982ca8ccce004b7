"""LaTeX (TikZ / pgfplots / circuitikz / standalone): pdflatex, or xelatex when the document needs
fontspec-style Unicode fonts, then pdftoppm (page 1, 150 dpi) cropped to the drawing plus a margin.

data.csv sits next to doc.tex, so `\\pgfplotstableread[col sep=comma]{data.csv}` and
`table {data.csv}` work, and documents that do not use it are untouched (the original harness injected
a \\pgfplotstableread into every document, breaking those without pgfplots).
A compile error caused by the source text (undefined macro, missing brace, ...) is a syntax_error;
other TeX errors (a package error, a missing file, arithmetic) a runtime_error. Exit codes lie in
nonstopmode, so the verdict comes from the "! " lines of the log and the PDF's existence.
Measured here: median 0.42 s for a pgfplots bar chart. Limit: one compiler run (no references/TOC),
no lualatex (not installed), no shell escape.
"""
import re

from vc2.eval import images
from vc2.eval.executors.common import Outcome, crop, execute, tool_version, trim

TOOLS = ["pdflatex", "xelatex", "pdftoppm", "pdfinfo"]
MODULES = []
TIMEOUT_S = 120.0
XETEX = re.compile(r"\\usepackage(\[[^\]]*\])?\{[^}]*\b(fontspec|xeCJK|ctex|polyglossia|unicode-math)\b|\\setmainfont|\\documentclass(\[[^\]]*\])?\{ctex")
SYNTAX = re.compile(r"Undefined control sequence|Missing [\$\{\}] inserted|Extra [\}]|Extra alignment tab|Runaway argument|"
                    r"File ended while scanning|Paragraph ended before|Missing \\begin\{document\}|Missing number|"
                    r"Illegal parameter number|Extra \\else|Extra \\fi|Environment \S+ undefined|ended by \\end|"
                    r"Misplaced alignment tab|Missing \\endcsname|Use of \S+ doesn't match its definition|"
                    r"Can be used only in preamble|Too many \}'s|Bad math environment delimiter")
# compile, then rasterise page 1; fixed script, the document is only ever a file
# A page that would exceed MAX_RENDER_PIXELS at 150 dpi (a 2.5 m TikZ poster) is scaled down by pdftoppm
# itself (-scale-to: the long side in pixels), so an honest large figure passes and the host never
# decodes a bomb; pdfinfo gives the page size in points.
SCRIPT = ('"$0" -interaction=nonstopmode -halt-on-error -no-shell-escape -file-line-error doc.tex >/dev/null 2>&1; '
          'cat doc.log; [ -f doc.pdf ] && pdftoppm -png -r 150 $(pdfinfo doc.pdf 2>/dev/null | awk -v lim="$1" '
          "'/^Page size:/ {w = $3 * 150 / 72; h = $5 * 150 / 72; "
          "if (w * h > lim) printf \"-scale-to %d\", (w > h ? w : h) * sqrt(lim / (w * h))}') "
          '-f 1 -l 1 -singlefile doc.pdf page')


def tex_errors(log):
    """The '! ...' lines of a TeX log with the few lines of context that follow (up to the 'l.N' line)."""
    lines, out = log.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("!") or re.match(r"^\./doc\.tex:\d+: ", line):
            block = [line]
            for nxt in lines[i + 1:i + 8]:
                block.append(nxt)
                if re.match(r"^l\.\d+", nxt):
                    break
            out.append("\n".join(block))
    return "\n".join(dict.fromkeys(out))


def render(code, workdir, mode, timeout_s):
    (workdir / "doc.tex").write_text(code, encoding="utf-8")
    compiler = "xelatex" if XETEX.search(code) else "pdflatex"
    res, out = execute(["/bin/sh", "-c", SCRIPT, compiler, str(images.MAX_RENDER_PIXELS)], workdir, mode,
                       timeout_s, mem_mb=4096)
    if out:
        return out
    log = res.stdout
    png = workdir / "page.png"
    errors = tex_errors(log)
    if not (workdir / "doc.pdf").exists() or errors and "Fatal error" in log:
        if not errors:
            return Outcome("no_image", trim(log[-1500:]) or "no PDF produced (empty document?)", detail={"compiler": compiler})
        kind = "syntax_error" if SYNTAX.search(errors.split("\n")[0]) else "runtime_error"
        return Outcome(kind, trim(errors), detail={"compiler": compiler})
    if not png.exists():
        return Outcome("no_image", trim(res.stderr) or "pdftoppm produced no image", detail={"compiler": compiler})
    crop(png)
    return Outcome("pass", image=png, detail={"compiler": compiler})


def version():
    pdftex = tool_version(["pdflatex", "--version"], r"pdfTeX (\S+)")
    xetex = tool_version(["xelatex", "--version"], r"XeTeX (\S+)")
    return f"pdfTeX {pdftex}, XeTeX {xetex}, pdftoppm {tool_version(['pdftoppm', '-v'])}"
