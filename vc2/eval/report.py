"""Turn OUT/results.jsonl rows into OUT/summary.json, OUT/report.md (tables like the paper's) and
OUT/report.html (the same tables, then every task's rounds beside its reference image, failures first,
with filters). Called by vc2/eval/runner.py at the end of a run.

Per round k, a task is: passed (a passing attempt in rounds 0..k), failed (scored, no pass), an infra
error (its latest attempt up to k was one: renderer missing, sandbox broken, API request failed) or not
attempted. Pass rate after round k = passed / (passed + failed) at k; infra errors are counted per
round and left out of that round's denominator only, so an API failure in round 2 does not erase a
task's rounds 0-1. "Overall" is the micro-average over all tasks, as in the paper.
Fidelity and judge scores are those of the task's latest attempt up to round k (the passing one once it
passed); a failed execution scores 0. Judge aggregates follow the original (mean, median, share >= 75
"good", <= 25 "bad") in two views: all tasks with failures at 0, and passing tasks only; unscored
judge answers are counted, never 0.
"""
import html
import json
import os
from collections import Counter, defaultdict
from pathlib import Path


def _task_state(rows_by_round, r):
    """(state, row) of one task after round r: "pass" (a pass in rounds <= r; row = that attempt),
    "fail" (scored, no pass; row = the latest attempt), "infra" (its latest attempt <= r was an infra
    error and nothing passed), or None (not attempted by round r)."""
    rows = [rows_by_round[rr] for rr in sorted(rows_by_round) if rr <= r]
    if not rows:
        return None, None
    passing = [row for row in rows if row["outcome"] == "pass"]
    if passing:
        return "pass", passing[0]
    if rows[-1]["outcome"] == "infra_error":
        return "infra", rows[-1]
    return "fail", rows[-1]


def _stats(values, good=None, bad=None):
    """mean, median (and the original judge's share >= good / <= bad) of a list of numbers."""
    if not values:
        return {"n": 0, "mean": None, "median": None, **({"good": None, "bad": None} if good is not None else {})}
    v = sorted(values)
    mid = len(v) // 2
    out = {"n": len(v), "mean": round(sum(v) / len(v), 4), "median": v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2}
    if good is not None:
        out["good"] = round(sum(x >= good for x in v) / len(v), 4)
        out["bad"] = round(sum(x <= bad for x in v) / len(v), 4)
    return out


def spearman(x, y):
    """Spearman's rho with average ranks for ties (None for fewer than 3 pairs or a constant side)."""
    import numpy as np

    def ranks(a):
        a = np.asarray(a, dtype=np.float64)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for v in np.unique(a):  # ties share their mean rank
            r[a == v] = r[a == v].mean()
        return r

    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return round(float(np.corrcoef(rx, ry)[0, 1]), 4)


FIDELITY_GOOD = 0.8   # "looks like the reference" (bench/RESULTS.md: ~5 % of class <= 3 pairs reach it)
JUDGE_GOOD, JUDGE_BAD = 75, 25


def _judge_stats(states, kind):
    """Judge `kind` ("vis"/"task") over tasks in `states` [(state, row)]: all tasks with failed executions
    scored 0 (the original's tables), and passing tasks only; unscored answers are counted, never 0."""
    all_v, pass_v, unscored = [], [], 0
    for state, row in states:
        if state == "fail":
            all_v.append(0)
            continue
        j = (row.get("judge") or {}).get(kind)
        if j is None:
            continue  # not judged (no judge in this run)
        if j.get("status") == "scored":
            all_v.append(j["score"])
            pass_v.append(j["score"])
        else:
            unscored += 1
    return {"all": _stats(all_v, JUDGE_GOOD, JUDGE_BAD), "passing": _stats(pass_v, JUDGE_GOOD, JUDGE_BAD),
            "unscored": unscored}


def _round_view(states):
    """Fidelity and judge aggregates of one group of tasks after one round."""
    scored = [(s, row) for s, row in states if s in ("pass", "fail")]
    # a failed execution scores 0, as in the judge's all-tasks view; tasks without a reference image are left out
    fid = [row["fidelity"] if s == "pass" else 0.0 for s, row in scored if row.get("fidelity") is not None]
    view = {"fidelity": {**_stats(fid), "share_ge_0.8": round(sum(f >= FIDELITY_GOOD for f in fid) / len(fid), 4) if fid else None}}
    if any((row.get("judge") for _, row in scored)):
        view["judge"] = {k: _judge_stats(scored, k) for k in ("vis", "task")}
    return view


def summarize(tasks, results: dict, rounds: int) -> dict:
    by_task = defaultdict(dict)  # key -> {round: row}
    for (key, rnd), row in results.items():
        by_task[key][rnd] = row
    langs = sorted({t.language for t in tasks})
    per_lang, all_states = {}, [[] for _ in range(rounds + 1)]
    for lang in langs:
        keys = [f"{t.language}/{t.id}" for t in tasks if t.language == lang]
        attempted = [k for k in keys if by_task.get(k)]
        states = [[_task_state(by_task.get(k, {}), r) for k in keys] for r in range(rounds + 1)]
        for r in range(rounds + 1):
            all_states[r] += states[r]
        scored_by_round = [sum(s in ("pass", "fail") for s, _ in states[r]) for r in range(rounds + 1)]
        passed_by_round = [sum(s == "pass" for s, _ in states[r]) for r in range(rounds + 1)]
        infra_by_round = [sum(s == "infra" for s, _ in states[r]) for r in range(rounds + 1)]
        final = states[rounds]
        final_fail = Counter(row["outcome"] for s, row in final if s == "fail")
        per_lang[lang] = {
            "tasks": len(keys), "attempted": len(attempted), "scored": scored_by_round[-1],
            "scored_by_round": scored_by_round, "passed_by_round": passed_by_round,
            "pass_rate_by_round": [round(100 * p / n, 1) if n else None for p, n in zip(passed_by_round, scored_by_round)],
            "final_failures": dict(final_fail),
            "infra_errors": [k for k, (s, _) in zip(keys, final) if s == "infra"],
            "infra_errors_by_round": infra_by_round,
            "by_round": [_round_view(states[r]) for r in range(rounds + 1)],
        }
    scored_by_round = [sum(v["scored_by_round"][r] for v in per_lang.values()) for r in range(rounds + 1)]
    overall = [sum(v["passed_by_round"][r] for v in per_lang.values()) for r in range(rounds + 1)]
    stops = [dict(Counter(row.get("stop") for (_, rr), row in results.items() if rr == r and row.get("stop")))
             for r in range(rounds + 1)]
    # how far the free score tracks the paid one: every judged attempt with both scores
    pairs = defaultdict(list)
    for row in results.values():
        vis = (row.get("judge") or {}).get("vis") or {}
        if row.get("fidelity") is not None and vis.get("status") == "scored":
            pairs[row["language"]].append((row["fidelity"], vis["score"]))
            pairs["overall"].append((row["fidelity"], vis["score"]))
    corr = {k: {"n": len(v), "spearman": spearman(*zip(*v)) if len(v) >= 3 else None} for k, v in pairs.items()}
    return {"languages": per_lang, "overall": {
        "scored": scored_by_round[-1], "scored_by_round": scored_by_round, "passed_by_round": overall,
        "pass_rate_by_round": [round(100 * p / n, 1) if n else None for p, n in zip(overall, scored_by_round)],
        "infra_errors": sum(len(v["infra_errors"]) for v in per_lang.values()),
        "infra_errors_by_round": [sum(v["infra_errors_by_round"][r] for v in per_lang.values()) for r in range(rounds + 1)],
        "by_round": [_round_view(all_states[r]) for r in range(rounds + 1)],
        "stop_reasons_by_round": stops},
        "fidelity_vs_judge_vis": corr or None}


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


def _sandbox_text(meta):
    """`bwrap`, or each language's mode and image when they differ (auto with some images built)."""
    by_lang = meta.get("sandbox_by_language") or {}
    if len(set(by_lang.values())) > 1:
        return "; ".join(f"{k} `{v}`" for k, v in by_lang.items())
    return f"`{next(iter(by_lang.values()), meta.get('sandbox'))}`"


def markdown(summary: dict, rounds: int, meta: dict) -> str:
    heads = ["Language", "Tasks"] + ["Exec pass (init)"] + [f"+ self-debug r{r}" for r in range(1, rounds + 1)] + ["Infra errors"]
    lines = [f"# VisPlotBench-style execution pass rate", "",
             f"Answers: `{meta.get('source')}`. Sandbox: {_sandbox_text(meta)}.", "",
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
    by_round = summary["overall"].get("infra_errors_by_round") or []
    if any(by_round):
        lines += ["", "Infra errors per round (those tasks are left out of that round's rates): "
                  + ", ".join(f"r{r} {n}" for r, n in enumerate(by_round))]
    for t in score_tables(summary, rounds):
        lines += ["", f"## {t['title']}", "", t["note"], "", "| " + " | ".join(t["heads"]) + " |",
                  "|" + "---|" * len(t["heads"])] + ["| " + " | ".join(r) + " |" for r in t["rows"]]
    corr = summary.get("fidelity_vs_judge_vis")
    if corr:
        lines += ["", corr_line(corr)]
    return "\n".join(lines) + "\n"


def _num(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def score_tables(summary, rounds):
    """The fidelity and judge tables of report.md and report.html: [{title, note, heads, rows}]."""
    groups = list(summary["languages"].items()) + [("**Overall (micro)**", summary["overall"])]
    names = ["Exec pass (init)"] + [f"+ self-debug r{r}" for r in range(1, rounds + 1)]
    out = [{"title": "Visual fidelity (offline score, 0-1)",
            "note": "Mean score / share >= 0.8 of the task's latest attempt after each round; a failed execution "
                    "scores 0 (vc2/eval/fidelity.py; bench/RESULTS.md says how well it ranks graded pairs).",
            "heads": ["Language", "Tasks"] + names,
            "rows": [[name, str(v["scored"])] + [f"{_num(f['mean'], '{:.3f}')} / {_pct(f['share_ge_0.8'])}"
                                                 for f in (b["fidelity"] for b in v["by_round"])] for name, v in groups]}]
    if any("judge" in b for _, v in groups for b in v["by_round"]):
        for r in sorted({0, rounds}):
            rows = []
            for name, v in groups:
                j = v["by_round"][r].get("judge")
                if not j:
                    rows.append([name] + ["-"] * 11)
                    continue
                a, t = j["vis"]["all"], j["task"]["all"]
                rows.append([name, _num(a["mean"]), _num(a["median"]), _pct(a["good"]), _pct(a["bad"]),
                             _num(t["mean"]), _num(t["median"]), _pct(t["good"]), _pct(t["bad"]),
                             _num(j["vis"]["passing"]["mean"]), _num(j["task"]["passing"]["mean"]),
                             f"{j['vis']['unscored']} / {j['task']['unscored']}"])
            out.append({"title": f"Judge scores after {names[r].lower()}",
                        "note": "0-100. All tasks: failed executions score 0 (the original's tables); good = share >= 75, "
                                "bad = share <= 25. Passing only: over the tasks whose image was judged. Unscored "
                                "(vis / task): the judge call failed after its retries or its answer had no score; "
                                "they are left out, never counted as 0.",
                        "heads": ["Language", "Vis mean", "Vis median", "Vis good", "Vis bad", "Task mean", "Task median",
                                  "Task good", "Task bad", "Vis mean (passing)", "Task mean (passing)", "Unscored"],
                        "rows": rows})
    return out


def corr_line(corr):
    o = corr.get("overall", {})
    per = ", ".join(f"{k} {_num(v['spearman'], '{:.2f}')} (n={v['n']})" for k, v in corr.items() if k != "overall")
    return (f"Spearman correlation of the fidelity score with the judge's vis score: {_num(o.get('spearman'), '{:.2f}')} "
            f"over {o.get('n', 0)} judged attempts ({per}).")


_OUTCOME_ORDER = {"fail": 0, "infra": 1, "fixed": 2, "pass": 3}
_OUTCOME_TEXT = {"fail": "failed every round", "infra": "infra error (not scored)",
                 "fixed": "passed after self-debug", "pass": "passed first time"}


def _html_table(heads, rows):
    cell = lambda x: html.escape(x).replace("**", "")  # noqa: E731
    return ("<table><tr>" + "".join(f"<th>{cell(h)}</th>" for h in heads) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def _caption(row):
    bits = [row["outcome"]]
    if row.get("fidelity") is not None:
        bits.append(f"fidelity {row['fidelity']:.2f}")
    j = row.get("judge") or {}
    for k in ("vis", "task"):
        if k in j:
            bits.append(f"{k} {j[k]['score']}" if j[k].get("status") == "scored" else f"{k} unscored ({j[k].get('status')})")
    return ", ".join(bits)


def html_report(summary, tasks, results: dict, out_dir: Path, rounds: int, meta: dict) -> str:
    """report.html: the summary tables, then every task (failures first) with each round's image beside the
    reference, its error and scores; filters by language, outcome and round (a few lines of inline JS)."""
    by_task = defaultdict(dict)
    for (key, rnd), row in results.items():
        by_task[key][rnd] = row
    groups = list(summary["languages"].items()) + [("Overall (micro)", summary["overall"])]
    names = ["Exec pass (init)"] + [f"+ self-debug r{r}" for r in range(1, rounds + 1)]
    parts = [f"<h1>vc2 evaluation: {html.escape(str(meta.get('source')))}</h1>",
             f"<p>Sandbox: {html.escape(_sandbox_text(meta))}. Generation: "
             f"{html.escape(describe_generation(meta.get('generation')))}.</p>",
             "<h2>Execution pass rate (%)</h2>",
             _html_table(["Language", "Tasks"] + names + ["Infra errors per round"],
                         [[name, str(v["scored"])] + [_num(x) for x in v["pass_rate_by_round"]]
                          + [" / ".join(map(str, v.get("infra_errors_by_round", [])))] for name, v in groups])]
    for t in score_tables(summary, rounds):
        parts += [f"<h2>{html.escape(t['title'])}</h2>", f"<p class=note>{html.escape(t['note'])}</p>",
                  _html_table(t["heads"], t["rows"])]
    if summary.get("fidelity_vs_judge_vis"):
        parts.append(f"<p>{html.escape(corr_line(summary['fidelity_vs_judge_vis']))}</p>")

    cards = []
    for t in tasks:
        key = f"{t.language}/{t.id}"
        rows = by_task.get(key)
        if not rows:
            continue
        state, _ = _task_state(rows, rounds)
        outcome = "fixed" if state == "pass" and rows.get(0, {}).get("outcome") != "pass" else state
        ref = (f'<img src="{html.escape(os.path.relpath(t.reference_image, out_dir))}" loading="lazy">'
               if getattr(t, "reference_image", None) and Path(t.reference_image).is_file() else "<i>no reference</i>")
        figs = [f"<figure>{ref}<figcaption>reference</figcaption></figure>"]
        details = []
        for r in sorted(rows):
            row = rows[r]
            img = (f'<img src="{html.escape(row["image"])}" loading="lazy">' if row.get("image") else "<i>no image</i>")
            cls = "ok" if row["outcome"] == "pass" else "bad"
            figs.append(f'<figure class="r{r} {cls}">{img}<figcaption>round {r}: {html.escape(_caption(row))}</figcaption></figure>')
            details.append(f"<details><summary>round {r}: code and error</summary><pre>{html.escape(row['code'][:4000])}</pre>"
                           f"<pre class=err>{html.escape(row['error'][:2000])}</pre></details>")
        cards.append((_OUTCOME_ORDER[outcome], t.language, t.id,
                      f'<div class="task" data-lang="{t.language}" data-outcome="{outcome}" '
                      f'data-rounds="{" ".join(map(str, sorted(rows)))}"><h3>{html.escape(key)}: '
                      f'{_OUTCOME_TEXT[outcome]}</h3><p>{html.escape(t.description[:400])}</p>'
                      f'<div class="pair">{"".join(figs)}</div>{"".join(details)}</div>'))
    cards.sort(key=lambda c: c[:3])
    langs = sorted({c[1] for c in cards})
    opt = lambda v, text: f'<option value="{v}">{html.escape(text)}</option>'  # noqa: E731
    parts += ["<h2>Tasks</h2>",
              '<p class=filters>Language <select id=f-lang>' + opt("", "all") + "".join(opt(x, x) for x in langs) + "</select> "
              'Outcome <select id=f-outcome>' + opt("", "all") + "".join(opt(k, v) for k, v in _OUTCOME_TEXT.items()) + "</select> "
              'Round <select id=f-round>' + opt("", "all") + "".join(opt(str(r), f"attempted in round {r}") for r in range(rounds + 1))
              + '</select> <span id=f-count></span></p>']
    parts += [c[3] for c in cards]
    style = ("body{font-family:sans-serif;margin:1em 2em;color:#222}table{border-collapse:collapse;margin:.3em 0 1em}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "th{background:#f3f3f3}.note{color:#555;font-size:90%;max-width:60em}.filters{position:sticky;top:0;"
             "background:#fff;padding:.4em 0;border-bottom:1px solid #ddd}.task{border:1px solid #ccc;margin:.6em 0;"
             "padding:.5em}.task[data-outcome=fail] h3,.task[data-outcome=infra] h3{color:#a00}.task[data-outcome=fixed] h3"
             "{color:#a60}.task[data-outcome=pass] h3{color:#060}.pair{display:flex;gap:1em;flex-wrap:wrap}figure{margin:0;"
             "max-width:340px}figure.bad figcaption{color:#a00}img{max-width:340px;max-height:260px;border:1px solid #eee}"
             "pre{white-space:pre-wrap;font-size:11px;background:#fafafa}.err{color:#a00}")
    script = ("function f(){const l=document.getElementById('f-lang').value,o=document.getElementById('f-outcome').value,"
              "r=document.getElementById('f-round').value;let n=0;document.querySelectorAll('div.task').forEach(d=>{"
              "const ok=(!l||d.dataset.lang==l)&&(!o||d.dataset.outcome==o)&&(!r||d.dataset.rounds.split(' ').includes(r));"
              "d.style.display=ok?'':'none';n+=ok});document.getElementById('f-count').textContent=n+' task(s)'}"
              "['f-lang','f-outcome','f-round'].forEach(i=>document.getElementById(i).onchange=f);f();")
    return (f"<!doctype html><meta charset=utf-8><title>vc2 eval: {html.escape(str(meta.get('source')))}</title>"
            f"<style>{style}</style>\n" + "\n".join(parts) + f"\n<script>{script}</script>\n")


def write_reports(tasks, results: dict, out_dir, rounds: int, meta: dict) -> dict:
    out_dir = Path(out_dir)
    summary = summarize(tasks, results, rounds)
    summary["meta"] = meta
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "report.md").write_text(markdown(summary, rounds, meta))
    (out_dir / "report.html").write_text(html_report(summary, tasks, results, out_dir, rounds, meta))
    return summary
