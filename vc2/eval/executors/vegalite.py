"""Vega-Lite (and plain Vega): vl-convert-python (bundled V8 + Vega-Lite), spec written to spec.json.

Invalid JSON is a syntax_error; a spec vl-convert rejects, or data it cannot load, a runtime_error
(unfetchable URL data otherwise renders as empty axes with no error). data.csv is inlined by
vl_driver.py. Fixed scale 2 (the original harness drew it at random). Measured here: median 0.47 s,
most of it interpreter + V8 start-up; warm (vc2/eval/warm.py) the specs go to a kept converter: ~0.3 s.
"""
import sys

from vc2.eval.warm import WarmJob
from vc2.eval.executors.common import driver_failure, HERE, Outcome, execute, module_version, trim

TOOLS = []
MODULES = ["vl_convert"]
TIMEOUT_S = 60.0
WARM = True


def render(code, workdir, mode, timeout_s, warm=None):
    (workdir / "spec.json").write_text(code, encoding="utf-8")
    # RLIMIT_DATA, not AS: V8's pointer cage reserves far more address space than it uses
    res, out = execute([sys.executable, "-I", HERE / "vl_driver.py"], workdir, mode, timeout_s, mem_mb=4096,
                       warm=warm and (warm, WarmJob("vegalite")))
    failed = out or driver_failure(res)  # the sandbox's own verdict (timeout, infra), else the driver's exit code
    if failed:
        return failed
    err = trim(res.stderr)
    png = workdir / "image.png"
    return Outcome("pass", image=png) if png.exists() else Outcome("no_image", err)


def version():
    return f"vl-convert-python {module_version('vl-convert-python')}"
