"""Runs inside the sandbox: execute plot.py as __main__, then save every open figure as a PNG.

    python -I py_driver.py        # cold: one fresh interpreter per task (cwd = the task's work dir)
    main()                        # warm: called in a fresh fork of warm_server.py's preloaded parent

Exit codes (status.py): EXIT_OK ran, EXIT_SYNTAX syntax error (compile failed), EXIT_RUNTIME the code
raised. Output files: _vc2_fig<N>.png (matplotlib/seaborn figures still open at the end), and
_vc2_<library><N>.png for each chart a library was asked to show (py_show.py). Not the user's code:
keep it small.
"""
import importlib.util
import os
import sys
import traceback

MAX_RENDER_PIXELS = 36_000_000  # = vc2.eval.images.MAX_RENDER_PIXELS (drivers do not import vc2; a test checks)
HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    """A sibling file by path: -I keeps this directory off sys.path (the task must not import our
    files), and importing the vc2 package would import torch."""
    spec = importlib.util.spec_from_file_location(f"_vc2_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


status = load("status")
# Libraries whose "show" py_show.py redirects to a PNG, patched when the source names them (an import
# costs up to a second; a library the source never names cannot be shown).
SHOWS = ("plotly", "bokeh", "chartify", "altair", "pyvista", "pyecharts")


def main():
    src = open("plot.py", encoding="utf-8").read()
    try:
        code = compile(src, "plot.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: source with NUL bytes
        traceback.print_exception(type(e), e, None)
        return status.EXIT_SYNTAX

    sys.path.insert(0, os.getcwd())  # run with -I; the code may import its own helper files, as in a notebook
    os.environ.setdefault("MPLCONFIGDIR", os.path.abspath(".mpl"))  # seeded font cache, copied in by python.py
    import matplotlib  # after the compile check: a syntax error costs no import

    matplotlib.use("Agg")
    shows = [lib for lib in SHOWS if lib in src]
    if shows:  # e.g. fig.show() would open a browser: write a PNG instead
        py_show = load("py_show")
        for lib in shows:
            getattr(py_show, lib)()

    rc = status.EXIT_OK
    try:
        exec(code, {"__name__": "__main__", "__file__": "plot.py", "__builtins__": __builtins__})
    except SystemExit as e:  # sys.exit() / exit(0) is a normal end; a non-zero exit is an error
        if e.code not in (None, 0):
            print(f"SystemExit: {e.code}", file=sys.stderr)
            rc = status.EXIT_RUNTIME
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # drop this driver's frame
        rc = status.EXIT_RUNTIME

    import matplotlib.pyplot as plt

    for i, num in enumerate(plt.get_fignums()):
        try:  # bbox "tight" like a notebook's inline backend; a huge figure is drawn at a lower dpi
            fig = plt.figure(num)
            w, h = fig.get_size_inches() * 100
            dpi = 100 * min(1.0, (MAX_RENDER_PIXELS / max(w * h, 1)) ** 0.5)
            fig.savefig(f"_vc2_fig{i}.png", dpi=dpi, bbox_inches="tight")
        except Exception as e:  # a broken figure is the code's error too
            traceback.print_exception(type(e), e, e.__traceback__)
            rc = rc or status.EXIT_RUNTIME
    return rc


if __name__ == "__main__":
    sys.exit(main())
