"""C++: `g++ -std=c++17 -O1` in the sandbox, then the binary, in a second sandbox (the rest of the time
budget); code written to main.cpp.

A compile error is a syntax_error (the compiler's log is the feedback, as for a parse error); a
non-zero exit or a crash of the program, a runtime_error. The program must write its picture to a
file (PPM/PGM/BMP/PNG, or SVG text: executors/common.written_image). Standard library only: an
`#include` of a library we lack fails to compile ("No such file or directory"), which dataset
validation classifies as a missing dependency.
"""
import re

from vc2.eval.executors.common import Outcome, execute, tool_version, trim, written_image
from vc2.eval.executors.status import Status
from vc2.eval.languages import Language

COMPILE = ["g++", "-std=c++17", "-O1", "-pthread", "-o", "main", "main.cpp"]


def render(code, workdir, mode, timeout_s):
    before = {p.name for p in workdir.iterdir()}
    (workdir / "main.cpp").write_text(code, encoding="utf-8")
    res, out = execute(COMPILE, workdir, mode, timeout_s)
    if out:
        return out
    if res.returncode != 0 or not (workdir / "main").is_file():
        return Outcome(Status.SYNTAX_ERROR, trim(res.stderr + res.stdout))
    (workdir / "main").chmod(0o755)  # the copy back into the work dir keeps the bytes, not the mode
    left = max(timeout_s - res.wall_s, 1.0)
    res, out = execute(["./main"], workdir, mode, left)
    if out:
        return out
    if res.returncode != 0:
        why = f"exit status {res.returncode}" if res.returncode > 0 else f"killed by signal {-res.returncode}"
        return Outcome(Status.RUNTIME_ERROR, trim(res.stderr) or f"the program failed ({why})")
    return written_image(workdir, before | {"main.cpp", "main"}, mode, max(left - res.wall_s, 5.0))


def version():
    return "g++ " + tool_version(["g++", "--version"], r"\) (\S+)")


LANGUAGE = Language(
    name="cpp", display="C++", aliases=("c++", "cxx", "cplusplus"),
    fence="cpp", tags=frozenset({"cpp", "c++", "cxx", "cc", "hpp"}),
    instruction="You write C++ programs that draw. Write one complete C++17 program (standard library only) that "
                "draws the figure described below and writes it to an image file in the working directory (a "
                "PPM, or SVG text). It is compiled with g++ and run without a display and without network access. "
                "Reply with the whole program in a single ```{fence} code block.",
    data="csv", data_access='Read it with `std::ifstream in("data.csv");`.',
    no_image_hint="Make sure the program writes the picture to an image file (e.g. out.ppm or out.svg).",
    looks_complete=lambda c: re.search(r"#include|\bint\s+main\s*\(", c) is not None,
    draws=r"\.(png|svg|ppm|pgm|pbm|pnm|bmp|jpe?g|gif|tga)\b|<svg\b",
    missing_dependency=r"fatal error: ([\w./+-]+): No such file or directory",
    render=render, version=version, timeout_s=60.0,
    tools=("g++", "rsvg-convert"), image="native", apt=("g++", "librsvg2-bin", "fonts-dejavu-core", "fonts-liberation"),
)
