"""Python (matplotlib / seaborn / plotly): a fresh interpreter per task, code written to plot.py.

py_driver.py compiles it first (syntax_error), runs it with MPLBACKEND=Agg and data.csv in the cwd,
then saves every figure still open. An image the code saved itself (savefig + close, common in model
answers and a failure in the original harness) counts too. Measured here (2 cores, bwrap): median
0.87 s for a matplotlib bar chart, about 1.5 s seaborn, 4-5 s plotly via kaleido's Chromium.
Warm (vc2/eval/warm.py; ~0.45 s per bar chart): a fresh fork per task of a parent that has imported
matplotlib, numpy and pandas; seaborn and plotly are imported by the task, as cold. The font cache
is pre-seeded so matplotlib does not rebuild it each run.
"""
import shutil
import subprocess
import sys
from pathlib import Path

from vc2.eval import images
from vc2.eval.warm import WarmJob
from vc2.eval.executors.common import driver_failure, HERE, Outcome, execute, module_version, trim

TOOLS = []
MODULES = ["matplotlib"]   # seaborn/plotly/pandas are optional: importing a missing one is the code's error
TIMEOUT_S = 60.0
WARM = True
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
    # -I: the driver's own directory (holding html.py etc.) must not shadow the standard library
    res, out = execute([sys.executable, "-I", HERE / "py_driver.py"], workdir, mode, timeout_s,
                       env={"BROWSER_PATH": "/usr/bin/chromium"}, mem_mb=4096,
                       warm=warm and (warm, WarmJob("python", preload_dir=str(_mpl_cache()))))
    shutil.rmtree(mpl, ignore_errors=True)
    failed = out or driver_failure(res)  # the sandbox's own verdict (timeout, infra), else the driver's exit code
    if failed:
        return failed
    err = trim(res.stderr)
    made = sorted(workdir.glob("_vc2_fig*.png")) + sorted(workdir.glob("_vc2_plotly*.png"))
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


def version():
    return f"python {sys.version.split()[0]}, matplotlib {module_version('matplotlib')}, " \
           f"seaborn {module_version('seaborn')}, plotly {module_version('plotly')}, kaleido {module_version('kaleido')}"
