"""`run_eval.py --model reference` passes every bundled task through the real renderers in the sandbox.

    python -m pytest tests/eval/test_reference_replay.py      # ~3 min on 2 cores
"""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import run_eval  # noqa: E402  (the CLI module itself)
from vc2.eval import languages  # noqa: E402


@pytest.mark.slow
def test_reference_solutions_all_pass(tmp_path):
    rc = run_eval.main(["--lang", "all", "--model", "reference", "--out", str(tmp_path / "ref"),
                        "--workers", str(os.cpu_count() or 2)])
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    failures = [json.loads(l) for l in (tmp_path / "ref" / "results.jsonl").read_text().splitlines()]
    failures = [(r["key"], r["outcome"], r["error"][-300:]) for r in failures if r["outcome"] != "pass"]
    assert rc == 0 and not failures, failures
    assert set(summary["languages"]) == set(languages.BENCHMARK)
    for lang, v in summary["languages"].items():
        assert v["scored"] >= 12 and v["pass_rate_by_round"][0] == 100.0, lang
    assert summary["meta"]["sandbox"] in ("docker", "podman", "bwrap", "unshare", "plain")
    warm = summary["meta"]["warm_workers"]  # on by default: 65 of the 104 tasks have a warm server
    assert warm["warm"] >= 65 and warm["cold"] == 0 and not warm["failed"], warm
