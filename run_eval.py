"""VisPlotBench-style evaluation: generate plotting code, run it in a sandbox, self-debug, report.

    python run_eval.py --lang svg                          # embedded SmolLM2-135M on the bundled SVG tasks
    python run_eval.py --lang all --model reference        # replay our reference solutions (a harness check)
    python run_eval.py --lang python svg --model Qwen2.5-Coder-7B-Instruct/ --dtype bfloat16 --device cuda
    python run_eval.py --responses answers.jsonl --lang all   # execute given answers, no model
    python run_eval.py --out runs/eval-svg --resume        # continue a killed run; nothing is redone
    python run_eval.py --api-base http://127.0.0.1:8000/v1 --model NAME   # a served model (vLLM, SGLang, vc2.serve)
    python run_eval.py --model openai:gpt-4.1 --judge gpt-4.1              # OpenAI; key from $OPENAI_API_KEY
    torchrun --nproc_per_node 8 run_eval.py --model Qwen2.5-Coder-7B-Instruct/   # data parallel: one model per GPU

Writes OUT/results.jsonl (one row per attempt), OUT/summary.json, OUT/report.md, OUT/report.html.
Under torchrun (one node or several) each rank loads its own copy of the model on its GPU and takes a
share of the tasks; rank 0 gathers every rank's rows over torch.distributed and writes the outputs
(no shared filesystem is needed; each rank also keeps OUT/results.rank<R>.jsonl for --resume, which
works with any number of ranks).
"""
import argparse
import os
import sys

# The embedded 135M demo model answers with a shorter budget than the protocol's 5,000 tokens, so the README's
# main job stays short on 2 CPU cores: its answers rarely end on their own (see bench/RESULTS.md).
DEMO_MAX_NEW_TOKENS = 512


def parse_args(argv=None):
    from vc2.eval import languages
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", nargs="+", default=["all"],
                   help=f"languages: all (VisPlotBench's eight: {' '.join(languages.BENCHMARK)}), or names "
                        f"among {' '.join(languages.LANGUAGES)} (default: all)")
    p.add_argument("--model", default="smollm2-135m",
                   help="HF checkpoint dir, an embedded model name, or 'reference' to replay the tasks' reference "
                        "solutions (default: %(default)s, the embedded CPU demo model)")
    p.add_argument("--responses", default=None, help="JSONL of {id, [language], answer|code}: execute these instead of generating")
    p.add_argument("--tasks", default=None, help="task .jsonl/.parquet file or directory (default: the bundled sample)")
    p.add_argument("--limit", type=int, default=0, help="only the first N tasks per language (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="self-debug rounds after the first attempt (default: %(default)s, as in the paper)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel executions of this process (default: its share of the node's cores, i.e. cores / "
                        "processes on the node = %d here)" % node_share())
    p.add_argument("--batch-size", type=int, default=8,
                   help="rows the generation engine decodes at once (its slots): a finished row's slot takes the "
                        "next task at once (default: %(default)s)")
    p.add_argument("--sandbox", default="auto", choices=("auto", "container", "podman", "docker", "bwrap", "unshare", "plain"),
                   help="where programs run. auto: each language in its family's container image when an engine "
                        "(podman, docker) and that image are present (sandbox_images/build.sh), else bwrap, unshare, "
                        "plain, the first that works; container: podman or docker, an error if a language's image is "
                        "missing. The report says which mode each language ran in (default: %(default)s)")
    p.add_argument("--no-warm", action="store_true",
                   help="start a fresh renderer process for every execution instead of reusing warm servers "
                        "(Python, Vega-Lite, LilyPond, HTML, Mermaid; vc2/eval/warm.py); same verdicts, slower")
    p.add_argument("--timeout", type=float, default=None, help="seconds per execution (default: per-language limits)")
    p.add_argument("--out", default=None, help="output directory (default: runs/eval-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, redoing nothing already recorded")
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue even if the model, sampling settings or budget differ from the "
                        "run being resumed (its rows then mix two settings)")
    a = p.add_argument_group("API models: an OpenAI-compatible /v1/chat/completions endpoint answers (needs .[api])")
    a.add_argument("--api-base", default=None,
                   help="endpoint root, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, python -m vc2.serve); --model is "
                        "then the served model name. --model openai:NAME is short for OpenAI's endpoint")
    a.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the key (default: %(default)s; never written anywhere, and "
                        "removed from the environment before any program runs)")
    a.add_argument("--api-concurrency", type=int, default=8, help="requests in flight at most (default: %(default)s)")
    a.add_argument("--api-timeout", type=float, default=300.0, help="seconds per request (default: %(default)s)")
    a.add_argument("--api-retries", type=int, default=6,
                   help="retries of a request on 429 / 5xx / timeouts, with exponential backoff (default: %(default)s); "
                        "a request that still fails is an infra error, tried again by --resume")
    j = p.add_argument_group("judge: a vision model scores each passing image 0-100 (vis: vs the reference; task: vs the text)")
    j.add_argument("--judge", default=None, metavar="MODEL", help="judge model name (the original used gpt-4.1); off by default")
    j.add_argument("--judge-base-url", default=None,
                   help="OpenAI-compatible endpoint of the judge (default: OpenAI's, https://api.openai.com/v1)")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable with its key (default: %(default)s)")
    j.add_argument("--judge-concurrency", type=int, default=4, help="judge requests in flight at most (default: %(default)s)")
    g = p.add_argument_group("generation (default: the VisPlotBench protocol, greedy with up to 5,000 new tokens; "
                             "3,000 for API models)")
    g.add_argument("--sampling", choices=["protocol", "model"], default="protocol",
                   help="protocol: the benchmark's settings (greedy, repetition_penalty 1, 5,000 new tokens, stop at "
                        "the model's eos ids), comparable with the paper's table; model: the checkpoint's "
                        "generation_config.json (Qwen2.5-Coder-Instruct samples at temperature 0.7). Flags below "
                        "override either (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"answer budget per attempt, always capped at the model's context minus the prompt (default: "
                        f"5,000, the protocol's; {DEMO_MAX_NEW_TOKENS} for the embedded CPU demo model)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (1 = off)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=None, help="CTRL-style penalty (1 = off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed; each (task, round) gets its own seed from it, so "
                   "sampled answers do not depend on batch size or ranks (default: %(default)s)")
    g.add_argument("--no-prompt-lookup", action="store_true",
                   help="turn off prompt-lookup decoding of greedy rows (it is exact: the same tokens, fewer forwards)")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="model weights dtype (default: float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    if args.lang == ["all"]:
        args.lang = list(languages.BENCHMARK)
    for lang in args.lang:
        if lang not in languages.LANGUAGES:
            p.error(f"--lang {lang}: unknown language (choose from {', '.join(languages.LANGUAGES)} or all)")
    return p, args


def generation_settings(args, model) -> dict:
    """The settings in force: the protocol's (or the checkpoint's generation_config.json with --sampling
    model), then every explicit flag on top; recorded in summary.json and checked by --resume."""
    from vc2.eval.runner import PROTOCOL_MAX_NEW_TOKENS, PROTOCOL_SAMPLING
    from vc2.convert_gguf import EMBEDDED_MODELS
    from vc2.sample import GREEDY

    embedded = args.model in EMBEDDED_MODELS
    if args.sampling == "protocol":
        base = dict(PROTOCOL_SAMPLING)
    else:  # what vc2.generate would use: the config's sampling when it says do_sample, else greedy
        gen_cfg = getattr(model, "generation_config", None) or {}
        base = {k: gen_cfg.get(k, v) for k, v in GREEDY.items()} if gen_cfg.get("do_sample") else dict(GREEDY)
        base["top_k"] = base["top_k"] or 0
        base["repetition_penalty"] = gen_cfg.get("repetition_penalty", 1.0)
    for k in base:
        if getattr(args, k) is not None:
            base[k] = getattr(args, k)
    budget, note = args.max_new_tokens, None
    if budget is None:
        budget = DEMO_MAX_NEW_TOKENS if embedded else PROTOCOL_MAX_NEW_TOKENS
        if embedded:
            note = (f"embedded CPU demo model: {DEMO_MAX_NEW_TOKENS} new tokens instead of the protocol's "
                    f"{PROTOCOL_MAX_NEW_TOKENS:,}, so the run stays short on a CPU (its answers rarely stop on their own)")
    if budget < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1, got {budget}")
    return {"sampling": args.sampling, **base, "max_new_tokens": budget,
            "context": model.config.max_position_embeddings,
            "seed": args.seed if base["temperature"] > 0 else None,  # greedy: no seed to compare on --resume
            "note": note}


def node_share():
    """This process's share of the node's cores (torchrun runs LOCAL_WORLD_SIZE processes per node)."""
    return max(1, (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def init_distributed():
    """Under torchrun: a gloo process group (it carries rows and images between ranks, never tensors on
    the GPU) and this rank's GPU. Returns (rank, world size, local rank, processes on this node)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0, 1
    import datetime
    import torch
    import torch.distributed as dist
    # ranks finish their shares at different times; rank 0 then waits for the last one at the gather
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return dist.get_rank(), world, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", world))


def main(argv=None):
    p, args = parse_args(argv)
    if os.environ.get("RANK", "0") != "0":
        os.environ["TQDM_DISABLE"] = "1"  # one set of progress lines: rank 0's (read when tqdm is imported)
    rank, world, local_rank, local_world = init_distributed()
    import torch
    import vc2
    from vc2.eval import api, executors, languages, runner, sandbox, tasks as tasks_mod

    workers = args.workers or node_share()
    sandbox.set_node_tasks(workers * local_world)  # without a cgroup, RLIMIT_NPROC is shared by every rank's tasks

    # keys leave the environment before anything runs (sandboxed programs, warm servers); see api.take_secret
    secrets = {}
    use_api = bool(args.api_base) or args.model.startswith("openai:")
    for wanted, env in ((use_api, args.api_key_env), (bool(args.judge), args.judge_api_key_env)):
        if wanted and env not in secrets:
            secrets[env] = api.take_secret(env)

    try:
        tasks = tasks_mod.load_tasks(args.tasks, args.lang)
    except ValueError as e:
        p.error(str(e))
    if args.tasks:  # the task file holds the reference solutions: never visible to a sandboxed program
        src = os.path.abspath(args.tasks)
        sandbox.hide(src if os.path.isdir(src) else os.path.dirname(src))
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
        try:
            by_key = runner.match_responses(args.responses, runner.load_responses(args.responses), tasks,
                                            tasks_mod.load_tasks(args.tasks))
        except (OSError, ValueError) as e:
            p.error(str(e))
        missing = [runner.task_key(t) for t in tasks if runner.task_key(t) not in by_key]
        if missing:
            p.error(f"{args.responses}: no answer for {len(missing)} task(s), e.g. {missing[:3]}")
        source = runner.FixedAnswers(f"responses:{args.responses}", by_key)
        name, generation = "responses", None
    elif args.model == "reference":
        no_ref = [runner.task_key(t) for t in tasks if not t.reference_code]
        if no_ref:
            p.error(f"--model reference: {len(no_ref)} task(s) have no reference_code, e.g. {no_ref[:3]}")
        source = runner.FixedAnswers("reference", {runner.task_key(t): f"```\n{t.reference_code}\n```" for t in tasks})
        name, generation = "reference", None
    elif use_api:
        base, model_name = api.resolve_endpoint(args.model, args.api_base)
        if base.startswith(api.OPENAI_BASE) and not secrets[args.api_key_env]:
            p.error(f"--model {args.model}: OpenAI needs a key in ${args.api_key_env}")
        name = model_name.replace("/", "_")
        out_dir = args.out or os.path.join("runs", f"eval-{name}")
        os.makedirs(out_dir, exist_ok=True)
        try:
            client = api.ChatClient(base, model_name, api_key=secrets[args.api_key_env], timeout_s=args.api_timeout,
                                    max_retries=args.api_retries, concurrency=args.api_concurrency,
                                    cache_path=os.path.join(out_dir, "api_cache.jsonl"))
        except ValueError as e:
            p.error(str(e))
        budget = args.max_new_tokens or runner.PROTOCOL_API_MAX_NEW_TOKENS
        source = api.APIAnswers(client, max_tokens=budget, seed=args.seed, concurrency=args.api_concurrency)
        generation = {"sampling": "protocol", **runner.PROTOCOL_SAMPLING, "max_new_tokens": budget,
                      "context": "the server's", "seed": args.seed, "endpoint": base,
                      "request": {k: v for k, v in source.params.items() if k != "max_tokens"},
                      "note": "API model: the server applies the chat template; sampling sent explicitly in every request"}
        if any(getattr(args, k) is not None for k in runner.PROTOCOL_SAMPLING) or args.sampling != "protocol":
            p.error("API models are asked with the protocol's sampling (greedy); --sampling/--temperature/--top-p/"
                    "--top-k/--repetition-penalty apply to local models only")
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and world > 1:
            device = f"cuda:{local_rank}"  # each rank its own GPU and its own copy of the model
        dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
        print(f"loading model {args.model} ({dtype}, {device})...", file=sys.stderr, flush=True)
        try:
            model = vc2.load_model(args.model, dtype=dtype, device=device)
            tok = vc2.load_tokenizer(args.model)
        except ValueError as e:
            p.error(str(e))
        generation = generation_settings(args, model)
        source = runner.ModelAnswers(model, tok, generation, args.batch_size, prompt_lookup=not args.no_prompt_lookup)
        source.name = args.model
        generation["stop_ids"] = tok.eos_ids
        name = os.path.basename(os.path.normpath(args.model))
    out = args.out or os.path.join("runs", f"eval-{name}")
    judge = None
    if args.judge:
        from vc2.eval.judge import Judge
        os.makedirs(out, exist_ok=True)
        try:
            judge = Judge(api.ChatClient(args.judge_base_url or api.OPENAI_BASE, args.judge,
                                         api_key=secrets[args.judge_api_key_env], concurrency=args.judge_concurrency,
                                         cache_path=os.path.join(out, "judge_cache.jsonl")))
        except ValueError as e:
            p.error(str(e))

    langs = sorted({t.language for t in tasks})
    if args.sandbox != "auto":  # an explicit mode must work for every language before anything is generated
        try:
            for name in langs:
                executors.choose_sandbox(args.sandbox, languages.get(name))
        except ValueError as e:
            p.error(str(e))
    by_lang = executors.sandbox_by_language(args.sandbox, langs)
    mode = next(iter(by_lang.values())) if len(set(by_lang.values())) == 1 else \
        "; ".join(f"{k}: {v}" for k, v in by_lang.items())
    if rank == 0:
        print(f"{len(tasks)} tasks ({', '.join(sorted({t.language for t in tasks}))}), answers: {source.name}, "
              f"sandbox: {mode}, out: {out}" + (f", {world} ranks" if world > 1 else ""), file=sys.stderr)
    if generation and rank == 0:
        from vc2.eval.report import describe_generation
        print("generation: " + describe_generation(generation), file=sys.stderr)
    try:
        summary = runner.evaluate(tasks, source, out, rounds=args.rounds, workers=workers, sandbox=args.sandbox,
                                  resume=args.resume, seed=args.seed, timeout_s=args.timeout, warm=not args.no_warm,
                                  generation=generation, force=args.force, judge=judge,
                                  judge_concurrency=args.judge_concurrency)
    except ValueError as e:
        p.error(str(e))
    if rank == 0:
        print(open(os.path.join(out, "report.md")).read())
    if summary["overall"]["infra_errors"]:  # every rank returns it (torchrun: one exit status)
        if rank == 0:
            print(f"WARNING: {summary['overall']['infra_errors']} task(s) hit infra errors and were not scored "
                  f"(see {out}/report.md)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
