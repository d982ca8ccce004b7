"""Prompt construction, self-debug messages and code extraction from model answers.

Run: python -m pytest tests/eval/test_prompts.py
"""
import json

import pytest

from vc2.eval import prompts as P
from vc2.eval.tasks import LANGUAGES, Task, load_tasks

CSV = "month,rainfall_mm,station\nJan,81.5,North\nFeb,60,North\nMar,55.2,South\nApr,40,South\nMay,38.1,East\nJun,12,East\n"


def task(lang="python", data=CSV, **over):
    kw = dict(language=lang, id=f"{lang}_1", description="Plot monthly rainfall as vertical bars.",
              style="Blue bars, a light grid and the title 'Rainfall'.", data=data, used_lib=["matplotlib"],
              vis_cate="Bars", subtype="vertical-bar")
    kw.update(over)
    return Task(**kw)


# ---------------------------------------------------------------------------------------------------
# prompts

def test_prompt_has_description_style_setup_and_data_head():
    [msg] = P.build_messages(task())
    assert msg["role"] == "user"
    text = msg["content"]
    for part in ("Plot monthly rainfall as vertical bars.", "Blue bars, a light grid and the title 'Rainfall'.",
                 "matplotlib", "```python", "data.csv", 'pd.read_csv("data.csv")',
                 "6 rows x 3 columns", "month (str)", "rainfall_mm (float)", "station (str)",
                 "month,rainfall_mm,station\nJan,81.5,North", "May,38.1,East", "first 5 of 6 rows"):
        assert part in text, part
    assert "Jun,12,East" not in text  # only the head is shown
    # the harness's real order: description, style, setup, data
    idx = [text.index(s) for s in ("Task:", "Style:", "Setup:", "Data:")]
    assert idx == sorted(idx)


def test_prompt_per_language_fence_and_data_rules():
    for lang in LANGUAGES:
        text = P.build_prompt(task(lang, used_lib=["x-lib"], data=CSV if lang in ("python", "vegalite", "latex", "html") else None))
        assert f"```{P.FENCE[lang]}" in text and "x-lib" in text and "Task:" in text, lang
        assert ("Data:" in text) == (lang in ("python", "vegalite", "latex", "html")), lang
    assert '"url": "data.csv"' in P.build_prompt(task("vegalite"))
    assert "pgfplotstableread" in P.build_prompt(task("latex"))
    asy = P.build_prompt(task("asymptote", data="real[] t = {1, 2, 3};"))
    assert "```asy\nreal[] t = {1, 2, 3};\n```" in asy
    assert "Data:" not in P.build_prompt(task("svg", data=None, style=""))
    assert "Style:" not in P.build_prompt(task("svg", data=None, style=""))
    assert "Setup: LilyPond.\n" in P.build_prompt(task("lilypond", data=None, used_lib=["lilypond"])) + "\n"
    assert "Setup: Vega-Lite.\n" in P.build_prompt(task("vegalite", used_lib=["vega-lite"]))
    assert "Setup: Asymptote, using graph." in P.build_prompt(task("asymptote", data=None, used_lib=["asymptote", "graph"]))


def test_system_message_is_optional():
    assert [m["role"] for m in P.build_messages(task(), system="Be brief.")] == ["system", "user"]


def test_long_data_is_cut():
    big = "a,b\n" + "".join(f"{i},{'x' * 900}\n" for i in range(20))
    text = P.build_prompt(task(data=big))
    assert len(text) < P.MAX_DATA_CHARS + 1500 and "[...]" in text


def test_bundled_prompts_render(tmp_path):
    # every bundled task yields a prompt that carries its own description and, if any, its data head
    for t in load_tasks():
        text = P.build_prompt(t)
        assert t.description.strip() in text
        if t.data_csv:
            assert t.data_csv.strip().splitlines()[1] in text


# ---------------------------------------------------------------------------------------------------
# self-debug messages

def test_debug_message_keeps_head_and_final_error():
    tb = ["Traceback (most recent call last):"] + [f'  File "x.py", line {i}, in f{i}\n    g()' for i in range(400)]
    tb.append("ZeroDivisionError: division by zero")
    msg = P.debug_message("python", "runtime_error", "\n".join(tb))
    assert msg.startswith("The code above failed with this error:")
    assert "Traceback (most recent call last):" in msg and "ZeroDivisionError: division by zero" in msg
    assert "lines omitted" in msg and len(msg) < 2600
    assert "```python code block" in msg


def test_debug_message_keeps_error_line_from_the_middle_of_a_log():
    log = ["This is pdfTeX"] + [f"(/usr/share/texmf/pkg{i}.sty)" for i in range(200)]
    log += ["! Undefined control sequence.", "l.12 \\badmacro"] + [f"Overfull hbox {i}" for i in range(200)]
    msg = P.debug_message("tex", "runtime_error", "\n".join(log))
    assert "! Undefined control sequence." in msg and "l.12 \\badmacro" in msg and "```latex" in msg


def test_debug_message_statuses():
    assert "did not finish" in P.debug_message("svg", "timeout", "")
    blank = P.debug_message("html", "blank_image", None)
    assert "blank" in blank and "```html" in blank and "```\n\n```" not in blank
    assert "no image" in P.debug_message("python", "no_image", "")
    ansi = P.debug_message("mermaid", "syntax_error", "\x1b[31mParse error on line 2\x1b[0m")
    assert "Parse error on line 2" in ansi and "\x1b" not in ansi
    with pytest.raises(ValueError):
        P.debug_message("svg", "pass", "")
    with pytest.raises(ValueError):
        P.debug_message("cobol", "timeout", "")


def test_trim_error_short_text_untouched():
    assert P.trim_error("NameError: name 'x' is not defined") == "NameError: name 'x' is not defined"
    assert len(P.trim_error("y" * 10000)) < 2100


# ---------------------------------------------------------------------------------------------------
# extraction

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
    got = P.extract("python", answer)
    assert (got.code, got.method) == (code, method)
    assert got.raw == answer


def test_extract_takes_the_final_answer_after_thinking_and_drafts():
    draft = "import matplotlib.pyplot as plt\nplt.bar([1], [2])"
    final = "import matplotlib.pyplot as plt\nplt.barh([1], [2])\nplt.show()"
    answer = f"<think>\nFirst try:\n```python\n{draft}\n```\nHmm, horizontal is better.\n</think>\n```python\n{final}\n```"
    assert P.extract_code("python", answer) == final
    # drafts without think tags: the last complete block is the answer
    assert P.extract_code("python", f"Draft:\n```python\n{draft}\n```\nFinal:\n```python\n{final}\n```") == final
    # cut off while thinking: the last draft is the best we have
    assert P.extract_code("python", f"<think>\n```python\n{draft}\n```\nand then\n```python\n{final}") == final
    # code only inside the reasoning, nothing after it but prose
    assert P.extract_code("python", f"<think>\n```python\n{draft}\n```\n</think>\nDone, see above.") == draft
    # <answer> tags
    assert P.extract_code("python", f"<answer>\n```python\n{final}\n```\n</answer>") == final


@pytest.mark.parametrize("lang, tag", [(lang, tag) for lang in LANGUAGES for tag in sorted(P.TAGS[lang])])
def test_every_accepted_tag(lang, tag):
    code = {"python": PY, "vegalite": '{"mark": "bar"}', "lilypond": "\\relative c' { c4 d e f }",
            "mermaid": "graph TD\n  A --> B", "svg": '<svg xmlns="http://www.w3.org/2000/svg"><rect width="4" height="4"/></svg>',
            "latex": "\\documentclass{standalone}\n\\begin{document}x\\end{document}",
            "asymptote": "size(100);\ndraw((0,0)--(1,1));",
            "html": "<!DOCTYPE html>\n<html><body><p>x</p></body></html>"}[lang]
    got = P.extract(lang, f"Answer:\n```{tag}\n{code}\n```\nbye")
    assert got.code == code and got.method == "fenced", (lang, tag)
    # the info string never leaks into the code (the original harness kept e.g. 'vega-lite' as line 1)
    assert not got.code.startswith(tag)


def test_extract_prefers_own_tag_over_other_blocks():
    ans = "```html\n<p>not this</p>\n```\n```mermaid\ngraph LR\n  A --> B\n```\n```text\nexplanation\n```"
    assert P.extract_code("mermaid", ans) == "graph LR\n  A --> B"


def test_extract_empty_answer():
    assert P.extract("svg", "").code == "" and P.extract("svg", None).method == "whole"


def test_vegalite_json_repairs():
    spec = {"mark": "point", "encoding": {"x": {"field": "a // not a comment", "type": "quantitative"}}}
    assert P.extract_code("vegalite", f"```json\n{json.dumps(spec)}\n```") == json.dumps(spec)  # valid: as written
    commented = ('```json\n{\n  // the mark\n  "mark": "point", /* inline */\n  "encoding": {"x": '
                 '{"field": "a // not a comment", "type": "quantitative",},},\n}\n```')
    assert json.loads(P.extract_code("vegalite", commented)) == spec
    trailing = f"{json.dumps(spec)}\n\nThis spec draws points. Let me know!"
    assert json.loads(P.extract_code("vegalite", trailing)) == spec
    broken = '```json\n{"mark": "point", "encoding": \n```'
    assert P.extract_code("vegalite", broken) == '{"mark": "point", "encoding":'  # kept: its error is feedback
    escaped = '{"mark": "text", "encoding": {"text": {"value": "a \\"b\\" {c}"}}} trailing'
    assert json.loads(P.extract_code("vegalite", escaped))["encoding"]["text"]["value"] == 'a "b" {c}'


def test_latex_wrapping():
    full = "\\documentclass{article}\n\\begin{document}\nHi\n\\end{document}"
    assert P.extract_code("latex", f"```latex\n{full}\n```") == full
    assert P.extract_code("latex", f"```latex\n{full}\nextra words\n```") == full
    frag = "\\usepackage{pgfplots}\n\\usetikzlibrary{arrows}\n\\begin{tikzpicture}\n\\draw (0,0) -- (1,1);\n\\end{tikzpicture}"
    got = P.extract_code("latex", f"```tex\n{frag}\n```")
    assert got.startswith("\\documentclass[border=5pt]{standalone}")
    pre, body = got.split("\\begin{document}")
    assert "\\usetikzlibrary{arrows}" in pre and "\\begin{tikzpicture}" in body and body.rstrip().endswith("\\end{document}")
    no_class = "\\usepackage{tikz}\n\\begin{document}\n\\tikz \\draw (0,0) circle (1);\n\\end{document}"
    assert P.extract_code("latex", no_class) == "\\documentclass[border=5pt]{standalone}\n" + no_class


def test_html_and_svg_repairs():
    page = "<!DOCTYPE html>\n<html><body><canvas></canvas></body></html>"
    assert P.extract_code("html", f"```html\n{page}\n```") == page
    assert P.extract_code("html", f"Here:\n{page}\nEnjoy.") == page
    frag = P.extract_code("html", '```html\n<div id="c"></div>\n<script>document.getElementById("c").textContent = "hi";</script>\n```')
    assert frag.startswith("<!DOCTYPE html>") and '<div id="c"></div>' in frag and frag.rstrip().endswith("</html>")
    svg = P.extract_code("svg", 'The image:\n<svg width="10" height="10"><circle r="4"/></svg>\nNice, right?')
    assert svg == '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle r="4"/></svg>'
    xml = '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><g/></svg>'
    assert P.extract_code("svg", f"```xml\n{xml}\n```") == xml


def test_mermaid_prose_before_diagram_is_dropped():
    assert P.extract_code("mermaid", "Here is the diagram:\n\nflowchart LR\n  A --> B\n") == "flowchart LR\n  A --> B"
    fenced = "```mermaid\n%%{init: {'theme': 'forest'}}%%\ngraph TD\n  A --> B\n```"
    assert P.extract_code("mermaid", fenced) == "%%{init: {'theme': 'forest'}}%%\ngraph TD\n  A --> B"
