"""Runs inside the sandbox, loaded by py_driver.py: make each Python chart library's "show" (or PNG
export) write a PNG in the task's directory, the way the library's own users would get one, with no
display, no network and no selenium.

    py_show.bokeh()     # one function per library; py_driver calls those whose name the source mentions

- plotly: fig.show() -> fig.write_image() (kaleido, with Debian's Chromium).
- bokeh: show() and export_png() (and so holoviews' hv.save(..., "x.png") with its bokeh backend) ->
  bokeh's own standalone page for the object (inline BokehJS), screenshotted in Chromium by
  browser_driver.snapshot, instead of bokeh's selenium webdriver.
- chartify: Chart.show() / Chart.save(..., "png") -> the same route for its bokeh figure.
- altair: Chart.show() -> chart.save(png), i.e. vl-convert (what the original harness did).
- pyvista: off screen (pyvista.OFF_SCREEN, VTK's EGL window); Plotter.show() -> a screenshot.
- pyecharts: chart.render("x.html") writes the page as usual, which is then screenshotted in Chromium
  (its echarts script URL is answered with the vendored copy).
Files: _vc2_<library><N>.png, in the order charts were shown. A library that is not installed is left
alone: the task's own import of it then fails, as it would anywhere.
"""
import os
import sys
from pathlib import Path

_count = {}


def _name(prefix, suffix=".png"):
    n = _count.get(prefix, 0)
    _count[prefix] = n + 1
    return f"_vc2_{prefix}{n}{suffix}"


def _browser_driver():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_vc2_browser_driver", Path(__file__).resolve().parent / "browser_driver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def screenshot(page_file, png_file):
    """The page in page_file -> png_file; RuntimeError with the page's errors if its scripts failed."""
    driver = _browser_driver()
    rc, errors = driver.snapshot(page_file, png_file, os.environ["VC2_VENDOR"])
    if rc in (driver.status.EXIT_SYNTAX, driver.status.EXIT_RUNTIME):
        raise RuntimeError(f"the chart's page failed in the browser: {'; '.join(errors)[:2000]}")
    return png_file


def plotly():
    try:
        import plotly.basedatatypes
        import plotly.io
    except ImportError:
        return

    def show(fig, *args, **kwargs):
        fig = fig if isinstance(fig, plotly.basedatatypes.BaseFigure) else plotly.io.from_json(plotly.io.to_json(fig))
        fig.write_image(_name("plotly"))

    plotly.basedatatypes.BaseFigure.show = show
    plotly.io.show = show


def bokeh():
    try:
        import bokeh.io
        import bokeh.io.export
        import bokeh.io.showing
        import bokeh.plotting
        from bokeh.io.state import curstate
        from bokeh.resources import INLINE
    except ImportError:
        return
    if getattr(bokeh.io.export, "_vc2", False):  # chartify and holoviews call this too
        return
    from PIL import Image

    def get_screenshot_as_png(obj, *, driver=None, timeout=5, resources=INLINE, width=None, height=None,
                              scale_factor=1, state=None):
        """bokeh.io.export's, with Chromium through Playwright instead of a selenium webdriver."""
        theme = (state or curstate()).document.theme
        page = _name("bokeh_page", ".html")
        Path(page).write_text(bokeh.io.export.get_layout_html(obj, resources=resources, width=width, height=height,
                                                              theme=theme), encoding="utf-8")
        png = screenshot(page, _name("bokeh_shot"))
        image = Image.open(png).convert("RGBA")
        os.unlink(png)
        box = Image.new("RGBA", image.size, (255, 255, 255, 255))  # crop the page to what bokeh drew
        bbox = Image.alpha_composite(box, image).convert("RGB").point(lambda v: 255 - v).getbbox()
        return image.crop(bbox) if bbox else image

    def show(obj, *args, **kwargs):
        get_screenshot_as_png(obj).save(_name("bokeh"))

    bokeh.io.export.get_screenshot_as_png = get_screenshot_as_png
    bokeh.io.show = bokeh.io.showing.show = bokeh.plotting.show = show
    bokeh.io.export._vc2 = True


def holoviews():
    bokeh()  # hv.save(obj, "x.png") with the bokeh backend goes through bokeh's export


def chartify():
    bokeh()
    try:
        import chartify
        from bokeh.io import export
    except ImportError:
        return

    def figure_to_png(self, force_resize=True, scale_factor=1):
        image = export.get_screenshot_as_png(self.figure)  # the selenium-free one of bokeh() above
        size = (self.style.plot_width, self.style.plot_height)
        return image.resize(size) if force_resize and image.size != size else image

    def show(self, format="html"):
        self._set_toolbar_for_format(format)
        self._figure_to_png().save(_name("chartify"))

    chartify.Chart._figure_to_png = figure_to_png
    chartify.Chart.show = show


def altair():
    try:
        import altair
    except ImportError:
        return

    def show(self, *args, **kwargs):
        self.save(_name("altair"), scale_factor=2)  # vl-convert; the same scale as the vegalite executor

    altair.TopLevelMixin.show = show


def pyvista():
    try:
        import pyvista
    except ImportError:
        return
    pyvista.OFF_SCREEN = True
    original = pyvista.Plotter.show

    def show(self, *args, **kwargs):
        if not kwargs.get("screenshot") and len(args) < 7:  # screenshot is show()'s 7th parameter
            kwargs["screenshot"] = _name("pyvista")
        return original(self, *args, **kwargs)

    pyvista.Plotter.show = show


def pyecharts():
    try:
        from pyecharts.render import engine
    except ImportError:
        return
    original = engine.RenderEngine.render_chart_to_file

    def render_chart_to_file(self, template_name, chart, path, **kwargs):
        original(self, template_name, chart, path, **kwargs)
        screenshot(path, _name("pyecharts"))

    engine.RenderEngine.render_chart_to_file = render_chart_to_file


if __name__ == "__main__":
    sys.exit("loaded by py_driver.py, not run")
