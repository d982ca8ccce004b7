"""Runs inside the sandbox: spec.json -> vega-lite (or vega) -> image.png with vl-convert.

    python -I vl_driver.py        # cold: one interpreter (and one V8 start-up) per task
    main()                        # warm: called by warm_server.py, whose converter is already running

Exit codes: 0 rendered, 3 the spec is not valid JSON / not an object, 1 vl-convert refused it.
data.csv: every `"url"` whose file name is data.csv is replaced by the CSV text inline (format csv,
so types are inferred exactly as for a loaded file), layered and nested specs included.
allowed_base_urls=[] makes any other http(s) URL an error instead of a silently empty chart; it does
not cover file: URLs (data or image marks), so a spec that names one anywhere is refused here (exit 1),
whether it would have read a file or drawn an empty chart.
"""
import json
import os
import re
import sys

FILE_URL = re.compile(r"(?i)(?<![\w.-])file:")


def file_urls(node):
    """Every string of the spec that names a file: URL."""
    if isinstance(node, dict):
        return [u for k, v in node.items() for u in file_urls(k) + file_urls(v)]
    if isinstance(node, list):
        return [u for v in node for u in file_urls(v)]
    return [node] if isinstance(node, str) and FILE_URL.search(node) else []


def inline(node, csv):
    if isinstance(node, dict):
        url = node.get("url")
        if csv is not None and isinstance(url, str) and url.rsplit("/", 1)[-1] == "data.csv":
            fmt = dict(node.get("format") or {}, type="csv")
            node = {k: v for k, v in node.items() if k not in ("url", "format")}
            node.update(values=csv, format=fmt)
        return {k: inline(v, csv) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v, csv) for v in node]
    return node


def main():
    try:
        spec = json.loads(open("spec.json", encoding="utf-8").read())
        assert isinstance(spec, dict), f"the specification must be a JSON object, not {type(spec).__name__}"
    except (ValueError, AssertionError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 3
    named = file_urls(spec)
    if named:
        print(f"Error: file: URLs are not allowed (the data is data.csv or inline values): {named[0][:200]!r}",
              file=sys.stderr)
        return 1
    csv = open("data.csv", encoding="utf-8").read() if os.path.exists("data.csv") else None
    spec = inline(spec, csv)
    import vl_convert as vlc

    try:
        if "/vega/v" in str(spec.get("$schema", "")):  # a plain Vega spec
            png = vlc.vega_to_png(spec, scale=2, allowed_base_urls=[])
        else:
            png = vlc.vegalite_to_png(spec, scale=2, allowed_base_urls=[])
    except Exception as e:  # keep the message, drop V8's stack lines ("    at ...")
        msg = "\n".join(l for l in str(e).splitlines() if not l.lstrip().startswith("at "))
        print(f"{type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    open("image.png", "wb").write(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
