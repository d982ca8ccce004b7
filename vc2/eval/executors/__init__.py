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
import os
import shutil
import time
import traceback
from pathlib import Path

from vc2.eval import containers, images, languages, sandbox as sb  # `sandbox` is run()'s argument name (the spec's API)
from vc2.eval.executors.common import INSTALL_HINT, Outcome
from vc2.eval.executors.status import Status


def missing_tools(lang):
    """Tools and Python modules of a language record that this machine lacks."""
    return [t for t in lang.tools if shutil.which(t) is None] + \
           [m for m in lang.modules if importlib.util.find_spec(m) is None]


# VC2_AUTO_CONTAINERS=0 keeps "auto" on the host modes even where the images are built (tests/conftest.py
# sets it, so that no test's figures depend on which images a machine happens to have)
AUTO_CONTAINERS = os.environ.get("VC2_AUTO_CONTAINERS", "1") != "0"


def choose_sandbox(sandbox, lang):
    """(mode, image) a language's programs run in: image is None for host modes. "auto": the language's
    family image under the first engine that answers, if that image is built, else a host mode.
    ValueError: an explicit mode (or the image it needs) that is not available here."""
    def image():  # only where a container can run: host modes need no checkout of sandbox_images/
        return sb.IMAGE or containers.tag(lang.image)
    if sandbox == "auto":
        if AUTO_CONTAINERS:
            for engine in sb.ENGINES:
                if shutil.which(engine) and sb.probe(engine)[0] and containers.present(engine, image()):
                    return engine, image()
        return sb.resolve("auto"), None
    mode = sb.resolve(sandbox)
    if mode not in sb.ENGINES:
        return mode, None
    image = image()
    if not containers.present(mode, image):
        raise ValueError(f"sandbox mode {sandbox!r}: {lang.name} runs in {image}, which {mode} does not have; build "
                         f"it with `bash sandbox_images/build.sh --engine {mode} {lang.image}`")
    return mode, image


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
        mode, image = choose_sandbox(sandbox, lang)
    except ValueError as e:
        if sandbox != "auto":
            raise
        return Outcome(Status.INFRA_ERROR, str(e), sandbox="none")
    with sb.use_image(image):
        return _run(lang, code, workdir, data_csv, mode, image, timeout_s, warm)


def _run(lang, code, workdir, data_csv, mode, image, timeout_s, warm):
    if image:  # the tools must be where the code runs: in the image
        missing = sb.missing_in_image(mode, lang.tools, lang.modules)
        where, hint = f"image {image}", f"rebuild it with `bash sandbox_images/build.sh {lang.image}`"
    else:
        missing, where, hint = missing_tools(lang), "this machine", INSTALL_HINT
    if missing:
        return Outcome(Status.INFRA_ERROR, f"{lang.name}: {where} lacks {', '.join(missing)}; {hint}",
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


def sandbox_by_language(mode="auto", names=None):
    """{language: "bwrap" | "podman localhost/vc2-web:..." | "unavailable (why)"} for the report."""
    out = {}
    for name in names or languages.LANGUAGES:
        try:
            m, image = choose_sandbox(mode, languages.get(name))
            out[name] = f"{m} {image}" if image else m
        except ValueError as e:
            out[name] = f"unavailable ({e})"
    return out


def describe_sandbox(mode="auto", names=None):
    """The sandbox mode(s) `mode` resolves to and every renderer's version, for summary.json: "sandbox" is
    the one mode every language of `names` runs in, or "mixed" (then "sandbox_by_language" says which)."""
    by_lang = sandbox_by_language(mode, names)
    modes = {v.split()[0] if not v.startswith("unavailable") else v for v in by_lang.values()}
    out = {"sandbox": modes.pop() if len(modes) == 1 else "mixed", "sandbox_by_language": by_lang,
           "user": sb.describe()["user"]}
    for name, lang in languages.LANGUAGES.items():
        where = by_lang.get(name, "")
        # the host's tools report the host's versions; an image's come from the same pinned lists
        out[name] = f"in {where.split()[1]} (sandbox_images lists)" if len(where.split()) == 2 else lang.version()
    return out


if __name__ == "__main__":
    for k, v in describe_sandbox().items():
        print(f"{k:10s} {v}")
