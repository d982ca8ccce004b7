"""Model answer -> the code to run.

    from vc2.eval.extract import extract_code
    code = extract_code("python", answer)     # answer: the model's raw text

Deliberately more forgiving than the original harness, which took the first fenced block and kept
unknown info strings as code: we drop reasoning (`<think>...</think>`), prefer blocks tagged for the
language, then unlabeled ones, then any other, and take the *last* block that looks like a whole
program (the language record's `looks_complete`), since drafts come before the final answer. Then the
language's own repair runs (its record's `repair`, documented where it is defined: Vega-Lite JSON with
comments or prose, LaTeX without a preamble, HTML fragments, SVG with prose around it, Mermaid with
prose before the diagram).
"""
import re
from dataclasses import dataclass

from vc2.eval import languages


@dataclass
class Extracted:
    code: str
    method: str   # "fenced" (a block tagged for the language), "unlabeled", "other-tag", "unclosed", "whole"
    raw: str      # the answer exactly as the model wrote it


_SPECIAL = re.compile(r"<\|[a-z_]+\|>|<EOS>|</s>|<s>")
_FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")


def final_part(answer):
    """The text after the reasoning: after the last </think>, inside <answer>...</answer> if present."""
    text = _SPECIAL.sub("", answer)
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        text = after if after.strip() else text.replace("<think>", "").replace("</think>", "")
    elif "<think>" in text:  # cut off while thinking: only drafts exist; the last-block rule still applies
        text = text.split("<think>", 1)[1]
    m = re.search(r"<answer>(.*?)(</answer>|$)", text, re.S)
    if m and m.group(1).strip():
        text = m.group(1)
    return text


def blocks(text):
    """[(tag, code, closed)] of fenced blocks; an unclosed last block runs to the end of the text."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, tag = len(m.group(1)), m.group(2), m.group(3).lower().strip("{}.")
        body, closed, i = [], False, i + 1
        while i < len(lines):
            ln = lines[i]
            s = ln.strip()
            if s.startswith(fence[0] * 3) and set(s) == {fence[0]} and len(s) >= len(fence):
                closed = True
                break
            if fence[0] == "`" and ln.rstrip().endswith(fence) and not ln.rstrip().endswith(fence + "`"):
                body.append(ln.rstrip()[:-len(fence)])  # code``` : the fence glued to the last line
                closed = True
                break
            body.append(ln[indent:] if ln[:indent].strip() == "" else ln)
            i += 1
        i += 1
        out.append((tag, "\n".join(body).strip("\n").rstrip(), closed))
    return out


def extract(language, answer):
    """Pick the code out of a model answer; see the module docstring for the rules."""
    lang = languages.get(language)
    raw = answer or ""
    text = final_part(raw)
    found = blocks(text)
    if not any(code.strip() for _, code, _ in found) and "</think>" in raw:
        found = blocks(_SPECIAL.sub("", raw))  # the code was only written inside the reasoning
    code, method = None, "whole"
    for pool_method, pool in (("fenced", [b for b in found if b[0] in lang.tags]),
                              ("unlabeled", [b for b in found if not b[0]]),
                              ("other-tag", [b for b in found if b[0] and b[0] not in lang.tags])):
        pool = [b for b in pool if b[1].strip()]
        if pool:
            complete = [b for b in pool if lang.looks_complete(b[1])]
            tag, code, closed = (complete or pool)[-1]
            method = pool_method if closed else "unclosed"
            break
    if code is None:
        code = text.strip()
    return Extracted(code=lang.repair(code), method=method, raw=raw)


def extract_code(language, answer):
    """Just the code of extract()."""
    return extract(language, answer).code
