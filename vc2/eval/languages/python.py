"""Python (matplotlib / seaborn / plotly / bokeh / altair / chartify / holoviews / pyvista / pyecharts): a
fresh interpreter per task, code written to plot.py.

py_driver.py compiles it first (syntax_error), runs it with MPLBACKEND=Agg and data.csv in the cwd,
then saves every figure still open. Each library's "show" writes a PNG the way its users would get
one (py_show.py): plotly through kaleido, bokeh / chartify / holoviews pages and pyecharts charts
screenshotted in Debian's Chromium (offline: vendored scripts), altair through vl-convert, pyvista
off screen (EGL). An image the code saved itself (savefig + close, common in model answers and a
failure in the original harness) counts too. Warm (vc2/eval/warm.py): a fresh fork per task of a
parent that has imported matplotlib, numpy and pandas; the other libraries are imported by the
task, as cold. The font cache is pre-seeded so matplotlib does not rebuild it each run.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

from vc2.eval import images
from vc2.eval.executors.common import HERE, VENDOR, Outcome, driver_failure, execute, module_version, trim
from vc2.eval.languages import Language
from vc2.eval.warm import WarmJob

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# What a task's process sees besides the sandbox's environment: Chromium for kaleido and the page
# screenshots, the vendored scripts for those pages, VTK's headless OpenGL (no X server to try first).
ENV = {"BROWSER_PATH": "/usr/bin/chromium", "VC2_VENDOR": str(VENDOR), "VTK_DEFAULT_OPENGL_WINDOW": "vtkEGLRenderWindow"}


def _mpl_cache():
    """A matplotlib config dir with a prebuilt font list, built once per machine (our code, not the task's)."""
    cache = Path.home() / ".cache" / "vc2" / f"mplconfig-{module_version('matplotlib')}"
    if not list(cache.glob("fontlist-*.json")):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], capture_output=True,
                       env={"MPLCONFIGDIR": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache)}, timeout=300)
    return cache


def render(code, workdir, mode, timeout_s, warm=None):
    before = {p.name for p in workdir.iterdir()}
    (workdir / "plot.py").write_text(code, encoding="utf-8")
    mpl = workdir / ".mpl"
    shutil.copytree(_mpl_cache(), mpl, dirs_exist_ok=True)
    # the driver points MPLCONFIGDIR at ./.mpl (the sandbox runs in a private copy of workdir)
    # -I: the driver's own directory must not shadow the standard library, nor be importable by the task
    res, out = execute([sys.executable, "-I", HERE / "py_driver.py"], workdir, mode, timeout_s, env=ENV, mem_mb=4096,
                       pool=warm, job=WarmJob("python", preload_dir=str(_mpl_cache())))
    shutil.rmtree(mpl, ignore_errors=True)
    failed = out or driver_failure(res)  # the sandbox's own verdict (timeout, infra), else the driver's exit code
    if failed:
        return failed
    err = trim(res.stderr)
    # figures still open at the end first, then what the libraries' show() wrote, in name order
    made = sorted(workdir.glob("_vc2_fig*.png")) + sorted(p for p in workdir.glob("_vc2_*.png")
                                                          if not p.name.startswith("_vc2_fig"))
    saved = sorted(p for p in workdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.name not in before and not p.name.startswith("_vc2_"))
    found = made + saved
    if not found:
        return Outcome("no_image", "the code ran but left no open figure and saved no image", detail={"stderr": err})
    image = found[0]
    if image.suffix.lower() != ".png":  # a saved JPEG: the rest of the pipeline expects PNG
        rgb = images.open_rgb(image)  # UnusableImage: executors.run makes it this task's no_image
        if rgb is None:
            return Outcome("blank_image", "the image is blank: fully transparent")
        rgb.save(workdir / "_vc2_saved.png")
        image = workdir / "_vc2_saved.png"
    return Outcome("pass", image=image, detail={"images": [p.name for p in found]})


LIBRARIES = ("matplotlib", "seaborn", "plotly", "bokeh", "altair", "chartify", "holoviews", "pyvista", "pyecharts")


def version():
    return f"python {sys.version.split()[0]}, " + ", ".join(f"{m} {module_version(m)}" for m in LIBRARIES + ("kaleido",))


LANGUAGE = Language(
    name="python", display="Python", aliases=("py", "python3"), benchmark=1,
    fence="python", tags=frozenset({"python", "py", "python3", "py3"}),
    instruction="You write Python plotting code. Write one complete, runnable Python script that draws the "
                "figure described below. It runs without a display and without network access; end it by "
                "showing the figure (for matplotlib: plt.show()). Reply with the whole script in a single "
                "```{fence} code block.",
    data="csv", data_access='Read it with pandas: `df = pd.read_csv("data.csv")`.',
    no_image_hint="Make sure the figure is actually drawn and shown (plt.show() for matplotlib, fig.show() for plotly).",
    looks_complete=lambda c: re.search(r"^\s*(import|from)\s+\w", c, re.M) is not None,
    draws=r"\b(matplotlib|pylab|seaborn|plotly|bokeh|altair|chartify|holoviews|hvplot|pyvista|vtk|pyecharts|plotnine|"
          r"pygal|folium|networkx|wordcloud|squarify|PIL|cv2|skimage|imageio|turtle|graphviz|pydot|cairo|svgwrite|"
          r"missingno|geopandas|cartopy|mpl_toolkits)\b|\.plot\(|\.hist\(",
    missing_dependency=r"ModuleNotFoundError: No module named '([\w.]+)'",
    render=render, version=version, timeout_s=60.0, warm=True,
    modules=("matplotlib",),  # the others are optional: importing a missing one is the code's error
    image="python",
    apt=("chromium", "libatomic1", "fonts-dejavu-core", "fonts-liberation", "fonts-noto-cjk", "libegl1", "libgl1-mesa-dri"),
    pip=("matplotlib", "seaborn", "pandas", "plotly", "kaleido", "bokeh", "altair", "vl-convert-python", "chartify",
         "holoviews", "pyvista", "vtk", "pyecharts", "playwright"),  # playwright: py_show's page screenshots
)
