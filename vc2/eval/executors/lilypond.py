"""LilyPond: `lilypond --png` at 110 dpi, each page cropped to the music plus a margin (an A4 page is
98 % white). Not -dcrop: it squeezes a long score onto one page until ghostscript fails.

Source in score.ly. Any `error:` line in the log fails the task even when lilypond exits 0 and draws
something (it carries on after most errors, e.g. a Guile error in embedded Scheme): "syntax error" /
"unknown escaped string" / "not a note name" are syntax_error, the rest runtime_error. A multi-page
score passes with page 1 as the image and every page listed in detail["images"] (it was a failure in
the original harness). Measured here: median 1.8 s per score cold, 1.6 s of it start-up; warm
(vc2/eval/warm.py) a Guile loop (lily_server.scm) pays that once and forks per score: ~0.6 s, with the
same log, exit code and byte-identical PNG.
"""
import re

from vc2.eval.warm import WarmJob
from vc2.eval import images
from vc2.eval.executors.common import Outcome, crop, execute, png_size, tool_version, trim

TOOLS = ["lilypond"]
MODULES = []
TIMEOUT_S = 120.0
WARM = True
RESOLUTION = 110
OPTIONS = ("--png", f"-dresolution={RESOLUTION}", "-dno-point-and-click", "-dinclude-settings=_vc2_settings.ly", "-o", "score")
SYNTAX = re.compile(r"syntax error|unknown escaped string|not a note name|unterminated|unexpected|"
                    r"unknown command|not a (duration|pitch)|end quote missing")


def render(code, workdir, mode, timeout_s, warm=None):
    (workdir / "score.ly").write_text(code, encoding="utf-8")
    # drop the "Music engraving by LilyPond" footer, which would survive the crop as fake ink;
    # included before the score, so a tagline the code sets itself still wins
    (workdir / "_vc2_settings.ly").write_text("\\header { tagline = ##f }\n")
    res, out = execute(["lilypond", *OPTIONS, "score.ly"], workdir, mode, timeout_s, mem_mb=4096,
                       warm=warm and (warm, WarmJob("lilypond", server_args=OPTIONS)))
    if out:
        return out
    log = res.stderr + res.stdout
    errors = [l for l in log.splitlines() if ": error:" in l or l.startswith("fatal error")]
    if res.returncode != 0 or errors:
        # the error line plus the source excerpt lilypond prints under it
        text = "\n".join(l for l in log.splitlines() if not re.match(r"^(Processing|Parsing|Interpreting|Preprocessing|"
                         r"Finding|Fitting|Drawing|Layout|Converting|Success)", l))
        first = errors[0] if errors else ""
        return Outcome("syntax_error" if SYNTAX.search(first) else "runtime_error", trim(text))
    pngs = sorted(workdir.glob("score*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))  # page10 after page9
    if not pngs:
        return Outcome("no_image", trim(log) or "lilypond produced no PNG")
    scale = min(images.render_scale(*png_size(p)) for p in pngs)
    if scale < 1:  # a huge paper size: render again at a resolution that fits (cold; rare)
        for p in pngs:
            p.unlink()
        options = tuple(f"-dresolution={max(1, int(RESOLUTION * scale))}" if o.startswith("-dresolution=") else o
                        for o in OPTIONS)
        res, out = execute(["lilypond", *options, "score.ly"], workdir, mode, timeout_s, mem_mb=4096)
        if out:
            return out
        pngs = sorted(workdir.glob("score*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if not pngs:
            return Outcome("no_image", "lilypond produced no PNG at the reduced resolution")
    for p in pngs:
        crop(p)
    return Outcome("pass", image=pngs[0], detail={"images": [p.name for p in pngs]})


def version():
    return "lilypond " + tool_version(["lilypond", "--version"], r"LilyPond (\S+)")
