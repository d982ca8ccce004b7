"""The fixed answers of the golden-verdict test (tests/eval/test_golden_verdicts.py): per language, the
tricky and failing kinds a model writes, besides every bundled reference solution.

    python tests/eval/golden_answers.py --regenerate    # re-record tests/assets/golden_verdicts.json (deliberately)

Kinds: syntax / runtime error, blank output, no image or text only, a timeout (run with a 3 s limit),
two code blocks (the extraction keeps the last complete one), reasoning before the code, no fence at all.
"""
PY_OK = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 5])\nplt.title('ok')\n"
VL_OK = ('{"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": [{"a": "x", "b": 3}, '
         '{"a": "y", "b": 5}]}, "mark": "bar", "encoding": {"x": {"field": "a", "type": "nominal"}, '
         '"y": {"field": "b", "type": "quantitative"}}}')
LY_OK = "\\version \"2.24.0\"\n\\relative c' { c4 d e f | g1 }\n"
MM_OK = "flowchart LR\n  A[Start] --> B{Check}\n  B -->|yes| C[Done]\n"
SVG_OK = '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80"><rect x="10" y="10" width="100" height="60" fill="teal"/></svg>'
TEX_OK = ("\\documentclass[tikz]{standalone}\n\\begin{document}\n\\begin{tikzpicture}\n"
          "\\draw[fill=orange] (0,0) rectangle (2,1);\n\\end{tikzpicture}\n\\end{document}\n")
ASY_OK = "size(100);\nfilldraw(unitsquare, lightblue, black);\n"
HTML_OK = ('<html><body><canvas id="c" width="200" height="100"></canvas><script>'
           'const g = document.getElementById("c").getContext("2d"); g.fillStyle = "purple"; g.fillRect(10, 10, 150, 60);'
           '</script></body></html>')


def fence(tag, code):
    return f"```{tag}\n{code}\n```"


def two_blocks(tag, broken, good):
    return f"A first try:\n{fence(tag, broken)}\nOn second thought, here is the full version:\n{fence(tag, good)}\n"


def reasoning(tag, good):
    return f"<think>The user wants a chart; I will keep it simple.</think>\nHere is the code:\n{fence(tag, good)}\nIt draws the chart."


ANSWERS = {
    "python": {
        "syntax": fence("python", "import matplotlib.pyplot as plt\nplt.plot([1, 2]\n"),
        "runtime": fence("python", "import matplotlib.pyplot as plt\nplt.plot(undefined_name)\n"),
        "blank": fence("python", "import matplotlib.pyplot as plt\nfig = plt.figure()\n"),
        "no_image": fence("python", "print('no chart here')\n"),
        "timeout": fence("python", "while True:\n    pass\n"),
        "two_blocks": two_blocks("python", "plt.plot(", PY_OK),
        "reasoning": reasoning("python", PY_OK),
        "no_fence": PY_OK,
    },
    "vegalite": {
        "syntax": fence("json", VL_OK[:-3]),
        "runtime": fence("json", '{"mark": "bar", "encoding": {"x": {"field": "a", "type": "nominal"}}, "data": {"url": "https://example.com/d.csv"}}'),
        "blank": fence("json", '{"data": {"values": []}, "mark": "point"}'),
        "no_image": fence("json", "[1, 2, 3]"),
        "two_blocks": two_blocks("json", '{"mark": ', VL_OK),
        "reasoning": reasoning("json", VL_OK),
        "no_fence": VL_OK,
    },
    "lilypond": {
        "syntax": fence("lilypond", "\\relative c' { c4 d e f"),
        "runtime": fence("lilypond", "\\relative c' { c4 \\nosuchcommand }"),
        "blank": fence("lilypond", "\\markup { \" \" }"),
        "timeout": fence("lilypond", "#(let loop () (loop))\n\\relative c' { c4 }"),
        "two_blocks": two_blocks("lilypond", "\\relative c' {", LY_OK),
        "reasoning": reasoning("lilypond", LY_OK),
        "no_fence": LY_OK,
    },
    "mermaid": {
        "syntax": fence("mermaid", "flowchart LR\n  A --> \n  --> B((("),
        "runtime": fence("mermaid", "pie\n  \"a\" : -5\n"),
        "two_blocks": two_blocks("mermaid", "flowchart", MM_OK),
        "reasoning": reasoning("mermaid", MM_OK),
        "no_fence": MM_OK,
    },
    "svg": {
        "syntax": fence("svg", '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect'),
        "runtime": fence("svg", "<html><body>not svg</body></html>"),
        "blank": fence("svg", '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100"></svg>'),
        "two_blocks": two_blocks("svg", "<svg><rect", SVG_OK),
        "reasoning": reasoning("svg", SVG_OK),
        "no_fence": SVG_OK,
    },
    "latex": {
        "syntax": fence("latex", TEX_OK.replace("\\draw", "\\drawx")),
        "runtime": fence("latex", TEX_OK.replace("\\begin{tikzpicture}", "\\begin{tikzpicture}\\pgfmathparse{1/0}")),
        "blank": fence("latex", "\\documentclass[tikz]{standalone}\n\\begin{document}\n\\begin{tikzpicture}\n\\end{tikzpicture}\n\\end{document}\n"),
        "timeout": fence("latex", "\\documentclass{article}\n\\def\\x{\\x}\n\\begin{document}\\x\\end{document}\n"),
        "two_blocks": two_blocks("latex", "\\documentclass{", TEX_OK),
        "reasoning": reasoning("latex", TEX_OK),
        "no_fence": TEX_OK,
    },
    "asymptote": {
        "syntax": fence("asy", "size(100);\ndraw((0,0)--(1,1)"),
        "runtime": fence("asy", "size(100);\ndraw(undefinedpath);\n"),
        "blank": fence("asy", "size(100);\ndraw((0,0)--(1,1), invisible);\n"),
        "timeout": fence("asy", "while(true) {}\n"),
        "two_blocks": two_blocks("asy", "size(", ASY_OK),
        "reasoning": reasoning("asy", ASY_OK),
        "no_fence": ASY_OK,
    },
    "html": {
        "syntax": fence("html", "<html><body><script>function (</script></body></html>"),
        "runtime": fence("html", "<html><body><script>undefinedThing.draw();</script></body></html>"),
        "blank": fence("html", "<html><body><canvas width='200' height='100'></canvas></body></html>"),
        "no_image": fence("html", "<html><body><p>Just some text, no chart.</p></body></html>"),
        "two_blocks": two_blocks("html", "<html><body><canvas", HTML_OK),
        "reasoning": reasoning("html", HTML_OK),
        "no_fence": HTML_OK,
    },
}


if __name__ == "__main__":
    import sys
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import test_golden_verdicts
    test_golden_verdicts.regenerate()
