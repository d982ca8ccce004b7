"""What every language's renderer shares: the Outcome record, one sandboxed call that sorts out the
failures that are never the model's fault (missing tool, unreachable interpreter) from the rest, and
small helpers (log trimming, page cropping, versions, the images a program wrote)."""
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vc2.eval import images, sandbox
from vc2.eval.executors.status import EXIT_INFRA, EXIT_OK, EXIT_SANDBOX, EXIT_SYNTAX, EXIT_TEXT_ONLY, Status
from vc2.eval.warm import WarmJob

INSTALL_HINT = "install the renderers with `bash sandbox_images/install_host.sh`"
HERE = Path(__file__).resolve().parent   # the drivers: what runs inside the sandbox
VENDOR = HERE.parent / "assets" / "vendor"  # vendored chart libraries, served to pages for their CDN URLs


@dataclass
class Outcome:
    status: Status              # a Status (a plain string is converted)
    error: str = ""             # trimmed stderr / the useful part of a log
    image: Path | None = None   # the first rendered PNG (copied into the workdir)
    wall_s: float = 0.0
    sandbox: str = ""           # the mode actually used
    detail: dict = field(default_factory=dict)

    def __post_init__(self):
        self.status = Status(self.status)  # ValueError for a status that does not exist


def driver_failure(res, detail=None):
    """Our drivers (py_driver, vl_driver, r_driver...) exit EXIT_SYNTAX for a syntax error and with any
    other non-zero code for a runtime error. Returns that failure as an Outcome, or None on success."""
    if res.returncode == EXIT_OK:
        return None
    status = Status.SYNTAX_ERROR if res.returncode == EXIT_SYNTAX else Status.RUNTIME_ERROR
    return Outcome(status, trim(res.stderr), detail=detail or {})


def trim(text, limit=3000):
    """Keep the end of long tool output (the error is almost always last), drop ANSI codes."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text or "").strip()
    return text if len(text) <= limit else "...\n" + text[-limit:]


def execute(cmd, workdir, mode, timeout_s, pool=None, job=None, **limits):
    """sandbox.run + the generic verdicts. Returns (Result, Outcome-or-None); None = the caller decides.

    pool, job: a WarmPool and the WarmJob to render in one of its servers instead; the pool answers
    None when the task must run cold, and then `cmd` runs as usual. Both paths give the same Result for
    the same program.
    """
    res = None
    if pool is not None:
        res = pool.run(job, workdir, mode, timeout_s, **limits)
    if res is None:
        res = sandbox.run(cmd, workdir, timeout_s=timeout_s, mode=mode, **limits)
    if res.timed_out:
        return res, Outcome(Status.TIMEOUT, f"killed after {timeout_s:.0f} s wall-clock", wall_s=res.wall_s,
                            detail={"stderr_tail": trim(res.stderr, 500)})
    # prlimit/setpriv could not start the tool (e.g. the interpreter lives in /root and the sandbox user
    # cannot reach it in plain mode), a container engine could not (exit 125-127 with its "Error: ..."),
    # or the sandbox's own set-up failed: the machine's problem, not the code's.
    engine = mode in ("docker", "podman") and res.returncode in (125, 126, 127) and \
        ("executable file not found" in res.stderr or res.stderr.lstrip().startswith("Error:"))
    ours = res.returncode == EXIT_SANDBOX and ("seccomp_exec:" in res.stderr or "[vc2 sandbox]" in res.stderr)
    if engine or ours or res.returncode in (126, 127) and "failed to execute" in res.stderr:
        return res, Outcome(Status.INFRA_ERROR, f"{trim(res.stderr, 500)}\n(the sandbox user cannot run the "
                            f"tool in mode {mode!r}; use bwrap/unshare or make it readable)")
    return res, None


def browser_render(kind, workdir, mode, timeout_s, warm=None):
    """HTML and Mermaid: run browser_driver.py (`kind` "html" or "mermaid"), map its exit code to an Outcome."""
    res, out = execute([sys.executable, "-I", HERE / "browser_driver.py", kind, VENDOR], workdir, mode, timeout_s,
                       mem_mb=8192, nproc=1024,  # Chromium: many threads, big V8 heaps
                       pool=warm, job=WarmJob("browser", task_args=(kind, VENDOR)))
    if out:
        return out
    info = workdir / "_vc2_browser.json"
    detail = json.loads(info.read_text()) if info.exists() else {}
    err = trim(res.stderr)
    png = workdir / "image.png"
    if res.returncode == EXIT_INFRA:
        return Outcome(Status.INFRA_ERROR, err, detail=detail)
    if res.returncode == EXIT_TEXT_ONLY:  # the page rendered, but only text (or nothing at all): no chart was drawn
        why = png.exists() and images.blank_reason(png)
        if why:
            return Outcome(Status.BLANK_IMAGE, f"the image is blank: {why}", image=png, detail=detail)
        return Outcome(Status.NO_IMAGE, err, detail=detail)
    failed = driver_failure(res, detail)
    if failed:
        return failed
    return Outcome(Status.PASS, image=png, detail=detail) if png.exists() else Outcome(Status.NO_IMAGE, err, detail=detail)


RASTER = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff")
# A PDF page as PNG, at most MAX_RENDER_PIXELS ($1; pdftoppm scales a huge page down itself, see latex.py)
PDF_TO_PNG = ('pdftoppm -png -r 150 $(pdfinfo "$0" 2>/dev/null | awk -v lim="$1" '
              "'/^Page size:/ {w = $3 * 150 / 72; h = $5 * 150 / 72; "
              "if (w * h > lim) printf \"-scale-to %d\", (w > h ? w : h) * sqrt(lim / (w * h))}') "
              '-f 1 -l 1 -singlefile "$0" _vc2_pdf')


def written_image(workdir, before, mode, timeout_s, vector=(".svg",), fallback=()):
    """For programs that write their picture to a file of their choosing (R, C++, JavaScript,
    TypeScript): the first new image file in name order (then the `fallback` files, e.g. R's default
    device pages), as an Outcome with a PNG. Rasters are decoded on the host through images.open_rgb
    (UnusableImage if they do not decode); `vector` formats (.svg, .pdf) are rasterised in the sandbox,
    by rsvg-convert or pdftoppm, since their bytes are the program's."""
    found = sorted(p for p in workdir.iterdir() if p.is_file() and not p.is_symlink() and p.name not in before
                   and p.suffix.lower() in RASTER + tuple(vector) and not p.name.startswith("_vc2_"))
    found += [p for p in fallback if p.is_file() and not p.is_symlink()]
    if not found:
        return Outcome(Status.NO_IMAGE, "the program ran but wrote no image file (PNG, SVG, PPM, ... in its "
                                        "working directory)")
    src, detail = found[0], {"images": [p.name for p in found]}
    if src.suffix.lower() in RASTER:
        rgb = images.open_rgb(src)
        if rgb is None:
            return Outcome(Status.BLANK_IMAGE, f"the image is blank: {src.name} is fully transparent", detail=detail)
        rgb.save(workdir / "_vc2_image.png")
    else:
        if src.suffix.lower() == ".svg":
            cmd = ["rsvg-convert", "--background-color=white", "--output=_vc2_image.png", src.name]
        else:
            cmd = ["/bin/sh", "-c", PDF_TO_PNG, src.name, str(images.MAX_RENDER_PIXELS)]
        res, out = execute(cmd, workdir, mode, timeout_s)
        if out:
            return out
        made = workdir / ("_vc2_image.png" if src.suffix.lower() == ".svg" else "_vc2_pdf.png")
        if res.returncode != 0 or not made.is_file():
            return Outcome(Status.NO_IMAGE, f"{src.name} cannot be drawn: {trim(res.stderr, 1000)}", detail=detail)
        made.replace(workdir / "_vc2_image.png")
    return Outcome(Status.PASS, image=workdir / "_vc2_image.png", detail=detail)


def crop(png, margin=20):
    """Cut the page down to its ink plus a margin (an article page is mostly white paper).
    images.UnusableImage if the page cannot be decoded."""
    from PIL import Image, ImageChops
    img = images.open_rgb(png)
    if img is None:
        return
    box = ImageChops.difference(img, Image.new("RGB", img.size, (255, 255, 255))).point(lambda v: 255 if v > 24 else 0).getbbox()
    if box:
        l, t, r, b = box
        img.crop((max(l - margin, 0), max(t - margin, 0), min(r + margin, img.width), min(b + margin, img.height))).save(png)


def png_size(path):
    """(width, height) from an image file's header, without decoding it; (0, 0) if unreadable."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return 0, 0


def tool_version(argv, pattern=r"(\d+\.\d+[\w.]*)"):
    """First version-looking token of `tool --version`, or 'missing'."""
    if shutil.which(argv[0]) is None:
        return "missing"
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"error: {e}"
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else (r.stdout + r.stderr).strip()[:60]


def module_version(name):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"
