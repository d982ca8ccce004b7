"""Task -> chat messages, execution outcome -> self-debug message, model answer -> code.

    from vc2.eval import prompts, tasks
    task = tasks.load_tasks(languages=["svg"])[0]
    messages = prompts.build_messages(task)            # [{"role": "user", "content": ...}]
    code = prompts.extract_code(task.language, answer)  # answer: the model's raw text
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": prompts.debug_message(task.language, "runtime_error", stderr)}]

Run `python -m vc2.eval.prompts [svg_3]` to print the prompt of a bundled task.

The user message is: our per-language instruction, then the task's description, style, setup (the
libraries it names) and, for data-driven languages, a description of the CSV with its first rows. The
order follows what the original harness really sends (description, style, setup, data). There is no
system message: the chat template adds the model's default one, as in training.

Extraction is deliberately more forgiving than the original harness (which took the first fenced
block and kept unknown info strings as code): we drop reasoning (`<think>...</think>`), prefer blocks
tagged for the language, then unlabeled ones, and take the *last* complete-looking block, since
drafts come before the final answer. A few repairs are applied, each documented at its function:
Vega-Lite JSON with comments/trailing commas/trailing prose, LaTeX without a preamble (wrapped in a
standalone document), HTML fragments (wrapped in a page), SVG with prose around it or no xmlns,
Mermaid with prose before the diagram keyword.
"""
import csv
import io
import json
import re
import sys
from dataclasses import dataclass

from vc2.eval.tasks import CSV_LANGUAGES, LANGUAGES, canonical_language

# The fence tag we ask for, and every tag we accept from an answer (compared lowercased).
FENCE = {"python": "python", "vegalite": "json", "lilypond": "lilypond", "mermaid": "mermaid", "svg": "svg",
         "latex": "latex", "asymptote": "asy", "html": "html"}
TAGS = {
    "python": {"python", "py", "python3", "py3"},
    "vegalite": {"json", "vega-lite", "vegalite", "vega", "vl", "json5", "jsonc"},
    "lilypond": {"lilypond", "ly", "lily"},
    "mermaid": {"mermaid", "mmd"},
    "svg": {"svg", "xml", "svg+xml"},
    "latex": {"latex", "tex", "tikz", "pgfplots"},
    "asymptote": {"asy", "asymptote"},
    "html": {"html", "htm", "xhtml"},
}
NAME = {"python": "Python", "vegalite": "Vega-Lite", "lilypond": "LilyPond", "mermaid": "Mermaid", "svg": "SVG",
        "latex": "LaTeX", "asymptote": "Asymptote", "html": "HTML"}

# Our instruction texts. {fence} is the tag of the one code block we want back.
INSTRUCTIONS = {
    "python": "You write Python plotting code. Write one complete, runnable Python script that draws the "
              "figure described below. It runs without a display and without network access; end it by "
              "showing the figure (for matplotlib: plt.show()). Reply with the whole script in a single "
              "```{fence} code block.",
    "vegalite": "You write Vega-Lite specifications. Write one complete Vega-Lite v5 JSON specification for "
                "the chart described below. It must be valid JSON (no comments, no JavaScript). Reply with "
                "the whole specification in a single ```{fence} code block.",
    "lilypond": "You engrave music with LilyPond. Write one complete LilyPond file that engraves the music "
                "described below; start it with a \\version line (e.g. \\version \"2.24.0\"). Reply with "
                "the whole file in a single ```{fence} code block.",
    "mermaid": "You draw diagrams with Mermaid. Write one complete Mermaid diagram definition for the diagram "
               "described below (no HTML around it). Reply with the definition in a single ```{fence} code block.",
    "svg": "You draw graphics in SVG. Write one complete, standalone SVG document (a root <svg> element with "
           "the xmlns attribute, a width/height or viewBox) for the image described below. Do not use scripts "
           "or external resources. Reply with the whole document in a single ```{fence} code block.",
    "latex": "You draw figures in LaTeX. Write one complete LaTeX document, from \\documentclass to "
             "\\end{{document}}, that compiles with pdflatex and draws the figure described below (the "
             "standalone class with TikZ/pgfplots works well). Reply with the whole document in a single "
             "```{fence} code block.",
    "asymptote": "You draw figures with Asymptote. Write one complete Asymptote program that draws the figure "
                 "described below; it is compiled with `asy -f png`. Reply with the whole program in a single "
                 "```{fence} code block.",
    "html": "You build web visualizations. Write one complete HTML page that shows the visualization "
            "described below. It is opened in a headless browser without general network access: common "
            "chart libraries (Chart.js, D3, ECharts, Plotly, Vega-Embed, ApexCharts) load from their usual "
            "CDN URLs, nothing else does (no web fonts, map tiles or APIs). Reply with the whole page in a "
            "single ```{fence} code block.",
}

# How each data-driven language reaches its data. The executors write the task's CSV as `data.csv` in the
# working directory before running the code (and, for the browser, expose it as described here).
DATA_ACCESS = {
    "python": 'Read it with pandas: `df = pd.read_csv("data.csv")`.',
    "vegalite": 'Load it with `"data": {"url": "data.csv"}`; do not copy the rows into the specification.',
    "latex": "Read it with pgfplots: `\\pgfplotstableread[col sep=comma]{data.csv}\\datatable` (plot with "
             "`table[x=..., y=...] {\\datatable}`).",
    "html": "The page is opened next to the file; load it with `fetch(\"data.csv\")` and parse the text in "
            "your script.",
}

MAX_DATA_CHARS = 4000   # the data description is cut here (the original harness does the same)
HEAD_ROWS = 5


def _value_type(values):
    """'int', 'float' or 'str' for a column of CSV strings (empty cells ignored)."""
    vals = [v for v in values if v.strip()]
    for name, conv in (("int", int), ("float", float)):
        try:
            for v in vals:
                conv(v)
            return name if vals else "str"
        except ValueError:
            pass
    return "str"


def describe_csv(text):
    """'N rows x C columns; columns: a (int), b (str)' + a CSV head in a fence; plain text if not a table."""
    rows = list(csv.reader(io.StringIO(text.strip())))
    if len(rows) < 2 or len(rows[0]) < 1:
        return f"```csv\n{text.strip()[:MAX_DATA_CHARS]}\n```"
    header, body = rows[0], rows[1:]
    cols = [f"{name} ({_value_type([r[i] for r in body if i < len(r)])})" for i, name in enumerate(header)]
    head = text.strip().splitlines()[:HEAD_ROWS + 1]
    more = f"\n(first {HEAD_ROWS} of {len(body)} rows)" if len(body) > HEAD_ROWS else ""
    return (f"{len(body)} rows x {len(header)} columns; columns: {', '.join(cols)}.\n"
            f"```csv\n" + "\n".join(head) + "\n```" + more)


def build_prompt(task):
    """The user message for a task (see the module docstring for its parts)."""
    lang = task.language
    assert lang in LANGUAGES, lang
    parts = [INSTRUCTIONS[lang].format(fence=FENCE[lang]),
             f"Task: {task.description.strip()}"]
    if task.style and task.style.strip():
        parts.append(f"Style: {task.style.strip()}")
    libs = [lib for lib in task.used_lib if canonical_language(lib, default=None) != lang]  # not "LilyPond, using lilypond"
    parts.append(f"Setup: {NAME[lang]}" + (f", using {', '.join(libs)}." if libs else "."))
    if task.data and lang in CSV_LANGUAGES:
        desc = describe_csv(task.data)
        if len(desc) > MAX_DATA_CHARS:
            desc = desc[:MAX_DATA_CHARS] + "\n[...]"
        parts.append(f"Data: a CSV file `data.csv`, {desc}\n{DATA_ACCESS[lang]}")
    elif task.data and lang == "asymptote":
        parts.append(f"Data: define it in your program exactly as follows.\n```asy\n{task.data.strip()[:MAX_DATA_CHARS]}\n```")
    return "\n\n".join(parts)


def build_messages(task, system=None):
    """Chat messages for round 0; render them with tokenizer.render_chat(messages, add_generation_prompt=True)."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": build_prompt(task)}]


# ---------------------------------------------------------------------------------------------------
# self-debug feedback

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# lines worth keeping from the middle of a long log: the error itself, wherever it is
_ERROR_LINE = re.compile(r"^!|error|exception|traceback|fatal|^l\.\d+|failed|invalid|unexpected|undefined", re.I)


def trim_error(text, max_chars=2000, head_lines=12, tail_lines=30):
    """Keep a long error readable: the first lines, the last lines, and error-looking lines in between.

    Tracebacks end with the exception and compiler logs put `! ...`/`error:` lines near the end, but
    a log can also be dominated by warnings, so the middle is searched for error lines too.
    """
    lines = [ln.rstrip() for ln in _ANSI.sub("", text or "").strip().splitlines()]
    lines = [ln if len(ln) <= 300 else ln[:300] + " [...]" for ln in lines]  # e.g. a minified JS line
    if len(lines) > head_lines + tail_lines:
        middle = lines[head_lines:-tail_lines]
        keep = [ln for ln in middle if _ERROR_LINE.search(ln)][:10]
        skipped = len(middle) - len(keep)
        lines = lines[:head_lines] + [f"[... {skipped} lines omitted ...]"] + keep + lines[-tail_lines:]
    out = "\n".join(lines)
    if len(out) > max_chars:  # still too long: the tail holds the final error, so it gets the larger share
        head = max_chars // 4
        out = out[:head] + "\n[...]\n" + out[-(max_chars - head):]
    return out


_STATUS_TEXT = {
    "syntax_error": "The code above could not be parsed. The error was:",
    "runtime_error": "The code above failed with this error:",
    "timeout": "The code above did not finish within the time limit and was stopped.",
    "no_image": "The code above ran without errors but produced no image.",
    "blank_image": "The code above ran, but the image it produced is blank (a single colour, nothing drawn).",
    "infra_error": "The code above could not be run because of a problem in the execution environment:",
}
_NO_IMAGE_HINT = {
    "python": "Make sure the figure is actually drawn and shown (plt.show() for matplotlib, fig.show() for plotly).",
    "lilypond": "Make sure the file contains music to engrave (a \\score or top-level music expression).",
    "html": "Make sure the page draws visible content in its body when it loads.",
}


def debug_message(language, outcome_status, error_text):
    """The user turn that asks for a fix after a failed attempt (the error trimmed to a useful size)."""
    lang = canonical_language(language)
    if outcome_status not in _STATUS_TEXT:
        raise ValueError(f"no self-debug message for outcome {outcome_status!r}")
    parts = [_STATUS_TEXT[outcome_status]]
    err = trim_error(error_text)
    if err:
        parts.append(f"```\n{err}\n```")
    if outcome_status in ("no_image", "blank_image"):
        parts.append(_NO_IMAGE_HINT.get(lang, "Make sure the code draws visible content."))
    parts.append(f"Please fix the problem and reply with the complete corrected code in a single "
                 f"```{FENCE[lang]} code block.")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------
# answer -> code

@dataclass
class Extracted:
    code: str
    method: str   # "fenced" (a block tagged for the language), "unlabeled", "other-tag", "unclosed", "whole"
    raw: str      # the answer exactly as the model wrote it


_SPECIAL = re.compile(r"<\|[a-z_]+\|>|<EOS>|</s>|<s>")
_FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")


def _final_part(answer):
    """The text after the reasoning: after the last </think>, inside <answer>...</answer> if present."""
    text = _SPECIAL.sub("", answer)
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        text = after if after.strip() else text.replace("<think>", "").replace("</think>", "")
    elif "<think>" in text:  # cut off while thinking: only drafts exist; the last-block rule still applies
        text = text.split("<think>", 1)[1]
    m = re.search(r"<answer>(.*?)(</answer>|$)", text, re.S)
    if m and m.group(1).strip():
        text = m.group(1)
    return text


def _blocks(text):
    """[(tag, code, closed)] of fenced blocks; an unclosed last block runs to the end of the text."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, tag = len(m.group(1)), m.group(2), m.group(3).lower().strip("{}.")
        body, closed, i = [], False, i + 1
        while i < len(lines):
            ln = lines[i]
            s = ln.strip()
            if s.startswith(fence[0] * 3) and set(s) == {fence[0]} and len(s) >= len(fence):
                closed = True
                break
            if fence[0] == "`" and ln.rstrip().endswith(fence) and not ln.rstrip().endswith(fence + "`"):
                body.append(ln.rstrip()[:-len(fence)])  # code``` : the fence glued to the last line
                closed = True
                break
            body.append(ln[indent:] if ln[:indent].strip() == "" else ln)
            i += 1
        i += 1
        out.append((tag, "\n".join(body).strip("\n").rstrip(), closed))
    return out


_MERMAID_START = re.compile(
    r"^\s*(---|%%|graph|flowchart|sequenceDiagram|classDiagram|stateDiagram|erDiagram|gantt|pie|journey|gitGraph|"
    r"mindmap|timeline|quadrantChart|xychart|sankey|requirementDiagram|C4\w*|block|packet|architecture|kanban|"
    r"radar|treemap|zenuml)(?![\w])", re.M)
_LOOKS_COMPLETE = {
    "python": lambda c: re.search(r"^\s*(import|from)\s+\w", c, re.M) is not None,
    "vegalite": lambda c: "{" in c and re.search(r'"(mark|layer|\$schema|hconcat|vconcat|concat|facet|repeat|spec)"', c) is not None,
    "lilypond": lambda c: re.search(r"\\(version|score|relative|new|fixed|header|markup)|\{", c) is not None,
    "mermaid": lambda c: _MERMAID_START.search(c) is not None,
    "svg": lambda c: "<svg" in c,
    "latex": lambda c: "\\begin{" in c or "\\documentclass" in c,
    "asymptote": lambda c: re.search(r"\b(draw|fill|filldraw|label|dot|size|import|shipout)\b", c) is not None,
    "html": lambda c: re.search(r"<(!doctype|html|body|div|svg|canvas|script|table)\b", c, re.I) is not None,
}


def extract(language, answer):
    """Pick the code out of a model answer; see the module docstring for the rules."""
    lang = canonical_language(language)
    raw = answer or ""
    text = _final_part(raw)
    blocks = _blocks(text)
    if not any(code.strip() for _, code, _ in blocks) and "</think>" in raw:
        blocks = _blocks(_SPECIAL.sub("", raw))  # the code was only written inside the reasoning
    code, method = None, "whole"
    for pool_method, pool in (("fenced", [b for b in blocks if b[0] in TAGS[lang]]),
                              ("unlabeled", [b for b in blocks if not b[0]]),
                              ("other-tag", [b for b in blocks if b[0] and b[0] not in TAGS[lang]])):
        pool = [b for b in pool if b[1].strip()]
        if pool:
            complete = [b for b in pool if _LOOKS_COMPLETE[lang](b[1])]
            tag, code, closed = (complete or pool)[-1]
            method = pool_method if closed else "unclosed"
            break
    if code is None:
        code = text.strip()
    return Extracted(code=_REPAIR[lang](code), method=method, raw=raw)


def extract_code(language, answer):
    """Just the code of extract()."""
    return extract(language, answer).code


# ---------------------------------------------------------------------------------------------------
# per-language repairs of extracted code

def _strip_json_comments(s):
    """Remove // and /* */ comments and trailing commas outside JSON strings."""
    out, i, n, in_str = [], 0, len(s), False
    while i < n:
        c = s[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(s[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif s.startswith("//", i):
            while i < n and s[i] != "\n":
                i += 1
            continue
        elif s.startswith("/*", i):
            j = s.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        else:
            out.append(c)
        i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))  # only safe because strings were left alone above


def _first_json_object(s):
    """The first balanced {...} in s (string-aware), or None."""
    start = s.find("{")
    if start < 0:
        return None
    depth, in_str, esc = 0, False, False
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[start:i + 1]
    return None


def _repair_vegalite(code):
    """Valid JSON is kept as written. Otherwise drop comments, trailing commas and text around the
    first {...}; if that parses, return it re-serialised, else the original (its JSON error is useful
    feedback for self-debug)."""
    try:
        json.loads(code)
        return code
    except ValueError:
        pass
    cleaned = _strip_json_comments(code)
    obj_text = _first_json_object(cleaned)
    try:
        return json.dumps(json.loads(obj_text), indent=2) if obj_text else code
    except ValueError:
        return code


LATEX_WRAPPER = ("\\documentclass[border=5pt]{{standalone}}\n\\usepackage{{tikz}}\n\\usepackage{{pgfplots}}\n"
                 "\\pgfplotsset{{compat=1.18}}\n{preamble}\\begin{{document}}\n{body}\n\\end{{document}}\n")
_PREAMBLE_CMD = re.compile(r"^\s*\\(usepackage|usetikzlibrary|usepgfplotslibrary|pgfplotsset|tikzset|definecolor|"
                           r"colorlet|newcommand|renewcommand|DeclareMathOperator|RequirePackage)\b")


def _repair_latex(code):
    """A document with \\documentclass is kept (minus text after \\end{document}). A fragment (a bare
    tikzpicture, or a body with its \\usepackage lines) is wrapped in a standalone document that loads
    TikZ and pgfplots, with the fragment's preamble commands moved before \\begin{document}; a body
    that has \\begin{document} but no class gets just the \\documentclass line. We wrap rather than fail
    because the figure, not the boilerplate, is what the benchmark measures; it is the model's code
    either way, and the stored code shows the wrapper."""
    end = code.find("\\end{document}")
    if end >= 0:
        code = code[:end + len("\\end{document}")]
    if "\\documentclass" in code:
        return code
    if "\\begin{document}" in code:
        return "\\documentclass[border=5pt]{standalone}\n" + code
    preamble, body, in_body = [], [], False
    for ln in code.splitlines():
        if not in_body and _PREAMBLE_CMD.match(ln):
            preamble.append(ln)
        else:
            in_body = in_body or bool(ln.strip())
            body.append(ln)
    pre = "".join(p.strip() + "\n" for p in preamble)
    return LATEX_WRAPPER.format(preamble=pre, body="\n".join(body).strip())


def _repair_html(code):
    """A fragment (no <html> or <!doctype>) is wrapped in a minimal UTF-8 page; text after </html> is cut."""
    m = re.search(r"</html\s*>", code, re.I)
    if m:
        code = code[:m.end()]
    if re.search(r"<!doctype|<html\b", code, re.I):
        start = re.search(r"<!doctype|<html\b", code, re.I).start()
        return code[start:]
    return f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"></head>\n<body>\n{code}\n</body>\n</html>\n'


def _repair_svg(code):
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


def _repair_mermaid(code):
    """Drop prose lines before the diagram keyword (an unfenced answer that starts with 'Here is ...')."""
    m = _MERMAID_START.search(code)
    return code[m.start():].lstrip("\n") if m and code[:m.start()].strip() else code


_REPAIR = {"python": str, "vegalite": _repair_vegalite, "lilypond": str, "mermaid": _repair_mermaid, "svg": _repair_svg,
           "latex": _repair_latex, "asymptote": str, "html": _repair_html}


if __name__ == "__main__":
    from vc2.eval.tasks import load_tasks
    wanted = sys.argv[1:]
    for t in load_tasks():
        if not wanted or t.id in wanted or t.language in wanted:
            print(f"=== {t.language}/{t.id}\n{build_prompt(t)}\n")
            if not wanted:
                break
