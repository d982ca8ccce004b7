"""Answer -> code: fences, reasoning, drafts, and each language's repairs (vc2/eval/extract.py and the
language records' `repair`).

Run: python -m pytest tests/eval/test_extract.py
"""
import json

import pytest

from vc2.eval import languages
from vc2.eval import extract as E

PY = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"


@pytest.mark.parametrize("answer, code, method", [
    (f"Here you go:\n```python\n{PY}\n```\nThis draws a line.", PY, "fenced"),
    (f"```py\n{PY}\n```", PY, "fenced"),
    (f"```Python3\n{PY}\n```", PY, "fenced"),
    (f"```\n{PY}\n```", PY, "unlabeled"),
    (f"Sure!\n```python\n{PY}\n", PY, "unclosed"),                      # cut off before the closing fence
    (f"```python\n{PY}```", PY, "fenced"),                              # fence glued to the last line
    (PY, PY, "whole"),                                                   # no fences at all
    (f"```bash\npip install matplotlib\n```\n```python\n{PY}\n```", PY, "fenced"),
    (f"```python\n{PY}\n```\nTo save instead:\n```python\nplt.savefig('a.png')\n```", PY, "fenced"),
    (f"1. Run this:\n   ```python\n   {PY.replace(chr(10), chr(10) + '   ')}\n   ```", PY, "fenced"),  # indented
    (f"~~~python\n{PY}\n~~~", PY, "fenced"),
    (f"```javascript\n{PY}\n```", PY, "other-tag"),
    (f"{PY}<|im_end|>", PY, "whole"),
])
def test_extract_python(answer, code, method):
    got = E.extract("python", answer)
    assert (got.code, got.method) == (code, method)
    assert got.raw == answer


def test_extract_takes_the_final_answer_after_thinking_and_drafts():
    draft = "import matplotlib.pyplot as plt\nplt.bar([1], [2])"
    final = "import matplotlib.pyplot as plt\nplt.barh([1], [2])\nplt.show()"
    answer = f"<think>\nFirst try:\n```python\n{draft}\n```\nHmm, horizontal is better.\n</think>\n```python\n{final}\n```"
    assert E.extract_code("python", answer) == final
    # drafts without think tags: the last complete block is the answer
    assert E.extract_code("python", f"Draft:\n```python\n{draft}\n```\nFinal:\n```python\n{final}\n```") == final
    # cut off while thinking: the last draft is the best we have
    assert E.extract_code("python", f"<think>\n```python\n{draft}\n```\nand then\n```python\n{final}") == final
    # code only inside the reasoning, nothing after it but prose
    assert E.extract_code("python", f"<think>\n```python\n{draft}\n```\n</think>\nDone, see above.") == draft
    # <answer> tags
    assert E.extract_code("python", f"<answer>\n```python\n{final}\n```\n</answer>") == final


PROGRAM = {"python": PY, "vegalite": '{"mark": "bar"}', "lilypond": "\\relative c' { c4 d e f }",
           "mermaid": "graph TD\n  A --> B", "svg": '<svg xmlns="http://www.w3.org/2000/svg"><rect width="4" height="4"/></svg>',
           "latex": "\\documentclass{standalone}\n\\begin{document}x\\end{document}",
           "asymptote": "size(100);\ndraw((0,0)--(1,1));",
           "html": "<!DOCTYPE html>\n<html><body><p>x</p></body></html>",
           "r": 'x <- c(1, 2)\npng("a.png")\nplot(x)\ndev.off()',
           "cpp": "#include <cstdio>\nint main() { std::puts(\"x\"); }",
           "javascript": 'const fs = require("fs");\nfs.writeFileSync("a.svg", "<svg/>");',
           "typescript": 'import * as fs from "fs";\nconst s: string = "<svg/>";\nfs.writeFileSync("a.svg", s);'}


def test_every_language_has_a_sample_program():
    assert set(PROGRAM) == set(languages.LANGUAGES)


@pytest.mark.parametrize("lang, tag", [(name, tag) for name, lang in languages.LANGUAGES.items() for tag in sorted(lang.tags)])
def test_every_accepted_tag(lang, tag):
    code = PROGRAM[lang]
    got = E.extract(lang, f"Answer:\n```{tag}\n{code}\n```\nbye")
    assert got.code == code and got.method == "fenced", (lang, tag)
    # the info string never leaks into the code (the original harness kept e.g. 'vega-lite' as line 1)
    assert not got.code.startswith(tag)


def test_extract_prefers_own_tag_over_other_blocks():
    ans = "```html\n<p>not this</p>\n```\n```mermaid\ngraph LR\n  A --> B\n```\n```text\nexplanation\n```"
    assert E.extract_code("mermaid", ans) == "graph LR\n  A --> B"


def test_extract_empty_answer():
    assert E.extract("svg", "").code == "" and E.extract("svg", None).method == "whole"


def test_vegalite_json_repairs():
    spec = {"mark": "point", "encoding": {"x": {"field": "a // not a comment", "type": "quantitative"}}}
    assert E.extract_code("vegalite", f"```json\n{json.dumps(spec)}\n```") == json.dumps(spec)  # valid: as written
    commented = ('```json\n{\n  // the mark\n  "mark": "point", /* inline */\n  "encoding": {"x": '
                 '{"field": "a // not a comment", "type": "quantitative",},},\n}\n```')
    assert json.loads(E.extract_code("vegalite", commented)) == spec
    trailing = f"{json.dumps(spec)}\n\nThis spec draws points. Let me know!"
    assert json.loads(E.extract_code("vegalite", trailing)) == spec
    broken = '```json\n{"mark": "point", "encoding": \n```'
    assert E.extract_code("vegalite", broken) == '{"mark": "point", "encoding":'  # kept: its error is feedback
    escaped = '{"mark": "text", "encoding": {"text": {"value": "a \\"b\\" {c}"}}} trailing'
    assert json.loads(E.extract_code("vegalite", escaped))["encoding"]["text"]["value"] == 'a "b" {c}'


def test_latex_wrapping():
    full = "\\documentclass{article}\n\\begin{document}\nHi\n\\end{document}"
    assert E.extract_code("latex", f"```latex\n{full}\n```") == full
    assert E.extract_code("latex", f"```latex\n{full}\nextra words\n```") == full
    frag = "\\usepackage{pgfplots}\n\\usetikzlibrary{arrows}\n\\begin{tikzpicture}\n\\draw (0,0) -- (1,1);\n\\end{tikzpicture}"
    got = E.extract_code("latex", f"```tex\n{frag}\n```")
    assert got.startswith("\\documentclass[border=5pt]{standalone}")
    pre, body = got.split("\\begin{document}")
    assert "\\usetikzlibrary{arrows}" in pre and "\\begin{tikzpicture}" in body and body.rstrip().endswith("\\end{document}")
    no_class = "\\usepackage{tikz}\n\\begin{document}\n\\tikz \\draw (0,0) circle (1);\n\\end{document}"
    assert E.extract_code("latex", no_class) == "\\documentclass[border=5pt]{standalone}\n" + no_class


def test_html_and_svg_repairs():
    page = "<!DOCTYPE html>\n<html><body><canvas></canvas></body></html>"
    assert E.extract_code("html", f"```html\n{page}\n```") == page
    assert E.extract_code("html", f"Here:\n{page}\nEnjoy.") == page
    frag = E.extract_code("html", '```html\n<div id="c"></div>\n<script>document.getElementById("c").textContent = "hi";</script>\n```')
    assert frag.startswith("<!DOCTYPE html>") and '<div id="c"></div>' in frag and frag.rstrip().endswith("</html>")
    svg = E.extract_code("svg", 'The image:\n<svg width="10" height="10"><circle r="4"/></svg>\nNice, right?')
    assert svg == '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle r="4"/></svg>'
    xml = '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><g/></svg>'
    assert E.extract_code("svg", f"```xml\n{xml}\n```") == xml


def test_mermaid_prose_before_diagram_is_dropped():
    assert E.extract_code("mermaid", "Here is the diagram:\n\nflowchart LR\n  A --> B\n") == "flowchart LR\n  A --> B"
    fenced = "```mermaid\n%%{init: {'theme': 'forest'}}%%\ngraph TD\n  A --> B\n```"
    assert E.extract_code("mermaid", fenced) == "%%{init: {'theme': 'forest'}}%%\ngraph TD\n  A --> B"
