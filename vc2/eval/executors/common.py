"""What every language executor shares: the Outcome record and one sandboxed call that sorts out the
failures that are never the model's fault (missing tool, unreachable interpreter) from the rest."""
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vc2.eval import images, sandbox

STATUSES = ("pass", "syntax_error", "runtime_error", "timeout", "no_image", "blank_image", "infra_error")
INSTALL_HINT = "install the renderers with `bash sandbox_images/install_host.sh`"
HERE = Path(__file__).resolve().parent


@dataclass
class Outcome:
    status: str                 # one of STATUSES
    error: str = ""             # trimmed stderr / the useful part of a log
    image: Path | None = None   # the first rendered PNG (copied into the workdir)
    wall_s: float = 0.0
    sandbox: str = ""           # the mode actually used
    detail: dict = field(default_factory=dict)

    def __post_init__(self):
        assert self.status in STATUSES, self.status


def driver_failure(res, detail=None):
    """Our driver scripts (py_driver, vl_driver, browser_driver) exit 3 for a syntax error and with any
    other non-zero code for a runtime error. Returns that failure as an Outcome, or None on success."""
    if res.returncode == 0:
        return None
    status = "syntax_error" if res.returncode == 3 else "runtime_error"
    return Outcome(status, trim(res.stderr), detail=detail or {})


def trim(text, limit=3000):
    """Keep the end of long tool output (the error is almost always last), drop ANSI codes."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text or "").strip()
    return text if len(text) <= limit else "...\n" + text[-limit:]


def execute(cmd, workdir, mode, timeout_s, warm=None, **limits):
    """sandbox.run + the generic verdicts. Returns (Result, Outcome-or-None); None = the caller decides.

    warm: (WarmPool, WarmJob) to render in a warm server instead; the pool answers None when the task
    must run cold, and then `cmd` runs as usual. Both paths give the same Result for the same program.
    """
    res = None
    if warm is not None:
        pool, job = warm
        res = pool.run(job, workdir, mode, timeout_s, **limits)
    if res is None:
        res = sandbox.run(cmd, workdir, timeout_s=timeout_s, mode=mode, **limits)
    if res.timed_out:
        return res, Outcome("timeout", f"killed after {timeout_s:.0f} s wall-clock", wall_s=res.wall_s,
                            detail={"stderr_tail": trim(res.stderr, 500)})
    # prlimit/setpriv could not start the tool (e.g. the interpreter lives in /root and the sandbox user
    # cannot reach it in plain mode), a container engine could not (exit 125-127 with its "Error: ..."),
    # or the sandbox's own set-up failed: the machine's problem, not the code's.
    engine = mode in ("docker", "podman") and res.returncode in (125, 126, 127) and \
        ("executable file not found" in res.stderr or res.stderr.lstrip().startswith("Error:"))
    ours = res.returncode == 125 and ("seccomp_exec:" in res.stderr or "[vc2 sandbox]" in res.stderr)
    if engine or ours or res.returncode in (126, 127) and "failed to execute" in res.stderr:
        return res, Outcome("infra_error", f"{trim(res.stderr, 500)}\n(the sandbox user cannot run the "
                            f"tool in mode {mode!r}; use bwrap/unshare or make it readable)")
    return res, None


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
