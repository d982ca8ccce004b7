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
    # VisCode-Multi's other four: the program writes its own image file
    "r": {
        "pass": 'df <- read.csv("data.csv")\nbarplot(df$value, names.arg = df$category, col = "steelblue", main = "theta")\n',
        "syntax_error": "x <- c(1, 2\nplot(x)\n",
        "runtime_error": 'plot(1:3)\nstop("boom")\n',
        "blank_image": 'png("empty.png")\nplot.new()\ninvisible(dev.off())\n',
        "timeout": "repeat {}\n",
    },
    "cpp": {
        "pass": "#include <fstream>\nint main() {\n  std::ofstream f(\"out.ppm\", std::ios::binary);\n  f << \"P6\\n64 48\\n255\\n\";\n"
                "  for (int y = 0; y < 48; ++y) for (int x = 0; x < 64; ++x) { unsigned char c[3] = {(unsigned char)(x * 4), "
                "(unsigned char)(y * 5), 120}; f.write((char*)c, 3); }\n}\n",
        "syntax_error": "int main() { return 0 }\n",
        "runtime_error": "#include <stdexcept>\nint main() { throw std::runtime_error(\"boom\"); }\n",
        "blank_image": "#include <cstdio>\nint main() { FILE* f = std::fopen(\"white.pgm\", \"wb\"); std::fprintf(f, \"P5\\n40 30\\n255\\n\");"
                       " for (int i = 0; i < 1200; ++i) std::fputc(255, f); std::fclose(f); }\n",
        "timeout": "int main() { volatile unsigned long n = 0; while (true) { n = n + 1; } }\n",
    },
    "javascript": {
        "pass": 'const fs = require("fs");\nconst rows = fs.readFileSync("data.csv", "utf8").trim().split("\\n").slice(1);\n'
                'const bars = rows.map((r, i) => `<rect x="${10 + i * 40}" y="${100 - +r.split(",")[1] * 10}" width="30" '
                'height="${+r.split(",")[1] * 10}" fill="teal"/>`);\n'
                'fs.writeFileSync("chart.svg", `<svg xmlns="http://www.w3.org/2000/svg" width="140" height="110">${bars.join("")}</svg>`);\n',
        "syntax_error": "let x = ;\n",
        "runtime_error": "undefinedFunction();\n",
        "blank_image": 'require("fs").writeFileSync("b.svg", \'<svg xmlns="http://www.w3.org/2000/svg" width="50" height="50"/>\');\n',
        "timeout": "while (true) {}\n",
    },
    "typescript": {
        "pass": 'import * as fs from "fs";\nconst values: number[] = [3, 7, 5];\n'
                'const bars: string = values.map((v: number, i: number) => `<rect x="${10 + i * 40}" y="${100 - v * 10}" width="30" '
                'height="${v * 10}" fill="purple"/>`).join("");\n'
                'fs.writeFileSync("chart.svg", `<svg xmlns="http://www.w3.org/2000/svg" width="140" height="110">${bars}</svg>`);\n',
        "syntax_error": 'const n: number = "seven";\n',  # a type error: not valid TypeScript
        "runtime_error": 'throw new Error("boom");\n',
        "blank_image": 'import * as fs from "fs";\nfs.writeFileSync("b.svg", \'<svg xmlns="http://www.w3.org/2000/svg" width="50" height="50"/>\');\n',
        "timeout": "while (true) {}\n",
    },
}
TIMEOUTS = {"python": 5, "svg": 0.5, "vegalite": 1, "latex": 5, "asymptote": 5, "lilypond": 8, "html": 8,
            "mermaid": 0.5, "r": 5, "cpp": 8, "javascript": 3, "typescript": 20}  # budgets for the "timeout" case only

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


def test_every_language_has_its_five_cases():
    assert set(CASES) == set(languages.LANGUAGES)


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


# ---------------------------------------------------------------------------------------------------
# VisCode-Multi's other four languages

def test_r_ggplot2_and_its_own_file_first(tmp_path):
    code = ('library(ggplot2)\ndf <- data.frame(x = c("a", "b"), y = c(3, 5))\n'
            'p <- ggplot(df, aes(x, y)) + geom_col(fill = "tomato")\nprint(p)\nggsave("mine.png", p, width = 4, height = 3)\n')
    out = executors.run("r", code, tmp_path)
    assert out.status == "pass", out.error
    assert out.detail["images"][0] == "mine.png" and out.detail["images"][1].startswith("_vc2_fig")  # printed too


def test_js_syntax_error_raised_by_the_program_is_a_runtime_error(tmp_path):
    out = executors.run("javascript", 'JSON.parse("{not json");\n', tmp_path / "a")
    assert out.status == "runtime_error" and "SyntaxError" in out.error
    out = executors.run("javascript", 'console.log("no picture");\n', tmp_path / "b")
    assert out.status == "no_image" and "wrote no image" in out.error


def test_cpp_memory_limit_applies(tmp_path):
    code = "#include <vector>\n#include <cstdio>\nint main() { std::vector<char> v(6ull << 30, 1); std::printf(\"%d\", v[7]); }\n"
    out = executors.run("cpp", code, tmp_path)
    assert out.status == "runtime_error", (out.status, out.error)


@pytest.mark.parametrize("lang, code, missing", [
    ("r", "library(nosuchpkg)\nplot(1)\n", "nosuchpkg"),
    ("cpp", "#include <nosuch/lib.h>\nint main() {}\n", "nosuch/lib.h"),
    ("javascript", 'require("nosuch-lib");\n', "nosuch-lib"),
])
def test_missing_library_errors_name_it(tmp_path, lang, code, missing):
    """The error text the record's missing_dependency pattern reads (dataset validation classifies on it)."""
    import re
    out = executors.run(lang, code, tmp_path)
    assert out.status in ("runtime_error", "syntax_error")
    m = re.search(languages.get(lang).missing_dependency, out.error)
    assert m and m.group(1) == missing, out.error


# ---------------------------------------------------------------------------------------------------
# the Python chart libraries VisPlotBench's tasks name, each rendered the way its users would

LIBRARY_CASES = {
    "bokeh": ("from bokeh.plotting import figure, show\np = figure(width=900, height=300, x_range=['a', 'b', 'c'])\n"
              "p.vbar(x=['a', 'b', 'c'], top=[3, 7, 5], width=0.8)\nshow(p)\n", "_vc2_bokeh0.png"),
    "altair": ("import altair as alt, pandas as pd\ndf = pd.read_csv('data.csv')\n"
               "alt.Chart(df).mark_bar().encode(x='category', y='value').show()\n", "_vc2_altair0.png"),
    "chartify": ("import chartify, pandas as pd\ndf = pd.read_csv('data.csv')\nch = chartify.Chart(x_axis_type='categorical')\n"
                 "ch.plot.bar(data_frame=df, categorical_columns='category', numeric_column='value')\nch.show('png')\n",
                 "_vc2_chartify0.png"),
    "holoviews": ("import holoviews as hv\nhv.extension('bokeh')\nhv.save(hv.Curve([(0, 1), (1, 3), (2, 2)]), 'curve.png')\n",
                  "curve.png"),
    "pyvista": ("import pyvista as pv\np = pv.Plotter()\np.add_mesh(pv.Cone(), color='orange')\np.show()\n", "_vc2_pyvista0.png"),
    "pyecharts": ("from pyecharts.charts import Pie\nPie().add('', [('a', 3), ('b', 7)]).render('pie.html')\n",
                  "_vc2_pyecharts0.png"),
}


@pytest.mark.parametrize("lib", sorted(LIBRARY_CASES))
def test_python_chart_libraries(tmp_path, lib):
    code, image = LIBRARY_CASES[lib]
    out = executors.run("python", code, tmp_path, data_csv=CSV)
    assert out.status == "pass", out.error
    assert out.image.name == image


def test_bokeh_figure_wider_than_a_page_is_not_cut(tmp_path):
    from PIL import Image
    out = executors.run("python", LIBRARY_CASES["bokeh"][0], tmp_path)
    assert out.status == "pass" and Image.open(out.image).width > 850, Image.open(out.image).size
