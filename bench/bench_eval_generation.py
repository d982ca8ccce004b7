"""The generation work of a real evaluation, one model, five ways, measured in the same run.

    python bench/bench_eval_generation.py                      # smollm2-135m, then the Qwen2.5-0.5B shape
    python bench/bench_eval_generation.py --models smollm2-135m --tasks-per-lang 1 --repeats 1   # a quick look
    python bench/bench_eval_generation.py --make-attempts      # rebuild the bundled attempts (needs the renderers)

Workloads (greedy, the same answer budget everywhere):
  round 0: the first-attempt prompts of the bundled tasks (--tasks-per-lang of each language);
  round 1: their self-debug prompts, built from a fixed set of failed attempts with their error messages
           (bench/assets/eval_generation_attempts.jsonl: the embedded model's own greedy round-0 answers,
           executed in the sandbox once; bundled so the workload is the same every run).
The embedded model stops at its own eos. A random-weights model (the 0.5B shape) rarely emits one, so
each of its prompts stops at a fixed length: the embedded model's real answer length for that task
and round (recorded in the same file), capped at the budget.

Sides:
  (a) static batching (Engine(schedule="static")): a batch of --slots prompts runs until its last row
      finishes (finished rows leave it), then the next batch starts; what vc2.generate did before the engine
  (b) continuous batching: a finished row's slot is refilled at once
  (c) (b) + prompt lookup (exact: same tokens as greedy)
  (d) transformers generate(), left-padded batches of --slots prompts
  (e) transformers generate(prompt_lookup_num_tokens=10) at batch 1 (its assisted decoding is batch-1 only)
Printed: generated tokens/s and wall time per side and workload (median of --repeats, sides interleaved
in a rotating order), whether (a)-(c) gave identical tokens, and the issue's goals as ratios:
(b)/(a) on round 0, (c)/(b) on round 1, (c)/(d) over both. On a shared machine other jobs move wall
times by several x, so every ratio is also given from the process's CPU time (user + sys), which
they disturb much less (they still share caches and memory bandwidth).
"""
import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import vc2
from vc2.config import PRESETS
from vc2.engine import Engine
from vc2.eval import prompts as P
from vc2.eval import tasks as T

ATTEMPTS = Path(__file__).resolve().parent / "assets" / "eval_generation_attempts.jsonl"
SIDES = "abcde"


def subset(tasks, per_lang):
    seen, out = {}, []
    for t in tasks:
        seen[t.language] = seen.get(t.language, 0) + 1
        if seen[t.language] <= per_lang:
            out.append(t)
    return out


def round1_messages(task, row):
    return P.build_messages(task) + [{"role": "assistant", "content": row["answer"]},
                                     {"role": "user", "content": P.debug_message(task.language, row["outcome"], row["error"])}]


def make_attempts(per_lang, budget):
    """The embedded model's greedy first attempts, executed, and its second-attempt lengths."""
    import tempfile as tf
    from vc2.eval import executors
    tok, model = vc2.load_tokenizer("smollm2-135m"), vc2.load_model("smollm2-135m")
    tasks = subset(T.load_tasks(None, None), per_lang)
    engine = Engine(model, slots=8)
    ids0 = [tok.render_chat(P.build_messages(t), add_generation_prompt=True)[0] for t in tasks]
    r0 = engine.generate(ids0, budget, stop_ids=tok.eos_ids)
    rows = []
    for t, r in zip(tasks, r0):
        answer = tok.decode(r.out, skip_special_tokens=True)
        with tf.TemporaryDirectory() as tmp:
            out = executors.run(t.language, P.extract_code(t.language, answer), Path(tmp), data_csv=t.data_csv)
        print(f"{t.language}/{t.id}: {len(r.out)} tokens, {out.status}", file=sys.stderr)
        rows.append({"key": f"{t.language}/{t.id}", "answer": answer, "outcome": out.status,
                     "error": out.error or "", "n_r0": len(r.out), "reason_r0": r.finish_reason})
    ids1 = [tok.render_chat(round1_messages(t, row), add_generation_prompt=True)[0] for t, row in zip(tasks, rows)]
    for row, r in zip(rows, engine.generate(ids1, budget, stop_ids=tok.eos_ids)):
        row["n_r1"], row["reason_r1"] = len(r.out), r.finish_reason
    ATTEMPTS.parent.mkdir(exist_ok=True)
    ATTEMPTS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} attempts to {ATTEMPTS}", file=sys.stderr)


def workloads(tok, per_lang, budget):
    """{'round0'/'round1': [(prompt ids, stop length)]} over the tasks with a failed bundled attempt."""
    attempts = {r["key"]: r for r in map(json.loads, ATTEMPTS.read_text().splitlines())}
    tasks = [t for t in T.load_tasks(None, None) if attempts.get(f"{t.language}/{t.id}", {}).get("outcome") not in (None, "pass", "infra_error")]
    tasks = subset(tasks, per_lang)
    out = {"round0": [], "round1": []}
    for t in tasks:
        row = attempts[f"{t.language}/{t.id}"]
        out["round0"].append((tok.render_chat(P.build_messages(t), add_generation_prompt=True)[0], min(row["n_r0"] or 1, budget)))
        out["round1"].append((tok.render_chat(round1_messages(t, row), add_generation_prompt=True)[0], min(row["n_r1"] or 1, budget)))
    return out


def build(name, tmp):
    """(checkpoint dir, real weights?): the embedded model, or random fp32 weights of a preset's shape."""
    if name == "smollm2-135m":
        return vc2.checkpoint.resolve_model_path(name), True
    import transformers
    torch.manual_seed(0)
    hf_cfg = PRESETS[name].to_hf()
    hf_cfg["torch_dtype"] = "float32"
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_cfg))
    hf.save_pretrained(f"{tmp}/{name}")
    return f"{tmp}/{name}", False


def hf_worker(conn, path):
    """The transformers sides run in a process of their own, so that neither process holds both models
    and every side's transient memory (peak RSS is reported per process)."""
    import transformers
    torch.set_num_threads(torch.get_num_threads())
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    while (job := conn.recv()) is not None:
        side, args = job
        cpu = time.process_time()
        outs, dt = run_hf(hf, *args) if side == "d" else run_hf_lookup(hf, *args)
        conn.send((outs, dt, time.process_time() - cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def run_engine(model, work, budget, stop_ids, real, slots, **kw):
    """-> (outputs, wall s, CPU s, engine)"""
    engine = Engine(model, slots=slots, **kw)
    cpu, t = time.process_time(), time.perf_counter()
    reqs = [engine.add_request(ids, budget if real else n, stop_ids=stop_ids) for ids, n in work]
    engine.run()
    return [r.out for r in reqs], time.perf_counter() - t, time.process_time() - cpu, engine


class StopAt:
    """transformers StoppingCriteria: row i is done after n[i] new tokens (rows already done keep padding)."""

    def __init__(self, prompt_len, n):
        self.prompt_len, self.n = prompt_len, torch.tensor(n)

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_len) >= self.n


def cut(row, eos, n):
    row = row[:n]
    for i, t in enumerate(row):
        if t in eos:
            return row[:i]
    return row


def run_hf(hf, work, budget, stop_ids, real, slots, pad_id):
    from transformers import StoppingCriteriaList
    outs = []
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(work), slots):
            batch = work[s:s + slots]
            L = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([[pad_id] * (L - len(p)) + p for p, _ in batch])
            att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p, _ in batch])
            ns = [budget if real else n for _, n in batch]
            extra = {} if real else {"stopping_criteria": StoppingCriteriaList([StopAt(L, ns)])}
            out = hf.generate(input_ids=ids, attention_mask=att, max_new_tokens=max(ns), do_sample=False,
                              eos_token_id=stop_ids or None, pad_token_id=pad_id, repetition_penalty=1.0, **extra)
            outs += [cut(row[L:].tolist(), set(stop_ids), n) for row, n in zip(out, ns)]
    return outs, time.perf_counter() - t


def run_hf_lookup(hf, work, budget, stop_ids, real, pad_id):
    outs = []
    t = time.perf_counter()
    with torch.inference_mode():
        for ids, n in work:
            n = budget if real else n
            x = torch.tensor([ids])
            out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                              prompt_lookup_num_tokens=10, eos_token_id=stop_ids or None, pad_token_id=pad_id,
                              repetition_penalty=1.0)
            outs.append(cut(out[0, len(ids):].tolist(), set(stop_ids), n))
    return outs, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b", help="default: %(default)s")
    p.add_argument("--tasks-per-lang", type=int, default=2, help="tasks of each of the 8 languages (default: %(default)s)")
    p.add_argument("--budget", type=int, default=256, help="new tokens per answer at most (default: %(default)s)")
    p.add_argument("--slots", type=int, default=8, help="rows decoded together; also (d)'s batch size (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side, median reported (default: %(default)s)")
    p.add_argument("--sides", default=SIDES, help="which of abcde to run (default: all)")
    p.add_argument("--make-attempts", action="store_true", help=f"rebuild {ATTEMPTS.name} (3 tasks per language, budget 512)")
    args = p.parse_args()
    if args.make_attempts:
        return make_attempts(3, 512)

    tok = vc2.load_tokenizer("smollm2-135m")  # the prompts of both models are SmolLM2 token ids
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, budget {args.budget}, slots {args.slots}")
    import multiprocessing as mp
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            path, real = build(name, tmp)
            ours = vc2.load_model(path, dtype=torch.float32)
            conn, child_conn = mp.get_context("spawn").Pipe()
            child = mp.get_context("spawn").Process(target=hf_worker, args=(child_conn, path), daemon=True)
            child.start()
            hf_rss = [0.0]

            def hf_side(side, *job):
                conn.send((side, job))
                outs, dt, cpu, rss = conn.recv()
                hf_rss[0] = max(hf_rss[0], rss)
                return outs, dt, cpu, None
            stop_ids = tok.eos_ids if real else []
            work = workloads(tok, args.tasks_per_lang, args.budget)
            print(f"\n== {name} ({'real weights, stops at eos' if real else 'random weights, per-prompt stop lengths'}): "
                  f"{len(work['round0'])} prompts per round, prompt tokens round 0 "
                  f"{sum(len(w[0]) for w in work['round0'])}, round 1 {sum(len(w[0]) for w in work['round1'])}")
            sides = {
                "a": lambda w: run_engine(ours, w, args.budget, stop_ids, real, args.slots, schedule="static", lookup_tokens=0),
                "b": lambda w: run_engine(ours, w, args.budget, stop_ids, real, args.slots, lookup_tokens=0),
                "c": lambda w: run_engine(ours, w, args.budget, stop_ids, real, args.slots),
                "d": lambda w: hf_side("d", w, args.budget, stop_ids, real, args.slots, tok.pad_id),
                "e": lambda w: hf_side("e", w, args.budget, stop_ids, real, tok.pad_id),
            }
            order = [s for s in SIDES if s in args.sides]
            times = {(s, r): [] for s in order for r in work}
            cpus = {(s, r): [] for s in order for r in work}
            outs, stats = {}, {}
            for rep in range(args.repeats):
                rot = order[rep % len(order):] + order[:rep % len(order)]  # rotate: no side always runs first
                for rnd in work:
                    for s in rot:
                        outs[(s, rnd)], dt, cpu, engine = sides[s](work[rnd])
                        if s == "c":
                            stats[rnd] = dict(engine.stats)
                        times[(s, rnd)].append(dt)
                        cpus[(s, rnd)].append(cpu)
                        n = sum(map(len, outs[(s, rnd)]))
                        print(f"  repeat {rep} {rnd} ({s}) {dt:7.1f} s {n / dt:7.1f} tok/s, CPU {cpu:7.1f} s", flush=True)
            report(name, work, order, times, cpus, outs, stats, ours)
            conn.send(None)
            child.join()
            print(f"peak RSS: vc2 process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB "
                  f"(both models so far), transformers process {hf_rss[0]:.2f} GB")
            del ours


def divergence_gaps(model, work, outs, rnd):
    """For rows where (a) or (c) differ from (b): the fp32 full forward's top-2 logit gap at the first
    differing token, on the common prefix. A small gap is a near-tie that the rounding of differently
    shaped matrix products can flip (and the answers then go their own way); a large one is a bug."""
    gaps = []
    for s in "ac":
        for i, (x, y) in enumerate(zip(outs.get((s, rnd), []), outs[("b", rnd)])):
            if x != y:
                j = next((k for k in range(min(len(x), len(y))) if x[k] != y[k]), min(len(x), len(y)))
                with torch.no_grad():
                    top = model(torch.tensor([work[rnd][i][0] + y[:j]]))[0, -1].float().topk(2).values
                gaps.append((s, i, j, round(float(top[0] - top[1]), 3)))
    return gaps


def report(name, work, order, times, cpus, outs, stats, model):
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items()}
    toks = {k: sum(map(len, v)) for k, v in outs.items()}
    print(f"\n{name}: generated tokens/s (wall s), median")
    print(f"{'side':<6}" + "".join(f"{r:>22}" for r in work) + f"{'both':>22}")
    for s in order:
        cells = [f"{toks[(s, r)] / med[(s, r)]:9.1f} ({med[(s, r)]:7.1f} s)" for r in work]
        both = sum(toks[(s, r)] for r in work) / sum(med[(s, r)] for r in work)
        cpu = "".join(f"{med_cpu[(s, r)]:8.1f}" for r in work)
        print(f"({s})   " + "".join(f"{c:>22}" for c in cells) + f"{both:13.1f} tok/s   CPU s:{cpu}")
    for r in work:
        same = [s for s in "abc" if (s, r) in outs]
        if len(same) > 1:
            ok = all(outs[(s, r)] == outs[(same[0], r)] for s in same)
            print(f"{r}: ({')=('.join(same)}) identical tokens: {ok}")
            if not ok and ("b", r) in outs:
                for s, i, j, gap in divergence_gaps(model, work, outs, r):
                    print(f"{r}:   ({s}) row {i} differs from (b) at token {j}: fp32 top-2 logit gap there {gap}")
        for s in "de":
            if (s, r) in outs and ("b", r) in outs:
                agree = sum(x == y for x, y in zip(outs[(s, r)], outs[("b", r)]))
                print(f"{r}: ({s}) rows token-identical to (b): {agree}/{len(work[r])}")
        if r in stats:
            st = stats[r]
            print(f"{r}: (c) prompt lookup accepted {st['accepted']}/{st['drafted']} drafted tokens, "
                  f"{st['forwards']} forwards for {st['generated']} tokens")

    def tps(s, rounds, m):
        return sum(toks[(s, r)] for r in rounds) / sum(m[(s, r)] for r in rounds)
    goals = [("b", "a", ["round0"], 1.5), ("c", "b", ["round1"], 2.0), ("c", "d", list(work), 2.0)]
    for x, y, rounds, goal in goals:
        if all((s, r) in med for s in (x, y) for r in rounds):
            ratio = tps(x, rounds, med) / tps(y, rounds, med)
            by_cpu = tps(x, rounds, med_cpu) / tps(y, rounds, med_cpu)
            print(f"goal ({x}) >= {goal}x ({y}) on {'+'.join(rounds)}: {ratio:.2f}x wall, {by_cpu:.2f}x CPU time: "
                  f"{'met' if min(ratio, by_cpu) >= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
