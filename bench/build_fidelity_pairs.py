"""Build the graded pair set that bench/bench_fidelity.py scores: bench/fidelity_pairs/{pairs.jsonl, *.png}.

    python bench/build_fidelity_pairs.py            # re-render every variant (~5 min on 2 cores)

Three bundled tasks per language (24 references) are the references, as the evaluator sees them (the
bundled task image). Each gets candidates in six classes, rendered by the real executors from edits
of the task's reference solution (written out below, so a reader can see what each variant changes):
  5 same picture: the reference code re-rendered ("rerender"), rendered at another size ("size": the
    code's own width/height/figsize where it has one, else the re-render scaled to 60 %), the
    re-render with its white background made transparent ("transparent") or with a 15 % white margin
    ("margin");
  4 style: colours, fonts, line widths, grid, themes ("style_a", "style_b");
  3 data: other numbers / notes / labels, same kind of chart ("data_a", "data_b");
  2 type: the same data drawn as another kind of chart (bar -> line, pie -> bar, staff -> tablature);
  1 unrelated: the two other references of the language and one of the next language;
  0 blank: what the language's toolchain draws for an empty program (white or transparent).
Candidates are shrunk like the bundled references (palette PNG, at most 400 px) to keep the set small.
An edit that no longer matches the reference code is an error, so the set cannot rot silently.
"""
import io
import json
import math
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from vc2.eval import executors
from vc2.eval.tasks import LANGUAGES, load_tasks

OUT = Path(__file__).parent / "fidelity_pairs"
CLASS = {"rerender": 5, "size": 5, "transparent": 5, "margin": 5, "style_a": 4, "style_b": 4,
         "data_a": 3, "data_b": 3, "type": 2}


def svg_pie(fracs, colours, labels, width=420, height=280, stroke='stroke="white" stroke-width="2"', font=14):
    """svg_3's pie, with other fractions (its data variants and its type variant need real geometry)."""
    parts, a0 = [], -math.pi / 2
    for f, c in zip(fracs, colours):
        a1 = a0 + 2 * math.pi * f
        x0, y0 = 140 + 110 * math.cos(a0), 140 + 110 * math.sin(a0)
        x1, y1 = 140 + 110 * math.cos(a1), 140 + 110 * math.sin(a1)
        parts.append(f'<path d="M140,140 L{x0:.1f},{y0:.1f} A110,110 0 {int(f > 0.5)} 1 {x1:.1f},{y1:.1f} Z" fill="{c}"/>')
        a0 = a1
    legend = "".join(f'<rect x="280" y="{70 + 30 * i}" width="16" height="16" fill="{c}"/>'
                     f'<text x="304" y="{83 + 30 * i}">{lab} {round(100 * f)}%</text>'
                     for i, (f, c, lab) in enumerate(zip(fracs, colours, labels)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 420 280" '
            f'font-family="DejaVu Sans, sans-serif"><rect width="420" height="280" fill="white"/>'
            f'<g {stroke}>{"".join(parts)}</g><g font-size="{font}">{legend}</g></svg>')


PIE_C = ["#8d6e63", "#f48fb1", "#ffca28", "#d7b48e"]
PIE_L = ["Bread", "Cakes", "Pastries", "Cookies"]

# Per reference: variant -> list of (old, new) substitutions on the code, ("data", old, new) on the
# task's CSV, or ("code", full_text) replacing the whole program. "size" absent = the scaled re-render.
VARIANTS = {
    "python_1": {
        "size": [('figsize=(7, 4.5)', 'figsize=(5, 3.2)')],
        "style_a": [('color="#2a9d8f", edgecolor="#1d3557"', 'color="#e76f51", edgecolor="#6d597a"')],
        "style_b": [('ax.grid(axis="y", color="#dddddd", zorder=0)', 'ax.grid(axis="both", color="#999999", linestyle="--", zorder=0)'),
                    ('ax.set_title("Quayside station: rentals per day")', 'ax.set_title("Quayside station: rentals per day", fontsize=16, fontweight="bold")')],
        "data_a": [("data", "Mon,132", "Mon,210"), ("data", "Sat,243", "Sat,95"), ("data", "Wed,121", "Wed,180")],
        "data_b": [("data", "Tue,148", "Tue,60"), ("data", "Fri,190", "Fri,250"), ("data", "Sun,211", "Sun,120"), ("data", "Thu,166", "Thu,70")],
        "type": [('bars = ax.bar(df["day"], df["rentals"], color="#2a9d8f", edgecolor="#1d3557", zorder=2)\nax.bar_label(bars, padding=3)',
                  'ax.plot(df["day"], df["rentals"], color="#2a9d8f", marker="o", zorder=2)')],
    },
    "python_4": {
        "size": [('figsize=(8, 4.5)', 'figsize=(6, 4)')],
        "style_a": [('"r-o"', '"b-o"'), ('"g--s"', '"k--s"'), ('color="purple"', 'color="orange"')],
        "style_b": [('ax.grid(linestyle=":")', 'ax.grid(False)'), ('ax.legend()', 'ax.legend(loc="lower right", frameon=False)')],
        "data_a": [('df["A"], "r-o"', 'df["A"][::-1].values, "r-o"')],
        "data_b": [('df["B"], "g--s"', 'df["B"] - 3, "g--s"'), ('df["C"], color', 'df["C"] + 2, color')],
        "type": [('ax.plot(df["day"], df["A"], "r-o", label="A")\nax.plot(df["day"], df["B"], "g--s", label="B")\n'
                  'ax.plot(df["day"], df["C"], color="purple", linestyle=":", marker="^", label="C")',
                  'ax.stackplot(df["day"], df["A"], df["B"], df["C"], labels=["A", "B", "C"], colors=["red", "green", "purple"])')],
    },
    "python_6": {
        "size": [('figsize=(7, 5)', 'figsize=(9, 5)')],
        "style_a": [('s=60', 's=150'), ('plt.cm.tab10(i)', 'plt.cm.Set2(i)')],
        "style_b": [('ax.grid(True)', 'ax.grid(False)'), ('ax.legend(title="Species")', 'ax.legend(title="Species", loc="lower right")')],
        "data_a": [("data", "Arvena,12,41", "Arvena,22,31"), ("data", "Borelia,24,58", "Borelia,10,58"),
                   ("data", "Cressa,8,30", "Cressa,20,45"), ("data", "Cressa,10,35", "Cressa,24,38")],
        "data_b": [('g["width"], g["length"]', 'g["length"], g["width"]')],
        "type": [('ax.scatter(g["width"], g["length"], s=60, alpha=0.75, edgecolors="white", color=plt.cm.tab10(i), label=name)',
                  'ax.hist(g["length"], bins=5, alpha=0.75, color=plt.cm.tab10(i), label=name)')],
    },
    "vegalite_1": {
        "size": [('"width": 420, "height": 280', '"width": 300, "height": 220')],
        "style_a": [('"darkcyan"', '"darkorange"')],
        "style_b": [('"fontSize": 10}', '"fontSize": 14}'), ('"axis": {"labelAngle": 0}', '"axis": {"labelAngle": -45}')],
        "data_a": [("data", "Maps,312", "Maps,120"), ("data", "Prints,97", "Prints,300")],
        "data_b": [("data", "Ceramics,185", "Ceramics,260"), ("data", "Clocks,276", "Clocks,150"), ("data", "Glass,228", "Glass,90")],
        "type": [('{"mark": {"type": "bar", "color": "darkcyan"}}', '{"mark": {"type": "line", "point": true, "color": "darkcyan"}}')],
    },
    "vegalite_4": {
        "size": [('"width": 420, "height": 260', '"width": 560, "height": 300')],
        "style_a": [('"range": ["red", "goldenrod", "purple"]', '"range": ["steelblue", "olive", "black"]')],
        "style_b": [('"strokeWidth": 2}', '"strokeWidth": 5, "strokeDash": [6, 3]}')],
        "data_a": [('"data": {"url": "data.csv"},', '"data": {"url": "data.csv"}, "transform": [{"calculate": '
                    '"datum.fruit == \'pears\' ? 5.5 - datum.price : datum.price", "as": "price"}],')],
        "data_b": [('"data": {"url": "data.csv"},', '"data": {"url": "data.csv"}, "transform": [{"filter": "datum.month <= 7"}],')],
        "type": [('"mark": {"type": "line", "point": true, "strokeWidth": 2}', '"mark": {"type": "bar"}')],
    },
    "vegalite_11": {
        "size": [('"width": 320, "height": 320', '"width": 240, "height": 240'),
                 ('"innerRadius": 70, "outerRadius": 130', '"innerRadius": 52, "outerRadius": 98')],
        "style_a": [('"category10"', '"set2"')],
        "style_b": [('"stroke": "white", "strokeWidth": 2', '"stroke": "black", "strokeWidth": 3')],
        "data_a": [("data", "rent,950", "rent,300"), ("data", "savings,300", "savings,900")],
        "data_b": [("data", "food,420", "food,1000"), ("data", "leisure,230", "leisure,60")],
        "type": [('"mark": {"type": "arc", "innerRadius": 70, "outerRadius": 130, "stroke": "white", "strokeWidth": 2},', '"mark": "bar",'),
                 ('"theta": {"field": "amount", "type": "quantitative"},',
                  '"y": {"field": "amount", "type": "quantitative"}, "x": {"field": "category", "type": "nominal"},')],
    },
    "lilypond_1": {
        "size": [('\\version "2.24.0"', '\\version "2.24.0"\n#(set-global-staff-size 16)')],
        "style_a": [('\\clef treble', '\\override NoteHead.color = #darkblue \\override Stem.color = #darkblue \\clef treble')],
        "style_b": [('title = "Morning on the Quay"', 'title = \\markup \\italic \\huge "Morning on the Quay"')],
        "data_a": [("d4 g a b | c b a g |", "d4 e fis g | a g fis e |")],
        "data_b": [("d'4 c b a | g a b c |", "b'4 d g, b | c e a, c |"), ("a4. b8 c4 a", "e'2 d4 c")],
        "type": [("\\relative c' {\n  \\clef treble \\key g \\major \\time 4/4 \\tempo \"Andante\"",
                  "\\new TabStaff \\relative c' {\n  \\time 4/4")],
    },
    "lilypond_2": {
        "size": [('\\layout { }', '\\layout { #(layout-set-staff-size 15) }')],
        "style_a": [('\\clef treble \\key c', '\\override NoteHead.color = #red \\clef treble \\key c')],
        "style_b": [('title = "Little Waltz"', 'title = \\markup \\bold \\huge "Little Waltz"'),
                    ('\\with { instrumentName = "Piano" } ', '')],
        "data_a": [("e2\\p g4 | f4 d2 | e4\\< g c | c2.\\!", "c2\\p e4 | d4 b2 | c4\\< e g | g2.\\!")],
        "data_b": [("c4 <e g> <e g> | g,4 <f' g> <f g>", "c4 g' e | g,4 d' b")],
        "type": [('\\new PianoStaff \\with { instrumentName = "Piano" } <<\n    \\new Staff = "upper" \\upper\n    \\new Staff = "lower" \\lower\n  >>',
                  '<<\n    \\new TabStaff \\upper\n    \\new TabStaff \\lower\n  >>')],
    },
    "lilypond_3": {
        "size": [('\\layout { }', '\\layout { #(layout-set-staff-size 26) }')],
        "style_a": [('\\new Lyrics \\lyricsto', '\\new Lyrics \\with { \\override LyricText.font-shape = #\'italic '
                     '\\override LyricText.font-size = #2 } \\lyricsto')],
        "style_b": [('\\clef treble \\key f', '\\override NoteHead.color = #darkgreen \\clef treble \\key f')],
        "data_a": [("a4 a | c8 bes a4 | g8 g a bes | c4 a |", "f4 f | a8 g f4 | e8 e f g | a4 f |")],
        "data_b": [("Shine, shine, lit -- tle light, guide the boats home through the night",
                    "Sail, sail, o -- ver sea, bring the nets back home to me")],
        "type": [('\\new Voice = "mel" \\melody', '\\new TabStaff \\new TabVoice = "mel" \\melody')],
    },
    "mermaid_1": {
        "style_a": [('style F fill:#c8f7c5,stroke:#2e7d32', 'style F fill:#ffd6a5,stroke:#e76f51')],
        "style_b": [('flowchart TD', '%%{init: {"theme": "forest"}}%%\nflowchart TD')],
        "data_a": [('[Restock]', '[Return to shelf]'), ('[Write off]', '[Recycle parts]')],
        "data_b": [('    E --> F\n', '    E --> G[Notify customer]\n    G --> F\n')],
        "type": [("code", "stateDiagram-v2\n    [*] --> Returned\n    Returned --> Inspect: damaged\n    Inspect --> WriteOff\n"
                          "    Returned --> Restock: not damaged\n    WriteOff --> UpdateInventory\n"
                          "    Restock --> UpdateInventory\n    UpdateInventory --> [*]\n")],
    },
    "mermaid_7": {
        "style_a": [('pie showData', '%%{init: {"theme": "forest"}}%%\npie showData')],
        "style_b": [('pie showData', '%%{init: {"themeVariables": {"pieStrokeWidth": "4px", "pieOuterStrokeWidth": "6px"}}}%%\npie showData')],
        "data_a": [('"Sleep" : 8', '"Sleep" : 4'), ('"Study" : 3', '"Study" : 7')],
        "data_b": [('"Classes" : 6', '"Classes" : 2'), ('"Sport" : 1.5', '"Sport" : 5')],
        "type": [("code", 'xychart-beta\n    title "A student\'s weekday (hours)"\n'
                          '    x-axis [Sleep, Classes, Study, Sport, Friends, Other]\n    y-axis "Hours" 0 --> 9\n'
                          '    bar [8, 6, 3, 1.5, 2.5, 3]\n')],
    },
    "mermaid_10": {
        "size": [('xychart-beta', '%%{init: {"xyChart": {"width": 500, "height": 350}}}%%\nxychart-beta')],
        "style_a": [('xychart-beta', '%%{init: {"themeVariables": {"xyChart": {"plotColorPalette": "#e76f51, #264653"}}}}%%\nxychart-beta')],
        "style_b": [('xychart-beta', '%%{init: {"theme": "forest"}}%%\nxychart-beta')],
        "data_a": [('bar [320, 610, 980, 1150, 540]', 'bar [900, 700, 400, 650, 1100]')],
        "data_b": [('line [180, 420, 760, 820, 390]', 'line [600, 300, 900, 200, 1000]')],
        "type": [('bar [320, 610, 980, 1150, 540]', 'line [320, 610, 980, 1150, 540]')],
    },
    "svg_1": {
        "size": [('width="400" height="300" viewBox', 'width="640" height="480" viewBox')],
        "style_a": [('fill="#4caf50"', 'fill="#3f51b5"')],
        "style_b": [('font-family="DejaVu Sans, sans-serif"', 'font-family="DejaVu Serif, serif"'),
                    ('font-size="16" font-weight="bold"', 'font-size="20" font-style="italic"')],
        "data_a": [('<rect x="60" y="124" width="40" height="126"/>', '<rect x="60" y="200" width="40" height="50"/>'),
                   ('<rect x="190" y="100" width="40" height="150"/>', '<rect x="190" y="180" width="40" height="70"/>'),
                   ('<text x="80" y="118">42</text>', '<text x="80" y="194">17</text>'),
                   ('<text x="210" y="94">50</text>', '<text x="210" y="174">23</text>')],
        "data_b": [('<rect x="255" y="166" width="40" height="84"/>', '<rect x="255" y="60" width="40" height="190"/>'),
                   ('<rect x="125" y="145" width="40" height="105"/>', '<rect x="125" y="210" width="40" height="40"/>'),
                   ('<text x="275" y="160">28</text>', '<text x="275" y="54">63</text>'),
                   ('<text x="145" y="139">35</text>', '<text x="145" y="204">13</text>')],
        "type": [('<g fill="#4caf50">\n    <rect x="60" y="124" width="40" height="126"/>\n    <rect x="125" y="145" width="40" height="105"/>\n'
                  '    <rect x="190" y="100" width="40" height="150"/>\n    <rect x="255" y="166" width="40" height="84"/>\n'
                  '    <rect x="320" y="112" width="40" height="138"/>\n  </g>',
                  '<polyline fill="none" stroke="#4caf50" stroke-width="3" points="80,124 145,145 210,100 275,166 340,112"/>\n'
                  '  <g fill="#4caf50"><circle cx="80" cy="124" r="5"/><circle cx="145" cy="145" r="5"/><circle cx="210" cy="100" r="5"/>'
                  '<circle cx="275" cy="166" r="5"/><circle cx="340" cy="112" r="5"/></g>')],
    },
    "svg_3": {
        "size": [('width="420" height="280" viewBox', 'width="300" height="200" viewBox')],
        "style_a": [('#8d6e63', '#1e88e5'), ('#f48fb1', '#43a047')],
        "style_b": [('stroke="white" stroke-width="2"', 'stroke="black" stroke-width="4"'), ('font-size="14"', 'font-size="18"')],
        "data_a": [("code", svg_pie([0.35, 0.15, 0.30, 0.20], PIE_C, PIE_L))],
        "data_b": [("code", svg_pie([0.60, 0.05, 0.10, 0.25], PIE_C, PIE_L))],
        "type": [("code", '<svg xmlns="http://www.w3.org/2000/svg" width="420" height="280" viewBox="0 0 420 280" '
                          'font-family="DejaVu Sans, sans-serif"><rect width="420" height="280" fill="white"/>'
                          '<line x1="30" y1="250" x2="250" y2="250" stroke="black"/>'
                          + "".join(f'<rect x="{40 + 52 * i}" y="{250 - 4 * v}" width="40" height="{4 * v}" fill="{c}"/>'
                                    for i, (v, c) in enumerate(zip([50, 25, 15, 10], PIE_C)))
                          + '<g font-size="14">' + "".join(
                              f'<rect x="280" y="{70 + 30 * i}" width="16" height="16" fill="{c}"/><text x="304" y="{83 + 30 * i}">'
                              f'{lab} {v}%</text>' for i, (v, c, lab) in enumerate(zip([50, 25, 15, 10], PIE_C, PIE_L)))
                          + '</g></svg>')],
    },
    "svg_4": {
        "size": [('width="450" height="350" viewBox', 'width="675" height="525" viewBox')],
        "style_a": [('fill="darkred" fill-opacity="0.7"', 'fill="navy" fill-opacity="0.9"')],
        "style_b": [('r="5"', 'r="9"'), ('font-size="11"', 'font-size="14"')],
        "data_a": [('<circle cx="250" cy="160" r="5"/>', '<circle cx="250" cy="250" r="5"/>'),
                   ('<circle cx="365" cy="86" r="5"/>', '<circle cx="365" cy="200" r="5"/>'),
                   ('<circle cx="92" cy="264" r="5"/>', '<circle cx="92" cy="100" r="5"/>')],
        "data_b": [('<circle cx="128" cy="238" r="5"/>', '<circle cx="128" cy="80" r="5"/>'),
                   ('<circle cx="320" cy="118" r="5"/>', '<circle cx="320" cy="260" r="5"/>'),
                   ('<circle cx="185" cy="190" r="5"/>', '<circle cx="185" cy="60" r="5"/>'),
                   ('<circle cx="410" cy="60" r="5"/>', '<circle cx="410" cy="150" r="5"/>')],
        "type": [('<g fill="darkred" fill-opacity="0.7">',
                  '<polyline fill="none" stroke="darkred" stroke-width="2" points="92,264 128,238 160,225 185,190 210,199 '
                  '250,160 275,144 320,118 365,86 410,60"/>\n  <g fill="darkred" fill-opacity="0" display="none">')],
    },
    "latex_1": {
        "size": [('width=11cm, height=7cm', 'width=8cm, height=6cm')],
        "style_a": [('\\addplot[blue, mark=*]', '\\addplot[orange, mark=triangle*]'), ('\\addplot[red, mark=square*]', '\\addplot[black, mark=o]')],
        "style_b": [('grid=major, legend pos=north west', 'legend pos=south east'), ('\\addplot[blue, mark=*]', '\\addplot[blue, very thick, mark=*]')],
        "data_a": [("data", "1,78,102", "1,30,102"), ("data", "6,33,47", "6,90,47"), ("data", "12,86,117", "12,20,117")],
        "data_b": [("data", "3,59,75", "3,59,20"), ("data", "9,48,63", "9,48,130"), ("data", "11,81,110", "11,81,40")],
        "type": [('\\begin{axis}[width=11cm', '\\begin{axis}[ybar, bar width=4pt, width=11cm'),
                 ('\\addplot[blue, mark=*]', '\\addplot[fill=blue]'), ('\\addplot[red, mark=square*]', '\\addplot[fill=red]')],
    },
    "latex_2": {
        "size": [('width=10cm, height=7cm', 'width=13cm, height=8cm')],
        "style_a": [('fill=teal, draw=black', 'fill=orange!80, draw=none')],
        "style_b": [('bar width=18pt', 'bar width=30pt'), ('ylabel={Species},', 'ylabel={Species}, ymajorgrids, grid style={dashed},')],
        "data_a": [("data", "Alder,14", "Alder,22"), ("data", "Crane,21", "Crane,6")],
        "data_b": [("data", "Beck,9", "Beck,20"), ("data", "Dew,12", "Dew,3"), ("data", "Elm,17", "Elm,8")],
        "type": [('ybar, bar width=18pt, ', ''), ('\\addplot[fill=teal, draw=black]', '\\addplot[teal, thick, mark=*]')],
    },
    "latex_4": {
        "size": [('width=10cm, height=7cm', 'width=7cm, height=7cm')],
        "style_a": [('color=green!60!black', 'color=red'), ('mark=*', 'mark=square*')],
        "style_b": [('grid=both, grid style={gray!20}, ', ''), ('mark=*,', 'mark=*, mark size=4pt,')],
        "data_a": [("data", "41,55", "41,20"), ("data", "60,71", "60,30"), ("data", "18,25", "18,70")],
        "data_b": [("data", "73,84", "73,40"), ("data", "30,42", "30,85"), ("data", "80,95", "80,50")],
        "type": [('only marks, mark=*, color=green!60!black', 'ybar, bar width=6pt, fill=green!60!black')],
    },
    "asymptote_1": {
        "size": [('size(10cm, 6cm, IgnoreAspect)', 'size(7cm, 5cm, IgnoreAspect)')],
        "style_a": [('blue + linewidth(1)', 'red + linewidth(2)'), ('gray + dashed', 'green + dotted')],
        "style_b": [('blue + linewidth(1)', 'blue + linewidth(0.5) + dashed'), ('gray + dashed', 'black + linewidth(1.5)')],
        "data_a": [('cos(2x)', 'cos(3x)')],
        "data_b": [('exp(-x/4)', 'exp(-x/8)'), ('cos(2x)', 'sin(2x)')],
        "type": [('draw(graph(f, 0, 12, n=400), blue + linewidth(1));',
                  'for (int i = 0; i < 48; ++i) { real x = i / 4; fill(box((x, 0), (x + 0.2, f(x + 0.1))), blue); }')],
    },
    "asymptote_3": {
        "size": [('size(9cm, 0)', 'size(6cm, 0)')],
        "style_a": [('filldraw(bar, lightblue, black)', 'filldraw(bar, lightred, darkblue)')],
        "style_b": [('filldraw(bar, lightblue, black)', 'filldraw(bar, lightblue, black + linewidth(2))'),
                    ('linewidth(1));', 'linewidth(3));')],
        "data_a": [('{142, 168, 125, 151, 173}', '{90, 168, 60, 151, 200}')],
        "data_b": [('{142, 168, 125, 151, 173}', '{173, 151, 125, 168, 142}')],
        "type": [('path bar = box((x, 0), (x + 1, litres[i] * scale));\n  filldraw(bar, lightblue, black);',
                  'dot((x + 0.5, litres[i] * scale), blue + linewidth(6));\n'
                  '  if (i > 0) draw((x - 1, litres[i - 1] * scale)--(x + 0.5, litres[i] * scale), blue);')],
    },
    "asymptote_5": {
        "size": [('size(7cm)', 'size(10cm)')],
        "style_a": [('purple + linewidth(1.2)', 'orange + linewidth(2.5)')],
        "style_b": [('gray + dotted', 'black + dashed'), ('purple + linewidth(1.2)', 'purple + linewidth(0.6)')],
        "data_a": [('1 + cos(t)', '1 + 0.5 * cos(t)')],
        "data_b": [('1 + cos(t)', '1 + 0.6 * cos(3t)')],
        "type": [('draw(polargraph(r, 0, 2pi, operator ..), purple + linewidth(1.2));',
                  'draw(graph(r, 0, 2pi), purple + linewidth(1.2));')],
    },
    "html_1": {
        "size": [('width: 640px; height: 400px;', 'width: 480px; height: 320px;')],
        "style_a": [('backgroundColor: "#a0522d"', 'backgroundColor: "#4682b4"')],
        "style_b": [('borderRadius: 6', 'borderRadius: 0, borderColor: "black", borderWidth: 2')],
        "data_a": [("data", "Mon,84", "Mon,150"), ("data", "Sat,158", "Sat,40")],
        "data_b": [("data", "Tue,92", "Tue,20"), ("data", "Fri,131", "Fri,60"), ("data", "Sun,66", "Sun,140")],
        "type": [('type: "bar"', 'type: "line"')],
    },
    "html_2": {
        "size": [('width: 700px; height: 400px;', 'width: 900px; height: 500px;')],
        "style_a": [('"green"', '"darkorange"'), ('"royalblue"', '"black"')],
        "style_b": [('tension: 0.3, pointRadius: 4', 'tension: 0, pointRadius: 8'), ('position: "bottom"', 'position: "top"')],
        "data_a": [("data", "Jun,4200,4100", "Jun,1500,4100"), ("data", "Jul,4800,4600", "Jul,1200,4600"),
                   ("data", "Aug,4500,4700", "Aug,900,4700")],
        "data_b": [("data", "Mar,2100,1600", "Mar,2100,4500"), ("data", "Oct,2500,2100", "Oct,2500,4800")],
        "type": [('type: "line"', 'type: "bar"')],
    },
    "html_3": {
        "size": [('width: 520px; height: 360px;', 'width: 420px; height: 300px;')],
        "style_a": [('["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b8b8ff"]', '["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51"]')],
        "style_b": [('cutout: "55%"', 'cutout: "75%"'), ('position: "right"', 'position: "bottom"')],
        "data_a": [("data", "friends,48", "friends,10"), ("data", "poster,12", "poster,50")],
        "data_b": [("data", "social media,31", "social media,70"), ("data", "event,17", "event,3")],
        "type": [('type: "doughnut"', 'type: "bar"')],
    },
}

BLANK = {  # the toolchain's output for an empty program
    "python": 'import matplotlib.pyplot as plt\nplt.figure(figsize=(7, 4.5))\nplt.axis("off")\nplt.show()\n',
    "vegalite": '{"width": 300, "height": 200, "data": {"values": []}, "mark": "point", "config": {"view": {"stroke": null}}}',
    "lilypond": '\\version "2.24.0"\n\\header { tagline = ##f }\n\\markup { \\null }\n',
    "mermaid": 'flowchart TD\n    A[" "]\n    style A fill:#ffffff,stroke:#ffffff\n',
    "svg": '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300"></svg>',
    "latex": '\\documentclass[border=8pt]{standalone}\n\\begin{document}\n\\phantom{x}\n\\end{document}\n',
    "asymptote": 'size(5cm);\ndraw((0, 0)--(1, 1), invisible);\n',
    "html": '<!DOCTYPE html><html><body style="background: white"></body></html>',
}


def apply_edits(task, edits):
    code, data = task.reference_code, task.data
    for e in edits:
        if e[0] == "code":
            code = e[1]
            continue
        target, old, new = e if len(e) == 3 else ("code", *e)
        text = data if target == "data" else code
        if old not in text:
            raise ValueError(f"{task.id}: edit {old!r} does not match the reference {target}")
        text = text.replace(old, new)
        if target == "data":
            data = text
        else:
            code = text
    return code, data


def render(language, code, data_csv):
    with tempfile.TemporaryDirectory(prefix="vc2-pairs-") as tmp:
        out = executors.run(language, code, Path(tmp), data_csv=data_csv)
        if out.image is None or not Path(out.image).is_file():
            return out.status, out.error, None
        img = Image.open(out.image)
        img.load()
        return out.status, out.error, img


def shrink(img, max_side=400, keep_alpha=False):
    img = img.convert("RGBA")
    if not keep_alpha:
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    img.thumbnail((max_side, max_side), Image.LANCZOS)
    return img


def save(img, path, keep_alpha=False):
    """A palette PNG (with its transparency when keep_alpha), like the bundled task images."""
    img = img.convert("RGBA") if keep_alpha else img.convert("RGB")
    img = img.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    path.write_bytes(buf.getvalue())


def main():
    tasks = {t.id: t for t in load_tasks()}
    bases = list(VARIANTS)
    jobs = []  # (base, variant, language, code, data)
    for base in bases:
        t = tasks[base]
        for variant in ("rerender", "style_a", "style_b", "data_a", "data_b", "type", "size"):
            if variant == "rerender" or (variant == "size" and "size" not in VARIANTS[base]):
                jobs.append((base, "rerender" if variant == "rerender" else "size_scaled", t.language, t.reference_code, t.data))
                continue
            code, data = apply_edits(t, VARIANTS[base][variant])
            jobs.append((base, variant, t.language, code, data))
    for lang, code in BLANK.items():
        jobs.append((f"blank_{lang}", "blank", lang, code, None))
    jobs = [j for j in jobs if j[1] != "size_scaled"]  # made from the re-render below

    def do(job):
        base, variant, lang, code, data = job
        status, err, img = render(lang, code, data if lang in ("python", "vegalite", "latex", "html") else None)
        return job, status, err, img

    results = {}
    with ThreadPoolExecutor(2) as pool:
        for (base, variant, lang, _, _), status, err, img in pool.map(do, jobs):
            ok = status == "pass" or (variant == "blank" and status == "blank_image" and img is not None)
            print(f"{base:12s} {variant:10s} {status}" + ("" if ok else f": {err.strip().splitlines()[-1:]}"))
            if not ok:
                if variant == "blank":  # the toolchain drew nothing at all: a white page stands in for it
                    img = Image.new("RGB", (400, 300), "white")
                else:
                    sys.exit(f"{base} {variant}: the variant must render (status {status}); fix its edits")
            results[(base, variant)] = img

    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    rows = []
    for lang in LANGUAGES:
        lang_bases = [b for b in bases if tasks[b].language == lang]
        nxt = LANGUAGES[(LANGUAGES.index(lang) + 1) % len(LANGUAGES)]
        other_lang_bases = [b for b in bases if tasks[b].language == nxt]
        for i, base in enumerate(lang_bases):
            ref = f"{base}.png"
            shutil.copyfile(tasks[base].reference_image, OUT / ref)  # the bundled task image, as the evaluator uses it
            rer = shrink(results[(base, "rerender")])
            cands = {"rerender": rer}
            if "size" in VARIANTS[base]:
                cands["size"] = shrink(results[(base, "size")])
            else:
                cands["size"] = rer.resize((int(rer.width * 0.6), int(rer.height * 0.6)), Image.LANCZOS)
            # transparent: the white background (exactly white pixels) becomes alpha 0
            t = np.array(rer.convert("RGBA"))
            t[(t[..., :3] == 255).all(axis=2)] = 0
            cands["transparent"] = Image.fromarray(t, "RGBA")
            m = Image.new("RGB", (int(rer.width * 1.3), int(rer.height * 1.3)), "white")
            m.paste(rer.convert("RGB"), (int(rer.width * 0.15), int(rer.height * 0.15)))
            cands["margin"] = m
            for v in ("style_a", "style_b", "data_a", "data_b", "type"):
                cands[v] = shrink(results[(base, v)])
            for v, img in cands.items():
                name = f"{base}__{v}.png"
                save(img, OUT / name, keep_alpha=v == "transparent")
                rows.append({"language": lang, "ref": ref, "cand": name, "variant": v, "class": CLASS[v]})
            for other in [b for b in lang_bases if b != base] + other_lang_bases[i % len(other_lang_bases):][:1]:
                rows.append({"language": lang, "ref": ref, "cand": f"{other}.png", "variant": f"unrelated:{other}", "class": 1})
            rows.append({"language": lang, "ref": ref, "cand": f"blank_{lang}.png", "variant": "blank", "class": 0})
        blank = results[(f"blank_{lang}", "blank")]
        save(shrink(blank, keep_alpha=True), OUT / f"blank_{lang}.png", keep_alpha=True)
    with open(OUT / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(rows)} pairs, {len(list(OUT.glob('*.png')))} images, {size / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
