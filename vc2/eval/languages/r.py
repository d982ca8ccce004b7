"""R (base graphics, ggplot2, lattice): `Rscript --vanilla` running r_driver.R, code written to plot.R.

The driver parses the script first (a parse error is a syntax_error), then evaluates it as Rscript
would, printing top-level values (so a bare ggplot object draws). Plots drawn without a device of
their own go to PNG files (_vc2_fig001.png, 7 x 7 in at 100 dpi) instead of Rplots.pdf; a file the
script wrote itself (png(), ggsave(), svg(), pdf()) is preferred. Packages come from Debian
(r-cran-*, sandbox_images/apt-packages.txt); `library(x)` of one we lack is the program's error
("there is no package called 'x'"), which dataset validation classifies as a missing dependency.
No warm server: R's start-up is a fraction of a second, ggplot2's import about a second.
"""
import re

from vc2.eval.executors.common import HERE, driver_failure, execute, tool_version, written_image
from vc2.eval.executors.status import EXIT_RUNTIME, EXIT_SYNTAX
from vc2.eval.languages import Language


def render(code, workdir, mode, timeout_s):
    before = {p.name for p in workdir.iterdir()}
    (workdir / "plot.R").write_text(code, encoding="utf-8")
    res, out = execute(["Rscript", "--vanilla", HERE / "r_driver.R", str(EXIT_SYNTAX), str(EXIT_RUNTIME)],
                       workdir, mode, timeout_s)
    failed = out or driver_failure(res)
    if failed:
        return failed
    return written_image(workdir, before | {"plot.R"}, mode, max(timeout_s - res.wall_s, 5.0), vector=(".svg", ".pdf"),
                         fallback=sorted(workdir.glob("_vc2_fig*.png")))


def version():
    return "R " + tool_version(["Rscript", "--version"], r"version (\S+)")


LANGUAGE = Language(
    name="r", display="R", aliases=("rscript", "rlang"),
    fence="r", tags=frozenset({"r", "rscript", "splus"}),
    instruction="You write R plotting code. Write one complete R script that draws the figure described below "
                "with base graphics or ggplot2. It runs with Rscript, without a display and without network "
                "access; write the figure to a PNG file (png(...) then dev.off(), or ggsave(...)). Reply with "
                "the whole script in a single ```{fence} code block.",
    data="csv", data_access='Read it with `df <- read.csv("data.csv")`.',
    no_image_hint="Make sure the plot is drawn and written to a file (png(...) ... dev.off(), or ggsave(...)).",
    looks_complete=lambda c: re.search(r"<-|\blibrary\(|\b(ggplot|plot|barplot|hist|png)\(", c) is not None,
    draws=r"\b(ggplot|qplot|ggsave|plot|barplot|hist|boxplot|pie|image|contour|filled\.contour|persp|heatmap|"
          r"matplot|curve|mosaicplot|pairs|dotchart|stripchart|symbols|xyplot|levelplot|plot_ly|png|jpeg|svg|pdf|"
          r"bitmap|grid\.newpage)\s*\(",
    missing_dependency=r"there is no package called [‘'\"]([\w.]+)[’'\"]",
    render=render, version=version, timeout_s=60.0,
    tools=("Rscript", "rsvg-convert", "pdftoppm", "pdfinfo"), image="r",
    apt=("r-base-core", "r-cran-ggplot2", "r-cran-dplyr", "r-cran-tidyr", "r-cran-reshape2", "r-cran-scales",
         "r-cran-rcolorbrewer", "r-cran-viridis", "r-cran-gridextra", "r-cran-lattice",
         "librsvg2-bin", "poppler-utils", "fonts-dejavu-core", "fonts-liberation"),
)
