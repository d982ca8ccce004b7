"""Validate a VisCode-Multi-style dataset by running it: keep the rows whose program really draws.

    python -m vc2.data.validate DATA.jsonl [MORE.parquet DIR ...] --out KEPT.jsonl
    python -m vc2.validate ...                                   # the same command
    python -m vc2.data.validate DATA --out KEPT.jsonl --keep not_visual missing_dependency

Every row {uuid, messages, language} gets one class:
  kept                    the final assistant turn's program renders (an image that decodes and is not
                          blank) and, in a correction dialogue, every earlier attempt fails, as the
                          feedback after it says
  not_visual              nothing in the final program draws (its language record's `draws`), e.g. a
                          Code-Feedback dialogue about an algorithm: not run
  unsupported_language    the language is none of vc2's twelve (vc2/eval/languages): not run
  missing_dependency      the program imports a package the sandbox lacks (the record's
                          `missing_dependency` pattern on its error); the report names the packages
  earlier_attempt_passes  a correction dialogue whose "failed" attempt renders after all
  malformed, no_program   a row that cannot be trained on (vc2.data.row_problem), or no code in the answer
  syntax_error, runtime_error, timeout, no_image, blank_image: what the final program did
  infra_error             ours (a renderer missing, the sandbox broken): never kept, tried again next run
Only `kept` rows are written unless --keep names more classes. Programs run exactly as the evaluator
runs answers: extracted by vc2.eval.extract, executed by vc2.eval.executors in the sandbox, in
parallel (--workers) with the warm servers (vc2/eval/warm.py). The language is the row's `language`
field, or, without one, the fence tag of its final answer.

Outputs, beside KEPT.jsonl: KEPT.state.jsonl holds one verdict per row, appended as rows finish, so a
killed run started again continues where it stopped (rows are keyed by file and line: give the same
files; each verdict also records the row's wall time); a second run with other --keep flags only rewrites the outputs. KEPT.jsonl gets the kept rows as
they were read, in input order, written at the end (to a temporary file, then renamed).
KEPT.report.json and KEPT.report.md give per language: rows, kept, dropped by class, missing packages
and a few examples of each class with their error.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from vc2.data import data_files, iter_rows, row_problem
from vc2.eval import executors, languages, sandbox
from vc2.eval.executors.status import Status
from vc2.eval.extract import blocks, extract_code, final_part
from vc2.eval.warm import WarmPool

CLASSES = ("kept", "not_visual", "unsupported_language", "missing_dependency", "earlier_attempt_passes", "malformed",
           "no_program", *(s.value for s in Status if s not in (Status.PASS, Status.INFRA_ERROR)), "infra_error")
EXAMPLES = 3  # per language and class in the report


def row_language(row):
    """The record for a row (its `language` field, else its final answer's fence tag), or None."""
    if row.get("language"):
        return languages.LANGUAGES.get(languages.canonical(row["language"], default=None))
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    for tag, _, _ in reversed(blocks(final_part(answers[-1]))):
        name = languages.canonical(tag, default=None) or next(
            (n for n, r in languages.LANGUAGES.items() if tag in r.tags), None)
        if name:
            return languages.LANGUAGES[name]
    return None


def run_program(lang, code, sandbox_mode, timeout_s, pool):
    """The Outcome of one program, in a private dir of its own."""
    with tempfile.TemporaryDirectory(prefix="vc2-validate-") as d:
        return executors.run(lang.name, code, Path(d), sandbox=sandbox_mode, timeout_s=timeout_s, warm=pool)


def failure_class(lang, out):
    """(class, detail) of a program that did not pass."""
    if out.status == Status.INFRA_ERROR:
        return "infra_error", out.error
    if lang.missing_dependency:
        m = re.search(lang.missing_dependency, out.error or "")
        if m:
            return "missing_dependency", m.group(1)
    return str(out.status), out.error


def check(row, sandbox_mode="auto", timeout_s=None, pool=None):
    """The verdict of one row: {"class", "language", "detail"} (see the module docstring)."""
    problem = row_problem(row)
    if problem:
        return {"class": "malformed", "language": str(row.get("language")), "detail": problem}
    lang = row_language(row)
    if lang is None:
        return {"class": "unsupported_language", "language": str(row.get("language") or "?"), "detail": ""}
    verdict = {"language": lang.name}
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    code = extract_code(lang.name, answers[-1])
    if not code.strip():
        return {**verdict, "class": "no_program", "detail": "the final answer holds no code"}
    if lang.draws and not re.search(lang.draws, code):
        return {**verdict, "class": "not_visual", "detail": "nothing in the program draws"}
    out = run_program(lang, code, sandbox_mode, timeout_s, pool)
    if out.status != Status.PASS:
        cls, detail = failure_class(lang, out)
        return {**verdict, "class": cls, "detail": (detail or "")[-600:]}
    for i, answer in enumerate(answers[:-1]):  # a correction dialogue: the attempts it corrects must fail
        before = run_program(lang, extract_code(lang.name, answer), sandbox_mode, timeout_s, pool)
        if before.status == Status.INFRA_ERROR:
            return {**verdict, "class": "infra_error", "detail": before.error[-600:]}
        if before.status == Status.PASS:
            return {**verdict, "class": "earlier_attempt_passes", "detail": f"assistant turn {i + 1} of {len(answers)} renders"}
    return {**verdict, "class": "kept", "detail": ""}


# ---------------------------------------------------------------------------------------------------
# the run: rows in, verdicts appended to the state file, outputs written from the state

def read_state(path):
    """{key: verdict} of rows already decided (a torn last line from a kill is ignored; infra errors
    are left out, so they are tried again)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                v = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[v["key"]] = v
    return {k: v for k, v in done.items() if v["class"] != "infra_error"}


def rows_of(files):
    """(key, row-or-JSONDecodeError) in input order; key = "<absolute path>:<line or row number>"."""
    for f in files:
        for n, row in iter_rows(f):
            yield f"{f.resolve()}:{n}", row


def validate(paths, out, keep=("kept",), workers=None, sandbox_mode="auto", timeout_s=None, warm=True, limit=0):
    """Run the whole validation (see the module docstring); returns the report dict. Rows that hit an
    infra error are in no output: the report counts them (infra_error), and the next run tries them again."""
    out = Path(out)
    files = data_files(paths)
    bad = sorted(set(keep) - set(CLASSES))
    if bad:
        raise ValueError(f"--keep {' '.join(bad)}: unknown class; choose from {', '.join(CLASSES)}")
    state_path = out.with_name(out.stem + ".state.jsonl")
    done = read_state(state_path)
    if done:
        print(f"resuming: {len(done)} rows already decided in {state_path}", file=sys.stderr)
    for f in files:  # the data holds the conversations' expected answers: never visible to a program
        sandbox.hide(f.parent)
    sandbox.hide(out.parent.resolve())
    workers = workers or os.cpu_count() or 2
    pool = WarmPool(sandbox_mode) if warm else None
    lock = threading.Lock()
    counts = Counter(v["class"] for v in done.values())
    todo = ((k, r) for k, r in islice(rows_of(files), limit or None) if k not in done)

    def one(key, row):
        t0 = time.monotonic()
        if isinstance(row, json.JSONDecodeError):
            v = {"class": "malformed", "language": "?", "detail": f"not valid JSON ({row.msg})", "uuid": None}
        else:
            try:
                v = check(row, sandbox_mode, timeout_s, pool)
            except Exception as e:  # ours: this row's infra error, and the run goes on
                v = {"class": "infra_error", "language": str(row.get("language")), "detail": f"{type(e).__name__}: {e}"}
            v["uuid"] = row.get("uuid") if isinstance(row, dict) else None
        v["key"], v["wall_s"] = key, round(time.monotonic() - t0, 3)
        with lock:
            state.write(json.dumps(v) + "\n")
            state.flush()
            done[key] = v
            counts[v["class"]] += 1
        return v

    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path, "a") as state, ThreadPoolExecutor(workers) as threads:
        bar = tqdm(desc="validate", unit="row", dynamic_ncols=True)
        running = set()
        try:
            for key, row in todo:
                if len(running) >= 2 * workers:  # a bounded window: the data is streamed, never held
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()
                    bar.update(len(finished))
                    bar.set_postfix_str(f"kept {counts['kept']}", refresh=False)
                running.add(threads.submit(one, key, row))
            for f in running:
                f.result()
                bar.update(1)
        finally:
            bar.close()
            if pool:
                pool.close()
    if pool and pool.stats["failed"]:
        print(f"warm workers: {len(pool.stats['failed'])} server failure(s), those rows ran cold", file=sys.stderr)
    return write_outputs(files, out, done, set(keep), limit)


def write_outputs(files, out, done, keep, limit=0):
    """KEPT.jsonl (input order), KEPT.report.json and .md, all from the verdicts."""
    tmp = out.with_name(out.name + ".tmp")
    written, verdicts = 0, []
    with open(tmp, "w") as f:
        for key, row in islice(rows_of(files), limit or None):
            v = done.get(key)
            if v is None:  # not decided (cannot happen after a full run)
                continue
            verdicts.append(v)
            if v["class"] in keep and not isinstance(row, json.JSONDecodeError):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
    tmp.replace(out)
    report = summarize(verdicts, keep, written)
    out.with_name(out.stem + ".report.json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_name(out.stem + ".report.md").write_text(markdown(report))
    return report


def summarize(verdicts, keep, written):
    per = defaultdict(lambda: {"rows": 0, "classes": Counter(), "missing": Counter(), "examples": defaultdict(list)})
    for v in verdicts:
        p = per[v["language"]]
        p["rows"] += 1
        p["classes"][v["class"]] += 1
        if v["class"] == "missing_dependency":
            p["missing"][v["detail"]] += 1
        if len(p["examples"][v["class"]]) < EXAMPLES and v["class"] != "kept":
            p["examples"][v["class"]].append({"uuid": v.get("uuid"), "key": v["key"], "detail": v["detail"][-300:]})
    langs = {}
    for name in sorted(per, key=lambda n: (n not in languages.LANGUAGES, list(languages.LANGUAGES).index(n)
                                           if n in languages.LANGUAGES else 0, n)):
        p = per[name]
        langs[name] = {"rows": p["rows"], "kept": sum(p["classes"][c] for c in keep),
                       "classes": {c: p["classes"][c] for c in CLASSES if p["classes"][c]},
                       "missing_packages": dict(p["missing"].most_common(20)), "examples": dict(p["examples"])}
    total = Counter()
    for p in per.values():
        total.update(p["classes"])
    return {"rows": sum(p["rows"] for p in per.values()), "written": written, "keep": sorted(keep),
            "classes": {c: total[c] for c in CLASSES if total[c]}, "languages": langs}


def markdown(report):
    cols = [c for c in CLASSES if c in report["classes"]]
    lines = [f"# Dataset validation: {report['written']} of {report['rows']} rows written "
             f"(kept classes: {', '.join(report['keep'])})", "",
             "| language | rows | written | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for name, v in report["languages"].items():
        lines.append(f"| {name} | {v['rows']} | {v['kept']} | " + " | ".join(str(v["classes"].get(c, 0)) for c in cols) + " |")
    lines.append(f"| **all** | {report['rows']} | {report['written']} | " +
                 " | ".join(str(report["classes"][c]) for c in cols) + " |")
    for name, v in report["languages"].items():
        if v["missing_packages"]:
            lines += ["", f"{name}: missing packages: " + ", ".join(f"{k} ({n})" for k, n in v["missing_packages"].items())]
        for cls, examples in v["examples"].items():
            lines += ["", f"## {name} / {cls}"] + [f"- `{e['uuid'] or e['key']}`: {e['detail'].strip()[-200:]!r}"
                                                 for e in examples]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help=".jsonl / .parquet files of {uuid, messages, language} rows, or directories of them")
    p.add_argument("--out", required=True, help="where the kept rows go (JSONL); the state and reports are written beside it")
    p.add_argument("--keep", nargs="+", default=["kept"], metavar="CLASS",
                   help=f"classes whose rows are written (default: kept); any of {', '.join(CLASSES)}")
    p.add_argument("--workers", type=int, default=None, help="programs run at once (default: the CPU count)")
    p.add_argument("--sandbox", default="auto", choices=("auto", "container", "podman", "docker", "bwrap", "unshare", "plain"),
                   help="where rows run: auto = each language in its family image when built (sandbox_images/build.sh), "
                        "else bwrap, unshare, plain (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per program (default: each language's limit)")
    p.add_argument("--no-warm", action="store_true", help="a fresh renderer process per program (same verdicts, slower)")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows (default: all)")
    args = p.parse_args(argv)
    keep = set(args.keep) | {"kept"}
    try:
        report = validate(args.data, args.out, keep=keep, workers=args.workers, sandbox_mode=args.sandbox,
                          timeout_s=args.timeout, warm=not args.no_warm, limit=args.limit)
    except ValueError as e:
        p.error(str(e))
    print(markdown(report).split("\n## ")[0])  # the table and the missing packages; examples are in the file
    return 0


if __name__ == "__main__":
    sys.exit(main())
