"""Golden verdicts: every bundled reference solution and the tricky answers of golden_answers.py, run
through extraction and the real executors (warm servers, as a run does), must come out exactly as
recorded: the outcome and the class of the error. A refactor that changes a verdict fails here,
silently nowhere. tests/assets/golden_verdicts.json is the set recorded before the language-records
refactor (the eight languages' references and ANSWERS); golden_verdicts_added.json the cases added
since (bundled tasks added later, and ADDED: VisCode-Multi's other four languages).

    python -m pytest tests/eval/test_golden_verdicts.py
    python tests/eval/golden_answers.py --regenerate-added  # only when a change to the added cases is intended
"""
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vc2.eval import executors, extract, languages
from vc2.eval.tasks import load_tasks
from vc2.eval.warm import WarmPool

from golden_answers import ADDED, ANSWERS

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_verdicts.json"
GOLDEN_ADDED = GOLDEN.with_name("golden_verdicts_added.json")
TIMEOUT_S = 3.0  # for the "timeout" answers only; the others run under their language's limit


def error_class(error):
    """What kind of error, without the parts that vary run to run (paths, numbers, addresses)."""
    if not error:
        return ""
    text = re.sub(r"/tmp/\S+|0x[0-9a-f]+|\d+", "#", error)
    named = re.findall(r"\b([A-Z]\w*(?:Error|Exception|Exit))\b", text)
    if named:
        return named[-1]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return first[:60]


def cases():
    out = []
    for task in load_tasks(None, sorted(ANSWERS)):
        out.append((f"{task.language}/{task.id}", task.language, f"```\n{task.reference_code}\n```", task.data_csv, None))
    for lang, kinds in list(ANSWERS.items()) + list(ADDED.items()):
        for kind, answer in kinds.items():
            out.append((f"{lang}/{kind}", lang, answer, None, TIMEOUT_S if kind == "timeout" else None))
    return out


def verdicts(tmp_path, mode="bwrap"):
    """{case: verdict} with every case run in sandbox `mode` (warm servers where the mode has them)."""
    with WarmPool(mode) as pool:
        def one(case):
            name, lang, answer, csv, timeout = case
            code = extract.extract_code(lang, answer)
            out = executors.run(lang, code, tmp_path / name.replace("/", "_"), data_csv=csv, sandbox=mode,
                                timeout_s=timeout, warm=pool)
            return name, {"outcome": out.status, "error_class": error_class(out.error)}
        with ThreadPoolExecutor(2) as ex:
            got = dict(ex.map(one, cases()))
        assert not pool.stats["failed"], pool.stats  # a warm server failing would hide behind cold runs
    return got


def regenerate(added_only=True):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        got = verdicts(Path(d))
    before = json.loads(GOLDEN.read_text())
    if not added_only:
        before = {k: got[k] for k in before}
        GOLDEN.write_text(json.dumps(before, indent=1, sort_keys=True) + "\n")
    added = {k: v for k, v in got.items() if k not in before}
    GOLDEN_ADDED.write_text(json.dumps(added, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(added)} verdicts to {GOLDEN_ADDED}" + ("" if added_only else f", {len(before)} to {GOLDEN}"))


@pytest.mark.slow
def test_every_verdict_is_the_recorded_one(tmp_path):
    before, added = json.loads(GOLDEN.read_text()), json.loads(GOLDEN_ADDED.read_text())
    assert not set(before) & set(added)
    golden = {**before, **added}
    got = verdicts(tmp_path)
    assert set(got) == set(golden), f"cases added or removed: {sorted(set(got) ^ set(golden))}"
    changed = {k: (golden[k], got[k]) for k in golden if golden[k] != got[k]}
    assert not changed, f"{len(changed)} verdict(s) changed (golden, now): {json.dumps(changed, indent=1)}"
    kinds = {v["outcome"] for v in golden.values()}
    assert {"pass", "syntax_error", "runtime_error", "timeout", "blank_image", "no_image"} <= kinds  # the set is varied
    assert {k.split("/")[0] for k in golden} == set(languages.LANGUAGES)  # every language has its cases
