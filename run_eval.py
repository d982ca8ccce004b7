"""VisPlotBench-style evaluation: generate plotting code, run it in a sandbox, self-debug, report.

    python run_eval.py --lang svg                          # embedded SmolLM2-135M on the bundled SVG tasks
    python run_eval.py --lang all --model reference        # replay our reference solutions (a harness check)
    python run_eval.py --lang python svg --model Qwen2.5-Coder-7B-Instruct/ --dtype bfloat16 --device cuda
    python run_eval.py --responses answers.jsonl --lang all   # execute given answers, no model
    python run_eval.py --out runs/eval-svg --resume        # continue a killed run; nothing is redone

Writes OUT/results.jsonl (one row per attempt), OUT/summary.json, OUT/report.md, OUT/report.html.
"""
import argparse
import os
import sys

LANGS = ("python", "vegalite", "lilypond", "mermaid", "svg", "latex", "asymptote", "html")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", nargs="+", default=["all"], help=f"languages: {' '.join(LANGS)} or all (default: all)")
    p.add_argument("--model", default="smollm2-135m",
                   help="HF checkpoint dir, an embedded model name, or 'reference' to replay the tasks' reference "
                        "solutions (default: %(default)s, the embedded CPU demo model)")
    p.add_argument("--responses", default=None, help="JSONL of {id, [language], answer|code}: execute these instead of generating")
    p.add_argument("--tasks", default=None, help="task .jsonl/.parquet file or directory (default: the bundled sample)")
    p.add_argument("--limit", type=int, default=0, help="only the first N tasks per language (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="self-debug rounds after the first attempt (default: %(default)s, as in the paper)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="parallel executions (default: cores = %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="tasks generated together in one batched decode (default: %(default)s)")
    p.add_argument("--sandbox", default="auto", help="auto, docker, podman, bwrap, unshare or plain (default: %(default)s)")
    p.add_argument("--no-warm", action="store_true",
                   help="start a fresh renderer process for every execution instead of reusing warm servers "
                        "(Python, Vega-Lite, LilyPond, HTML, Mermaid; vc2/eval/warm.py); same verdicts, slower")
    p.add_argument("--timeout", type=float, default=None, help="seconds per execution (default: per-language limits)")
    p.add_argument("--out", default=None, help="output directory (default: runs/eval-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, redoing nothing already recorded")
    g = p.add_argument_group("generation (defaults: the model's generation_config.json)")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="answer length limit (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="model weights dtype (default: float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    if args.lang == ["all"]:
        args.lang = list(LANGS)
    for lang in args.lang:
        if lang not in LANGS:
            p.error(f"--lang {lang}: unknown language (choose from {', '.join(LANGS)} or all)")
    return p, args


def main(argv=None):
    p, args = parse_args(argv)
    import torch
    import vc2
    from vc2.eval import executors, runner, tasks as tasks_mod

    try:
        tasks = tasks_mod.load_tasks(args.tasks, args.lang)
    except ValueError as e:
        p.error(str(e))
    if args.limit:
        kept, per = [], {}
        for t in tasks:
            per[t.language] = per.get(t.language, 0) + 1
            if per[t.language] <= args.limit:
                kept.append(t)
        tasks = kept
    if not tasks:
        p.error(f"no tasks for languages {args.lang} in {args.tasks or 'the bundled sample'}")

    if args.responses:
        by_key = {}
        for (lang, tid), answer in runner.load_responses(args.responses).items():
            for t in tasks:
                if t.id == tid and lang in (None, t.language):
                    by_key[runner.task_key(t)] = answer
        missing = [runner.task_key(t) for t in tasks if runner.task_key(t) not in by_key]
        if missing:
            p.error(f"{args.responses}: no answer for {len(missing)} task(s), e.g. {missing[:3]}")
        source = runner.FixedAnswers(f"responses:{args.responses}", by_key)
        name = "responses"
    elif args.model == "reference":
        no_ref = [runner.task_key(t) for t in tasks if not t.reference_code]
        if no_ref:
            p.error(f"--model reference: {len(no_ref)} task(s) have no reference_code, e.g. {no_ref[:3]}")
        source = runner.FixedAnswers("reference", {runner.task_key(t): f"```\n{t.reference_code}\n```" for t in tasks})
        name = "reference"
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
        try:
            model = vc2.load_model(args.model, dtype=dtype, device=device)
            tok = vc2.load_tokenizer(args.model)
        except ValueError as e:
            p.error(str(e))
        source = runner.ModelAnswers(model, tok, args.max_new_tokens, args.batch_size, temperature=args.temperature,
                                     top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty)
        source.name = args.model
        name = os.path.basename(os.path.normpath(args.model))
    out = args.out or os.path.join("runs", f"eval-{name}")

    mode = executors.describe_sandbox(args.sandbox)["sandbox"]
    print(f"{len(tasks)} tasks ({', '.join(sorted({t.language for t in tasks}))}), answers: {source.name}, "
          f"sandbox: {mode}, out: {out}", file=sys.stderr)
    try:
        summary = runner.evaluate(tasks, source, out, rounds=args.rounds, workers=args.workers, sandbox=args.sandbox,
                                  resume=args.resume, seed=args.seed, timeout_s=args.timeout, warm=not args.no_warm)
    except ValueError as e:
        p.error(str(e))
    print(open(os.path.join(out, "report.md")).read())
    if summary["overall"]["infra_errors"]:
        print(f"WARNING: {summary['overall']['infra_errors']} task(s) hit infra errors and were not scored "
              f"(see {out}/report.md)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
