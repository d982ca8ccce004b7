"""Render one program in one of the eight VisPlotBench languages, sandboxed, and judge the outcome.

    from vc2.eval import executors
    out = executors.run("python", code, Path(tmpdir), data_csv=csv_text)
    out.status, out.error, out.image   # "pass" | "syntax_error" | "runtime_error" | "timeout" |
                                       # "no_image" | "blank_image" | "infra_error"
    python -m vc2.eval.executors       # sandbox mode and renderer versions on this machine

Each language module has TOOLS (executables), MODULES (Python packages the host needs), TIMEOUT_S and
render(code, workdir, mode, timeout_s) -> Outcome (plus a `warm` argument where WARM = True).
This file adds what is common: the tool check (a
missing tool is infra_error with the install hint, never the model's failure), data.csv, the sandbox
mode, the wall time and the blank check for every language. The code is always written to a file,
never pasted into a string literal (the original harness corrupted backslashes that way).
"""
import importlib.util
import shutil
import time
import traceback
from pathlib import Path

from vc2.eval import images, sandbox as sb  # `sandbox` is run()'s argument name (the spec's API)
from vc2.eval.executors import asymptote, html, latex, lilypond, mermaid, python, svg, vegalite
from vc2.eval.executors.common import INSTALL_HINT, STATUSES, Outcome  # noqa: F401 (re-exported)

LANGUAGES = {"python": python, "vegalite": vegalite, "lilypond": lilypond, "mermaid": mermaid,
             "svg": svg, "latex": latex, "asymptote": asymptote, "html": html}


def missing_tools(language):
    mod = LANGUAGES[language]
    return [t for t in mod.TOOLS if shutil.which(t) is None] + \
           [m for m in mod.MODULES if importlib.util.find_spec(m) is None]


def run(language, code, workdir, data_csv=None, sandbox="auto", timeout_s=None, warm=None):
    """Render `code` in `workdir` (created if needed; outputs land there). See the module docstring.

    warm: a vc2.eval.warm.WarmPool; the languages with a warm server (WARM = True in their module:
    python, vegalite, lilypond, html, mermaid) then render in one, the others as always.

    ValueError: unknown language, or an explicitly requested sandbox mode that cannot run here.
    With sandbox="auto" and no usable mode at all, the outcome is infra_error instead.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; one of {', '.join(LANGUAGES)}")
    mod = LANGUAGES[language]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        mode = sb.resolve(sandbox)
    except ValueError as e:
        if sandbox != "auto":
            raise
        return Outcome("infra_error", str(e), sandbox="none")
    if mode in ("docker", "podman"):  # the tools must be where the code runs: in the image
        missing = sb.missing_in_image(mode, mod.TOOLS, mod.MODULES)
        where = f"image {sb.IMAGE}"
    else:
        missing, where = missing_tools(language), "this machine"
    if missing:
        return Outcome("infra_error", f"{language}: {where} lacks {', '.join(missing)}; {INSTALL_HINT}", sandbox=mode)
    if data_csv is not None:
        (workdir / "data.csv").write_text(data_csv)
    t0 = time.monotonic()
    extra = {"warm": warm} if warm is not None and getattr(mod, "WARM", False) else {}
    try:
        out = mod.render(code, workdir, mode, float(timeout_s or mod.TIMEOUT_S), **extra)
        if out.status == "pass":
            assert out.image is not None and out.image.exists(), (language, out)
            why = images.blank_reason(out.image)
            if why:
                out.status, out.error = "blank_image", f"the image is blank: {why}"
    except images.UnusableImage as e:  # the program's output: its failure, recorded like any other
        out = Outcome("no_image", f"the program's image cannot be used: {e}")
    except Exception as e:  # a bug of ours while handling this one task: an infra error, and the run goes on
        out = Outcome("infra_error", f"vc2 failed while handling this task's output: {type(e).__name__}: {e}",
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
    for name, mod in LANGUAGES.items():
        out[name] = mod.version()
    return out


if __name__ == "__main__":
    for k, v in describe_sandbox().items():
        print(f"{k:10s} {v}")
