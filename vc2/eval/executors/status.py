"""The named outcomes of an execution, and the exit codes our drivers use to report them.

    from vc2.eval.executors.status import Status, EXIT_SYNTAX     # host side
    status = load_by_path("status.py")                            # drivers: see below

One file for both sides. The drivers (py_driver.py, vl_driver.py, browser_driver.py, warm_server.py,
seccomp_exec.py) run inside the sandbox with `python -I` and must not import vc2 (which imports torch),
so they load this file by its path; it imports nothing but `enum`. The LilyPond engine is Scheme and
cannot load it at all: warm_server.py hands it EXIT_ENGINE on its command line.
"""
from enum import Enum


class Status(str, Enum):
    """An execution's verdict. A str, so `out.status == "pass"` and json.dumps work as with plain strings."""
    PASS = "pass"
    SYNTAX_ERROR = "syntax_error"     # the program could not be parsed or compiled
    RUNTIME_ERROR = "runtime_error"   # it started and failed
    TIMEOUT = "timeout"               # killed at the wall-clock limit
    NO_IMAGE = "no_image"             # it ran but left no usable image (or only text, for a page)
    BLANK_IMAGE = "blank_image"       # the image shows nothing (vc2.eval.images)
    INFRA_ERROR = "infra_error"       # ours, never the program's: a missing tool, a broken sandbox or browser

    __str__ = str.__str__             # "pass", not "Status.PASS", in f-strings and str() on every Python
    __format__ = str.__format__


# Driver exit codes. Anything else non-zero (or a signal) is the program's runtime error.
EXIT_OK = 0
EXIT_RUNTIME = 1       # the program raised / exited non-zero
EXIT_SYNTAX = 3        # it did not compile (Python, R), is not JSON (Vega-Lite), a JS SyntaxError, a Mermaid parse error
EXIT_INFRA = 4         # the browser could not start
EXIT_TEXT_ONLY = 5     # a page rendered, but shows only text: no chart was drawn
EXIT_ENGINE = 70       # a warm engine's own glue failed (not the task): the host runs the task cold
EXIT_SANDBOX = 125     # the sandbox's own set-up failed (seccomp_exec, joining the cgroup)
