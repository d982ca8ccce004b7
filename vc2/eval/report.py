"""Turn OUT/results.jsonl rows into OUT/summary.json, OUT/report.md (a table like the paper's) and
OUT/report.html (generated vs reference image per task). Called by vc2/eval/runner.py at the end of a run.

Pass rate after round k = tasks with a passing attempt in rounds 0..k / tasks scored. Tasks whose latest
attempt was an infra error (renderer missing, sandbox broken) are not scored: they are listed instead.
"Overall" is the micro-average over all scored tasks, as in the paper.
"""
import html
import json
import os
from collections import Counter, defaultdict
from pathlib import Path


def summarize(tasks, results: dict, rounds: int) -> dict:
    by_task = defaultdict(dict)  # key -> {round: row}
    for (key, rnd), row in results.items():
        by_task[key][rnd] = row
    langs = sorted({t.language for t in tasks})
    per_lang = {}
    for lang in langs:
        keys = [f"{t.language}/{t.id}" for t in tasks if t.language == lang]
        attempted = [k for k in keys if by_task.get(k)]
        infra = [k for k in attempted if by_task[k][max(by_task[k])]["outcome"] == "infra_error"]
        scored = [k for k in attempted if k not in infra]
        passed_by_round = []
        for r in range(rounds + 1):
            passed_by_round.append(sum(any(row["outcome"] == "pass" for rr, row in by_task[k].items() if rr <= r)
                                       for k in scored))
        final_fail = Counter(by_task[k][max(by_task[k])]["outcome"] for k in scored
                             if not any(row["outcome"] == "pass" for row in by_task[k].values()))
        per_lang[lang] = {
            "tasks": len(keys), "attempted": len(attempted), "scored": len(scored),
            "passed_by_round": passed_by_round,
            "pass_rate_by_round": [round(100 * p / len(scored), 1) if scored else None for p in passed_by_round],
            "final_failures": dict(final_fail), "infra_errors": infra,
        }
    scored = sum(v["scored"] for v in per_lang.values())
    overall = [sum(v["passed_by_round"][r] for v in per_lang.values()) for r in range(rounds + 1)]
    stops = [dict(Counter(row.get("stop") for (_, rr), row in results.items() if rr == r and row.get("stop")))
             for r in range(rounds + 1)]
    return {"languages": per_lang, "overall": {
        "scored": scored, "passed_by_round": overall,
        "pass_rate_by_round": [round(100 * p / scored, 1) if scored else None for p in overall],
        "infra_errors": sum(len(v["infra_errors"]) for v in per_lang.values()),
        "stop_reasons_by_round": stops}}


def describe_generation(g: dict | None) -> str:
    """One line for the settings in force (None: fixed answers, nothing generated)."""
    if not g:
        return "none (fixed answers)"
    mode = "greedy" if g["temperature"] == 0 else (f"temperature {g['temperature']}, top_p {g['top_p']}, "
                                                   f"top_k {g['top_k'] or 'off'}, seed {g['seed']}")
    text = (f"{g['sampling']} settings: {mode}, repetition_penalty {g['repetition_penalty']}, "
            f"max_new_tokens {g['max_new_tokens']} (capped at context {g['context']} minus the prompt), "
            f"stop at eos ids {g.get('stop_ids')}")
    return text + (f"; note: {g['note']}" if g.get("note") else "")


def markdown(summary: dict, rounds: int, meta: dict) -> str:
    heads = ["Language", "Tasks"] + ["Exec pass (init)"] + [f"+ self-debug r{r}" for r in range(1, rounds + 1)] + ["Infra errors"]
    lines = [f"# VisPlotBench-style execution pass rate", "",
             f"Answers: `{meta.get('source')}`. Sandbox: `{meta.get('sandbox')}`.", "",
             f"Generation: {describe_generation(meta.get('generation'))}.", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]

    def row(name, v, n):
        rates = ["-" if x is None else f"{x:.1f}" for x in v["pass_rate_by_round"]]
        infra = v["infra_errors"] if isinstance(v["infra_errors"], int) else len(v["infra_errors"])
        return "| " + " | ".join([name, str(n)] + rates + [str(infra)]) + " |"

    for lang, v in summary["languages"].items():
        lines.append(row(lang, v, v["scored"]))
    lines.append(row("**Overall (micro)**", summary["overall"], summary["overall"]["scored"]))
    fails = Counter()
    for v in summary["languages"].values():
        fails.update(v["final_failures"])
    if fails:
        lines += ["", "Final failure kinds: " + ", ".join(f"{k} {n}" for k, n in fails.most_common())]
    stops = summary["overall"].get("stop_reasons_by_round") or []
    if any(stops):
        lines += ["", "Why generation stopped (attempts per round): " + "; ".join(
            f"r{r}: " + ", ".join(f"{k} {n}" for k, n in sorted(c.items())) for r, c in enumerate(stops) if c)]
    infra = [k for v in summary["languages"].values() for k in v["infra_errors"]]
    if infra:
        lines += ["", f"**{len(infra)} task(s) not scored because of infra errors** (see results.jsonl): " + ", ".join(infra[:20])]
    return "\n".join(lines) + "\n"


def gallery(tasks, results: dict, out_dir: Path) -> str:
    latest = {}
    for (key, rnd), row in results.items():
        if key not in latest or rnd > latest[key]["round"]:
            latest[key] = row
    cells = []
    for t in tasks:
        key = f"{t.language}/{t.id}"
        row = latest.get(key)
        if row is None:
            continue
        ref = ""
        if getattr(t, "reference_image", None) and Path(t.reference_image).is_file():
            ref = f'<img src="{html.escape(os.path.relpath(t.reference_image, out_dir))}" loading="lazy">'
        gen = f'<img src="{html.escape(row["image"])}" loading="lazy">' if row.get("image") else "<i>no image</i>"
        cls = "pass" if row["outcome"] == "pass" else "fail"
        cells.append(f'<div class="task {cls}"><h3>{html.escape(key)} (round {row["round"]}): {row["outcome"]}</h3>'
                     f'<p>{html.escape(t.description[:300])}</p><div class="pair"><figure>{gen}<figcaption>generated'
                     f'</figcaption></figure><figure>{ref}<figcaption>reference</figcaption></figure></div>'
                     f'<details><summary>code / error</summary><pre>{html.escape(row["code"][:4000])}</pre>'
                     f'<pre>{html.escape(row["error"][:2000])}</pre></details></div>')
    style = ("body{font-family:sans-serif;margin:1em}.task{border:1px solid #ccc;margin:.5em;padding:.5em}"
             ".pass h3{color:#060}.fail h3{color:#a00}.pair{display:flex;gap:1em}figure{margin:0}"
             "img{max-width:380px;max-height:300px;border:1px solid #eee}pre{white-space:pre-wrap;font-size:11px}")
    return f"<!doctype html><meta charset=utf-8><title>vc2 eval</title><style>{style}</style>\n" + "\n".join(cells)


def write_reports(tasks, results: dict, out_dir, rounds: int, meta: dict) -> dict:
    out_dir = Path(out_dir)
    summary = summarize(tasks, results, rounds)
    summary["meta"] = meta
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "report.md").write_text(markdown(summary, rounds, meta))
    (out_dir / "report.html").write_text(gallery(tasks, results, out_dir))
    return summary
