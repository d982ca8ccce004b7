"""Asymptote: `asy -f png -render=2` (2 px per bp), run under xvfb-run when the code imports a 3D
module (OpenGL needs a display; headless asy prints "freeglut: failed to open display").

The source is written to figure.asy (a file named after a module, e.g. three.asy, fails with
"recursive loading"). Parse errors ("syntax error", "unexpected end of input") are syntax_error;
everything else asy reports (undefined names, divide by zero, abort()) is a runtime_error. asy's
-safe mode (the default) forbids system calls. Measured here: median 0.47 s for a 2D figure, about 1.2 s 3D.
"""
import re

from vc2.eval import images
from vc2.eval.executors.common import Outcome, execute, png_size, tool_version, trim

TOOLS = ["asy", "gs", "xvfb-run"]
MODULES = []
TIMEOUT_S = 120.0
RENDER = 2  # pixels per bp
THREE_D = re.compile(r"^\s*(import|access)\s+(three|graph3|solids|bsp|contour3|tube|obj|grid3|smoothcontour3)\b", re.M)
SYNTAX = re.compile(r"syntax error|unexpected end of input|unterminated (string|comment)")


def render(code, workdir, mode, timeout_s):
    (workdir / "figure.asy").write_text(code, encoding="utf-8")
    cmd = ["asy", "-noV", "-f", "png", f"-render={RENDER}", "-o", "figure", "figure.asy"]
    three_d = bool(THREE_D.search(code))
    if three_d:
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] + cmd
    res, out = execute(cmd, workdir, mode, timeout_s, mem_mb=4096)
    if out:
        return out
    err = trim(res.stderr + res.stdout)
    png = workdir / "figure.png"
    if res.returncode != 0:
        return Outcome("syntax_error" if SYNTAX.search(err) else "runtime_error", err, detail={"3d": three_d})
    if not png.exists():
        return Outcome("no_image", err or "asy produced no figure.png (nothing shipped out?)", detail={"3d": three_d})
    scale = images.render_scale(*png_size(png))
    if scale < 1:  # a huge picture: render again with fewer pixels per bp, so an honest large figure passes
        png.unlink()
        cmd = [f"-render={RENDER * scale:.4f}" if c == f"-render={RENDER}" else c for c in cmd]
        res, out = execute(cmd, workdir, mode, timeout_s, mem_mb=4096)
        if out:
            return out
        if res.returncode != 0 or not png.exists():
            return Outcome("runtime_error", trim(res.stderr + res.stdout) or "asy failed at the reduced size")
    return Outcome("pass", image=png, detail={"3d": three_d})


def version():
    return "asy " + tool_version(["asy", "--version"], r"version (\S+)")
