"""Every language executor on five programs: one that draws, a syntax error, a runtime error, a blank
render and one that never ends -> the expected Outcome.status. Plus: missing tool -> infra_error.

Run: python -m pytest tests/eval/test_executors.py   (needs the renderers: sandbox_images/install_host.sh)
Declarative languages (SVG, Vega-Lite, Mermaid) cannot loop forever; their "never ends" case is a heavy
render given a budget far below its run time, which exercises the same kill path.
"""
import time
from pathlib import Path

import pytest

from vc2.eval import executors, languages

CSV = "category,value\nalpha,3\nbeta,7\ngamma,5\n"

CASES = {
    "python": {
        "pass": "import pandas as pd\nimport matplotlib.pyplot as plt\ndf = pd.read_csv('data.csv')\n"
                "plt.bar(df['category'], df['value'])\nplt.title(r'$\\theta$ per category')\n",
        "syntax_error": "import matplotlib.pyplot as plt\nplt.plot([1, 2]\n",
        "runtime_error": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nraise RuntimeError('boom')\n",
        "blank_image": "import matplotlib.pyplot as plt\nfig = plt.figure()\nplt.axis('off')\n",
        "timeout": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nwhile True:\n    pass\n",
    },
    "svg": {
        "pass": '<svg xmlns="http://www.w3.org/2000/svg" width="240" height="120">'
                '<rect x="10" y="10" width="60" height="90" fill="steelblue"/>'
                '<text x="90" y="60" font-family="Arial" font-size="20">\\theta label</text></svg>',
        "syntax_error": '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100"><rect></svg>',
        "runtime_error": "<html><body>not an svg root</body></html>",
        "blank_image": '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100">'
                       '<rect width="200" height="100" fill="white"/></svg>',
        "timeout": '<svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000"><filter id="f">'
                   '<feTurbulence baseFrequency="0.002" numOctaves="10"/><feGaussianBlur stdDeviation="40"/>'
                   '</filter><rect width="4000" height="4000" filter="url(#f)"/></svg>',
    },
    "vegalite": {
        "pass": '{"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"url": "data.csv"}, '
                '"mark": "bar", "title": "a \\\\theta \\"quoted\\"", "encoding": {"x": {"field": "category", '
                '"type": "nominal"}, "y": {"field": "value", "type": "quantitative"}}}',
        "syntax_error": '{"mark": "bar",, }',
        # unfetchable data is an error here, not a chart with empty axes
        "runtime_error": '{"data": {"url": "https://example.com/cars.json"}, "mark": "point", '
                         '"encoding": {"x": {"field": "a", "type": "quantitative"}}}',
        "blank_image": '{"mark": "point"}',
        "timeout": '{"data": {"sequence": {"start": 0, "stop": 3000000}}, "mark": "point", '
                   '"encoding": {"x": {"field": "data", "type": "quantitative"}}}',
    },
    "latex": {
        "pass": "\\documentclass{standalone}\n\\usepackage{pgfplots}\n\\pgfplotsset{compat=1.18}\n\\begin{document}\n"
                "\\begin{tikzpicture}\\begin{axis}[ybar, symbolic x coords={alpha,beta,gamma}, xtick=data, title={$\\theta$}]\n"
                "\\addplot table[col sep=comma, x=category, y=value] {data.csv};\n\\end{axis}\\end{tikzpicture}\n\\end{document}\n",
        "syntax_error": "\\documentclass{standalone}\n\\begin{document}\n\\foo\n\\end{document}\n",
        "runtime_error": "\\documentclass{standalone}\n\\usepackage{tikz}\n\\begin{document}\n\\pgfmathparse{1/0}\n\\end{document}\n",
        "blank_image": "\\documentclass{article}\n\\begin{document}\n\\thispagestyle{empty}\\mbox{}\n\\end{document}\n",
        "timeout": "\\documentclass{article}\n\\begin{document}\n\\def\\a{\\a}\\a\n\\end{document}\n",
    },
    "asymptote": {
        "pass": 'size(200);\ndraw(unitcircle, blue+2);\nlabel("$\\theta$", (0,0));\n',
        "syntax_error": "draw((0,0)--(1,1)\n",
        "runtime_error": "real x = 1/0;\n",
        "blank_image": "size(100);\ndraw((0,0)--(1,1), invisible);\n",
        "timeout": "while(true) {}\n",
    },
    "lilypond": {
        "pass": '\\version "2.24.0"\n\\relative c\' { c4 d e f | g1\\f }\n',
        "syntax_error": "\\relative c { c4 d e f\n",
        "runtime_error": '#(error "boom")\n\\relative c\' { c4 }\n',
        "blank_image": '\\markup { " " }\n',
        "timeout": "#(let loop () (loop))\n",
    },
    "html": {
        "pass": '<html><head><script src="https://cdn.jsdelivr.net/npm/chart.js"></script></head><body>'
                '<canvas id="c" width="400" height="300"></canvas><script>fetch("data.csv").then(r => r.text())'
                '.then(t => { const rows = t.trim().split("\\n").slice(1).map(l => l.split(","));'
                'new Chart(document.getElementById("c"), {type: "bar", data: {labels: rows.map(r => r[0]),'
                'datasets: [{label: "value", data: rows.map(r => +r[1])}]}}); });</script></body></html>',
        "syntax_error": "<html><body><h1>x</h1><script>let x = ;</script></body></html>",
        "runtime_error": "<html><body><h1>x</h1><script>undefinedFunction();</script></body></html>",
        "blank_image": "<html><body><div></div></body></html>",
        "timeout": "<html><body><script>while (true) {}</script></body></html>",
    },
    "mermaid": {
        "pass": "flowchart TD\n  A[Start] --> B{Is it?}\n  B -->|Yes| C[OK]\n  B -->|No| D[End]\n",
        "syntax_error": "sequenceDiagram\n  Alice->>Bob: hi\n  end\n",
        "runtime_error": "gantt\n  dateFormat YYYY-MM-DD\n  section A\n  Task :a1, 2024-13-45, 3d\n",  # parses, cannot draw
        "blank_image": "flowchart TD\n",
        "timeout": "flowchart TD\n  A --> B\n",
    },
}
TIMEOUTS = {"python": 5, "svg": 0.5, "vegalite": 1, "latex": 5, "asymptote": 5, "lilypond": 8, "html": 8,
            "mermaid": 0.5}  # budgets for the "timeout" case only

PARAMS = [(lang, want) for lang, cases in CASES.items() for want in cases]


@pytest.mark.parametrize("lang,want", PARAMS, ids=[f"{l}-{w}" for l, w in PARAMS])
def test_outcome(tmp_path, lang, want):
    t0 = time.monotonic()
    out = executors.run(lang, CASES[lang][want], tmp_path / "w", data_csv=CSV,
                        timeout_s=TIMEOUTS[lang] if want == "timeout" else None)
    assert out.status == want, f"{lang}/{want}: got {out.status}: {out.error}"
    assert out.sandbox == "bwrap"
    if want == "pass":
        assert out.image.suffix == ".png" and out.image.parent == tmp_path / "w" and not out.error
    elif want == "blank_image":
        assert out.image is not None and "blank" in out.error
    else:
        assert out.error, "a failure must say why"
    if want == "timeout":
        assert time.monotonic() - t0 < TIMEOUTS[lang] + 15


def test_error_messages_are_useful(tmp_path):
    out = executors.run("python", CASES["python"]["runtime_error"], tmp_path)
    assert "RuntimeError: boom" in out.error and 'File "plot.py", line 3' in out.error
    assert "py_driver" not in out.error  # the driver's own frame is dropped


def test_missing_tool_is_infra_error(tmp_path, monkeypatch):
    real = executors.shutil.which
    monkeypatch.setattr(executors.shutil, "which", lambda t: None if t == "rsvg-convert" else real(t))
    out = executors.run("svg", CASES["svg"]["pass"], tmp_path)
    assert out.status == "infra_error" and "rsvg-convert" in out.error and "install_host.sh" in out.error


def test_unknown_language_and_unavailable_sandbox_are_value_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown language"):
        executors.run("cobol", "x", tmp_path)
    with pytest.raises(ValueError, match="docker"):
        executors.run("svg", CASES["svg"]["pass"], tmp_path, sandbox="docker")


def test_python_saved_file_and_several_figures(tmp_path):
    code = ("import matplotlib.pyplot as plt\nplt.figure(); plt.plot([1, 3, 2])\nplt.figure(); plt.bar([1, 2], [3, 4])\n")
    out = executors.run("python", code, tmp_path / "a")
    assert out.status == "pass" and out.detail["images"] == ["_vc2_fig0.png", "_vc2_fig1.png"]
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.savefig('chart.png')\nplt.close()\n"
    out = executors.run("python", code, tmp_path / "b")
    assert out.status == "pass" and out.image.name == "chart.png"
    out = executors.run("python", "print('no plot here')\n", tmp_path / "c")
    assert out.status == "no_image"


def test_asymptote_3d_runs_under_xvfb(tmp_path):
    out = executors.run("asymptote", "import three;\nsize(200);\ndraw(unitsphere, red);\n", tmp_path)
    assert out.status == "pass" and out.detail["3d"], out.error


def test_lilypond_multi_page_score_passes(tmp_path):
    notes = " ".join(["c4 d e f g a b c"] * 60)
    out = executors.run("lilypond", f"\\version \"2.24.0\"\n\\relative c' {{ {notes} }}\n", tmp_path)
    assert out.status == "pass", out.error
    assert len(out.detail["images"]) > 1 and out.image.name == "score-page1.png"


def test_latex_xelatex_for_fontspec_and_csv_optional(tmp_path):
    doc = "\\documentclass{article}\n\\usepackage{fontspec}\n\\begin{document}\nGrüße \\LaTeX\n\\end{document}\n"
    out = executors.run("latex", doc, tmp_path / "a", data_csv=CSV)  # data.csv present, not used: still fine
    assert out.status == "pass" and out.detail["compiler"] == "xelatex", out.error


def test_html_cdn_libraries_are_served_offline_by_major(tmp_path):
    libs = ['https://cdn.jsdelivr.net/npm/vega@5', 'https://cdn.jsdelivr.net/npm/vega-lite@5',
            'https://cdn.jsdelivr.net/npm/vega-embed@6', 'https://cdn.plot.ly/plotly-2.27.0.min.js',
            'https://d3js.org/d3.v3.min.js', 'https://example.com/not-a-library.js']
    page = ("<html><head>" + "".join(f'<script src="{u}"></script>' for u in libs) + "</head><body><div id='v'></div>"
            "<script>vegaEmbed('#v', {data: {values: [{a: 'x', b: 2}, {a: 'y', b: 3}]}, mark: 'bar', encoding: "
            "{x: {field: 'a'}, y: {field: 'b', type: 'quantitative'}}}); if (d3.version[0] !== '3') throw Error(d3.version);"
            "</script></body></html>")
    out = executors.run("html", page, tmp_path)
    assert out.status == "pass", out.error
    served = "\n".join(out.detail["served"])
    for want in ("vega/5/", "vega-lite/5/", "vega-embed/6/", "plotly.js-dist-min/2/", "d3/3/"):
        assert want in served
    assert out.detail["blocked"] == ["https://example.com/not-a-library.js"]


def test_unshare_mode_renders_too(tmp_path):
    for lang in ("python", "html"):
        out = executors.run(lang, CASES[lang]["pass"], tmp_path / lang, data_csv=CSV, sandbox="unshare")
        assert out.status == "pass" and out.sandbox == "unshare", (lang, out.error)


def test_describe_sandbox_names_mode_and_versions():
    d = executors.describe_sandbox()
    assert d["sandbox"] == "bwrap"
    assert set(languages.LANGUAGES) <= set(d) and "matplotlib" in d["python"]


@pytest.mark.parametrize("page,want", [
    # a model's JavaScript dumped into <body> renders as text: not a chart
    ("<html><body>import { Chart } from 'chart.js';\nconst c = new Chart(ctx, {type: 'bar'});</body></html>", "no_image"),
    ("const data = [1, 2, 3];\nfunction draw() { return data.map(x => x * 2); }", "no_image"),
    ("<html><body><p>Sales chart</p><canvas width='300' height='150'></canvas></body></html>", "no_image"),  # empty canvas
    # a chart drawn with plain coloured boxes is a chart
    ("<html><body><div style='width:40px;height:120px;background:#4a7'></div>"
     "<div style='width:40px;height:60px;background:#a47'></div></body></html>", "pass"),
])
def test_html_text_only_page_is_not_a_chart(tmp_path, page, want):
    out = executors.run("html", page, tmp_path)
    assert out.status == want, (out.status, out.error)
