"""Run one program of any language, sandboxed, and judge the outcome.

    from vc2.eval import executors
    out = executors.run("python", code, Path(tmpdir), data_csv=csv_text)
    out.status, out.error, out.image   # a Status: "pass" | "syntax_error" | "runtime_error" | "timeout" |
                                       # "no_image" | "blank_image" | "infra_error"
    python -m vc2.eval.executors       # sandbox mode and renderer versions on this machine

How a language renders is its record's `render` (vc2/eval/languages/<name>.py). This file adds what
is common: the tool check (a missing tool is infra_error with the install hint, never the model's
failure), data.csv, the sandbox mode, the wall time and the blank check for every language. The code
is always written to a file, never pasted into a string literal (the original harness corrupted
backslashes that way). This package also holds what runs *inside* the sandbox: the drivers, the warm
server and status.py, the exit codes they share with the host.

(The language records import common.py from here; so this module reads the registry only inside its
functions, never at import time.)
"""
import importlib.util
import shutil
import time
import traceback
from pathlib import Path

from vc2.eval import images, languages, sandbox as sb  # `sandbox` is run()'s argument name (the spec's API)
from vc2.eval.executors.common import INSTALL_HINT, Outcome
from vc2.eval.executors.status import Status


def missing_tools(lang):
    """Tools and Python modules of a language record that this machine lacks."""
    return [t for t in lang.tools if shutil.which(t) is None] + \
           [m for m in lang.modules if importlib.util.find_spec(m) is None]


def run(language, code, workdir, data_csv=None, sandbox="auto", timeout_s=None, warm=None):
    """Render `code` in `workdir` (created if needed; outputs land there). See the module docstring.

    warm: a vc2.eval.warm.WarmPool; languages whose record says warm=True then render in one of its
    servers, the others as always.

    ValueError: unknown language, or an explicitly requested sandbox mode that cannot run here.
    With sandbox="auto" and no usable mode at all, the outcome is infra_error instead.
    """
    lang = languages.LANGUAGES.get(language)
    if lang is None:
        raise ValueError(f"unknown language {language!r}; one of {', '.join(languages.LANGUAGES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        mode = sb.resolve(sandbox)
    except ValueError as e:
        if sandbox != "auto":
            raise
        return Outcome(Status.INFRA_ERROR, str(e), sandbox="none")
    if mode in ("docker", "podman"):  # the tools must be where the code runs: in the image
        missing = sb.missing_in_image(mode, lang.tools, lang.modules)
        where = f"image {sb.IMAGE}"
    else:
        missing, where = missing_tools(lang), "this machine"
    if missing:
        return Outcome(Status.INFRA_ERROR, f"{language}: {where} lacks {', '.join(missing)}; {INSTALL_HINT}",
                       sandbox=mode)
    if data_csv is not None:
        (workdir / "data.csv").write_text(data_csv)
    t0 = time.monotonic()
    extra = {"warm": warm} if warm is not None and lang.warm else {}
    try:
        out = lang.render(code, workdir, mode, float(timeout_s or lang.timeout_s), **extra)
        if out.status == Status.PASS:
            assert out.image is not None and out.image.exists(), (language, out)
            why = images.blank_reason(out.image)
            if why:
                out.status, out.error = Status.BLANK_IMAGE, f"the image is blank: {why}"
    except images.UnusableImage as e:  # the program's output: its failure, recorded like any other
        out = Outcome(Status.NO_IMAGE, f"the program's image cannot be used: {e}")
    except Exception as e:  # a bug of ours while handling this one task: an infra error, and the run goes on
        out = Outcome(Status.INFRA_ERROR, f"vc2 failed while handling this task's output: {type(e).__name__}: {e}",
                      detail={"traceback": traceback.format_exc(limit=6)})
    out.wall_s, out.sandbox = time.monotonic() - t0, mode
    return out


def describe_sandbox(mode="auto"):
    """The sandbox mode `mode` resolves to and every renderer's version, for summary.json."""
    try:
        resolved = sb.resolve(mode)
    except ValueError as e:
        resolved = f"unavailable ({e})"
    out = {"sandbox": resolved, "user": sb.describe()["user"]}
    for name, lang in languages.LANGUAGES.items():
        out[name] = lang.version()
    return out


if __name__ == "__main__":
    for k, v in describe_sandbox().items():
        print(f"{k:10s} {v}")
