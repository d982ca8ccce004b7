"""Task -> chat messages, and execution outcome -> self-debug message.

    from vc2.eval import prompts, tasks
    task = tasks.load_tasks(languages=["svg"])[0]
    messages = prompts.build_messages(task)            # [{"role": "user", "content": ...}]
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": prompts.debug_message(task.language, "runtime_error", stderr)}]

Run `python -m vc2.eval.prompts [svg_3]` to print the prompt of a bundled task. Answer -> code is
vc2/eval/extract.py; the per-language pieces (instruction, fence, data access, hints) are the language
records of vc2/eval/languages/.

The user message is: the language's instruction, then the task's description, style, setup (the
libraries it names) and, for data-driven languages, a description of the CSV with its first rows. The
order follows what the original harness really sends (description, style, setup, data). There is no
system message: the chat template adds the model's default one, as in training.
"""
import csv
import io
import re
import sys

from vc2.eval import languages
from vc2.eval.executors.status import Status

MAX_DATA_CHARS = 4000   # the data description is cut here (the original harness does the same)
HEAD_ROWS = 5


def _value_type(values):
    """'int', 'float' or 'str' for a column of CSV strings (empty cells ignored)."""
    vals = [v for v in values if v.strip()]
    for name, conv in (("int", int), ("float", float)):
        try:
            for v in vals:
                conv(v)
            return name if vals else "str"
        except ValueError:
            pass
    return "str"


def describe_csv(text):
    """'N rows x C columns; columns: a (int), b (str)' + a CSV head in a fence; plain text if not a table."""
    rows = list(csv.reader(io.StringIO(text.strip())))
    if len(rows) < 2 or len(rows[0]) < 1:
        return f"```csv\n{text.strip()[:MAX_DATA_CHARS]}\n```"
    header, body = rows[0], rows[1:]
    cols = [f"{name} ({_value_type([r[i] for r in body if i < len(r)])})" for i, name in enumerate(header)]
    head = text.strip().splitlines()[:HEAD_ROWS + 1]
    more = f"\n(first {HEAD_ROWS} of {len(body)} rows)" if len(body) > HEAD_ROWS else ""
    return (f"{len(body)} rows x {len(header)} columns; columns: {', '.join(cols)}.\n"
            f"```csv\n" + "\n".join(head) + "\n```" + more)


def build_prompt(task):
    """The user message for a task (see the module docstring for its parts)."""
    lang = languages.get(task.language)
    parts = [lang.instruction.format(fence=lang.fence), f"Task: {task.description.strip()}"]
    if task.style and task.style.strip():
        parts.append(f"Style: {task.style.strip()}")
    libs = [lib for lib in task.used_lib if languages.canonical(lib, default=None) != lang.name]  # not "LilyPond, using lilypond"
    parts.append(f"Setup: {lang.display}" + (f", using {', '.join(libs)}." if libs else "."))
    if task.data and lang.data == "csv":
        desc = describe_csv(task.data)
        if len(desc) > MAX_DATA_CHARS:
            desc = desc[:MAX_DATA_CHARS] + "\n[...]"
        parts.append(f"Data: a CSV file `data.csv`, {desc}\n{lang.data_access}")
    elif task.data and lang.data == "code":
        parts.append(f"Data: define it in your program exactly as follows.\n```{lang.fence}\n"
                     f"{task.data.strip()[:MAX_DATA_CHARS]}\n```")
    return "\n\n".join(parts)


def build_messages(task, system=None):
    """Chat messages for round 0; render them with tokenizer.render_chat(messages, add_generation_prompt=True)."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": build_prompt(task)}]


# ---------------------------------------------------------------------------------------------------
# self-debug feedback

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# lines worth keeping from the middle of a long log: the error itself, wherever it is
_ERROR_LINE = re.compile(r"^!|error|exception|traceback|fatal|^l\.\d+|failed|invalid|unexpected|undefined", re.I)


def trim_error(text, max_chars=2000, head_lines=12, tail_lines=30):
    """Keep a long error readable: the first lines, the last lines, and error-looking lines in between.

    Tracebacks end with the exception and compiler logs put `! ...`/`error:` lines near the end, but
    a log can also be dominated by warnings, so the middle is searched for error lines too.
    """
    lines = [ln.rstrip() for ln in _ANSI.sub("", text or "").strip().splitlines()]
    lines = [ln if len(ln) <= 300 else ln[:300] + " [...]" for ln in lines]  # e.g. a minified JS line
    if len(lines) > head_lines + tail_lines:
        middle = lines[head_lines:-tail_lines]
        keep = [ln for ln in middle if _ERROR_LINE.search(ln)][:10]
        skipped = len(middle) - len(keep)
        lines = lines[:head_lines] + [f"[... {skipped} lines omitted ...]"] + keep + lines[-tail_lines:]
    out = "\n".join(lines)
    if len(out) > max_chars:  # still too long: the tail holds the final error, so it gets the larger share
        head = max_chars // 4
        out = out[:head] + "\n[...]\n" + out[-(max_chars - head):]
    return out


_STATUS_TEXT = {
    Status.SYNTAX_ERROR: "The code above could not be parsed. The error was:",
    Status.RUNTIME_ERROR: "The code above failed with this error:",
    Status.TIMEOUT: "The code above did not finish within the time limit and was stopped.",
    Status.NO_IMAGE: "The code above ran without errors but produced no image.",
    Status.BLANK_IMAGE: "The code above ran, but the image it produced is blank (a single colour, nothing drawn).",
    Status.INFRA_ERROR: "The code above could not be run because of a problem in the execution environment:",
}


def debug_message(language, outcome_status, error_text):
    """The user turn that asks for a fix after a failed attempt (the error trimmed to a useful size)."""
    lang = languages.get(language)
    if outcome_status not in _STATUS_TEXT:
        raise ValueError(f"no self-debug message for outcome {outcome_status!r}")
    parts = [_STATUS_TEXT[outcome_status]]
    err = trim_error(error_text)
    if err:
        parts.append(f"```\n{err}\n```")
    if outcome_status in (Status.NO_IMAGE, Status.BLANK_IMAGE):
        parts.append(lang.no_image_hint)
    parts.append(f"Please fix the problem and reply with the complete corrected code in a single "
                 f"```{lang.fence} code block.")
    return "\n".join(parts)


if __name__ == "__main__":
    from vc2.eval.tasks import load_tasks
    wanted = sys.argv[1:]
    for t in load_tasks():
        if not wanted or t.id in wanted or t.language in wanted:
            print(f"=== {t.language}/{t.id}\n{build_prompt(t)}\n")
            if not wanted:
                break
