"""Prompt construction and self-debug messages (code extraction: test_extract.py).

Run: python -m pytest tests/eval/test_prompts.py
"""
import pytest

from vc2.eval import languages, prompts as P
from vc2.eval.tasks import Task, load_tasks

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
    for name, lang in languages.LANGUAGES.items():  # all twelve, VisCode-Multi's four included
        text = P.build_prompt(task(name, used_lib=["x-lib"], data=CSV if lang.data == "csv" else None))
        assert f"```{lang.fence}" in text and "x-lib" in text and "Task:" in text and lang.display in text, name
        assert ("Data:" in text) == (lang.data == "csv"), name
        if lang.data == "csv":
            assert "data.csv" in lang.data_access, name
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
