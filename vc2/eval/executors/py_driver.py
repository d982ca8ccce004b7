"""Runs inside the sandbox: execute plot.py as __main__, then save every open figure as a PNG.

    python -I py_driver.py        # cold: one fresh interpreter per task (cwd = the task's work dir)
    main()                        # warm: called in a fresh fork of warm_server.py's preloaded parent

Exit codes: 0 ran, 3 syntax error (compile failed), 1 the code raised. Output files:
_vc2_fig<N>.png (matplotlib/seaborn figures still open at the end), _vc2_plotly<N>.png (each
plotly fig.show(), written with kaleido + Debian's chromium). Not the user's code: keep it small.
"""
import os
import sys
import traceback

MAX_RENDER_PIXELS = 36_000_000  # = vc2.eval.images.MAX_RENDER_PIXELS (drivers do not import vc2; a test checks)


def main():
    src = open("plot.py", encoding="utf-8").read()
    try:
        code = compile(src, "plot.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: source with NUL bytes
        traceback.print_exception(type(e), e, None)
        return 3

    sys.path.insert(0, os.getcwd())  # run with -I; the code may import its own helper files, as in a notebook
    os.environ.setdefault("MPLCONFIGDIR", os.path.abspath(".mpl"))  # seeded font cache, copied in by python.py
    import matplotlib  # after the compile check: a syntax error costs no import

    matplotlib.use("Agg")
    if "plotly" in src:  # fig.show() would open a browser: write a PNG instead
        import plotly.basedatatypes
        import plotly.io

        shown = []

        def _show(fig, *args, **kwargs):
            fig = fig if isinstance(fig, plotly.basedatatypes.BaseFigure) else plotly.io.from_json(plotly.io.to_json(fig))
            shown.append(f"_vc2_plotly{len(shown)}.png")
            fig.write_image(shown[-1])

        plotly.basedatatypes.BaseFigure.show = _show
        plotly.io.show = _show

    status = 0
    try:
        exec(code, {"__name__": "__main__", "__file__": "plot.py", "__builtins__": __builtins__})
    except SystemExit as e:  # sys.exit() / exit(0) is a normal end; a non-zero exit is an error
        if e.code not in (None, 0):
            print(f"SystemExit: {e.code}", file=sys.stderr)
            status = 1
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # drop this driver's frame
        status = 1

    import matplotlib.pyplot as plt

    for i, num in enumerate(plt.get_fignums()):
        try:  # bbox "tight" like a notebook's inline backend; a huge figure is drawn at a lower dpi
            fig = plt.figure(num)
            w, h = fig.get_size_inches() * 100
            dpi = 100 * min(1.0, (MAX_RENDER_PIXELS / max(w * h, 1)) ** 0.5)
            fig.savefig(f"_vc2_fig{i}.png", dpi=dpi, bbox_inches="tight")
        except Exception as e:  # a broken figure is the code's error too
            traceback.print_exception(type(e), e, e.__traceback__)
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
