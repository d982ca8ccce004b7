"""Vega-Lite (and plain Vega): vl-convert-python (bundled V8 + Vega-Lite), spec written to spec.json.

Invalid JSON is a syntax_error; a spec vl-convert rejects, or data it cannot load, a runtime_error
(unfetchable URL data otherwise renders as empty axes with no error). data.csv is inlined by
vl_driver.py. Fixed scale 2 (the original harness drew it at random). Warm (vc2/eval/warm.py), the
specs go to a kept converter.
"""
import json
import re
import sys

from vc2.eval.executors.common import HERE, Outcome, driver_failure, execute, module_version, trim
from vc2.eval.languages import Language
from vc2.eval.warm import WarmJob


def render(code, workdir, mode, timeout_s, warm=None):
    (workdir / "spec.json").write_text(code, encoding="utf-8")
    # RLIMIT_DATA, not AS: V8's pointer cage reserves far more address space than it uses
    res, out = execute([sys.executable, "-I", HERE / "vl_driver.py"], workdir, mode, timeout_s, mem_mb=4096,
                       pool=warm, job=WarmJob("vegalite"))
    failed = out or driver_failure(res)  # the sandbox's own verdict (timeout, infra), else the driver's exit code
    if failed:
        return failed
    err = trim(res.stderr)
    png = workdir / "image.png"
    return Outcome("pass", image=png) if png.exists() else Outcome("no_image", err)


def version():
    return f"vl-convert-python {module_version('vl-convert-python')}"


# ---------------------------------------------------------------------------------------------------
# repairing the extracted JSON

def strip_json_comments(s):
    """Remove // and /* */ comments and trailing commas outside JSON strings."""
    out, i, n, in_str = [], 0, len(s), False
    while i < n:
        c = s[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(s[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif s.startswith("//", i):
            while i < n and s[i] != "\n":
                i += 1
            continue
        elif s.startswith("/*", i):
            j = s.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        else:
            out.append(c)
        i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))  # only safe because strings were left alone above


def first_json_object(s):
    """The first balanced {...} in s (string-aware), or None."""
    start = s.find("{")
    if start < 0:
        return None
    depth, in_str, esc = 0, False, False
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[start:i + 1]
    return None


def repair(code):
    """Valid JSON is kept as written. Otherwise drop comments, trailing commas and text around the
    first {...}; if that parses, return it re-serialised, else the original (its JSON error is useful
    feedback for self-debug)."""
    try:
        json.loads(code)
        return code
    except ValueError:
        pass
    obj_text = first_json_object(strip_json_comments(code))
    try:
        return json.dumps(json.loads(obj_text), indent=2) if obj_text else code
    except ValueError:
        return code


LANGUAGE = Language(
    name="vegalite", display="Vega-Lite", aliases=("vega", "vl"), benchmark=2,
    fence="json", tags=frozenset({"json", "vega-lite", "vegalite", "vega", "vl", "json5", "jsonc"}),
    instruction="You write Vega-Lite specifications. Write one complete Vega-Lite v5 JSON specification for "
                "the chart described below. It must be valid JSON (no comments, no JavaScript). Reply with "
                "the whole specification in a single ```{fence} code block.",
    data="csv", data_access='Load it with `"data": {"url": "data.csv"}`; do not copy the rows into the specification.',
    looks_complete=lambda c: "{" in c and re.search(r'"(mark|layer|\$schema|hconcat|vconcat|concat|facet|repeat|spec)"', c)
    is not None,
    repair=repair, render=render, version=version, timeout_s=60.0, warm=True,
    modules=("vl_convert",), image="python", pip=("vl-convert-python",),
)
