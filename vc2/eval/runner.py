"""The evaluation loop: prompts -> batched generation -> sandboxed execution in parallel -> self-debug rounds.

    python run_eval.py --lang svg                      # the CLI (run_eval.py) wraps `evaluate` below
    python run_eval.py --lang all --model reference    # replay the bundled reference solutions

Round 0 asks every task once; each later round (up to --rounds) asks again only the tasks whose latest
attempt failed, with the error fed back as a new user turn. The conversation keeps every attempt once
(the original harness duplicated earlier turns). Infra errors (a missing renderer, a broken sandbox)
are not the model's failure: they are not retried, not counted in pass rates, and reported loudly.

Every attempt is appended to OUT/results.jsonl as soon as it has run, so a killed run continues with
--resume and redoes nothing already recorded: the conversation of a task is rebuilt from its rows.
Generation is batched across tasks (--batch-size) and executions run in a thread pool (--workers)
while the next batch is being generated; the executors start their own sandboxed processes, so
threads are enough here. Renders go to warm servers (vc2/eval/warm.py) unless warm=False, and the
tasks of a round are interleaved by language, so that parallel workers mostly need different servers.
"""
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from vc2.eval import executors, prompts
from vc2.eval.report import write_reports
from vc2.eval.warm import WarmPool

INFRA = "infra_error"


# ---------------------------------------------------------------------------------------------------
# answer sources: a model, the reference solutions, or a file of responses

class ModelAnswers:
    """Batched chat generation with a vc2 model; answers(list of message lists) -> list of strings."""

    def __init__(self, model, tokenizer, max_new_tokens, batch_size, **sampling):
        self.model, self.tok, self.max_new_tokens, self.batch_size = model, tokenizer, max_new_tokens, batch_size
        self.sampling = sampling
        self.name = str(getattr(model, "source_dir", "model"))

    def __call__(self, conversations, seed):
        import vc2
        ids = [self.tok.render_chat(c, add_generation_prompt=True)[0] for c in conversations]
        out = vc2.generate(self.model, ids, self.max_new_tokens, seed=seed, stop_ids=self.tok.eos_ids, **self.sampling)
        return [self.tok.decode(o, skip_special_tokens=True) for o in out]


class FixedAnswers:
    """Answers looked up by task key (reference solutions, or --responses rows); no self-debug."""

    def __init__(self, name, by_key: dict):
        self.name, self.by_key, self.batch_size = name, by_key, 64

    def answer(self, key):
        return self.by_key.get(key)


def load_responses(path) -> dict:
    """--responses FILE.jsonl: rows with `id` (and optional `language`) and `answer` or `code`."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            if "id" not in row or not ({"answer", "code"} & set(row)):
                raise ValueError(f"{path}:{n}: a response row needs 'id' and 'answer' or 'code'")
            answer = row.get("answer")
            if answer is None:
                answer = f"```\n{row['code']}\n```"
            out[(row.get("language"), str(row["id"]))] = answer
    return out


# ---------------------------------------------------------------------------------------------------
# results.jsonl: append-only, one row per attempt

def task_key(task):
    return f"{task.language}/{task.id}"


def read_results(path: Path) -> dict:
    """{(key, round): row} of the attempts already recorded (a torn last line from a kill is ignored)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[(row["key"], row["round"])] = row
    return done


def conversation_of(task, rows_by_round):
    """The chat so far for a task: its prompt, then each earlier attempt once with its feedback."""
    messages = prompts.build_messages(task)
    for r in sorted(rows_by_round):
        row = rows_by_round[r]
        messages.append({"role": "assistant", "content": row["answer"]})
        messages.append({"role": "user", "content": prompts.debug_message(task.language, row["outcome"], row["error"])})
    return messages


def interleave(tasks):
    """Round-robin over languages, keeping each language's order: python_1, svg_1, ..., python_2, ..."""
    by_lang = {}
    for t in tasks:
        by_lang.setdefault(t.language, []).append(t)
    queues = list(by_lang.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


# ---------------------------------------------------------------------------------------------------

def evaluate(tasks, source, out_dir, rounds=3, workers=2, sandbox="auto", resume=False, seed=0, timeout_s=None,
             warm=True):
    """Run the benchmark; returns the summary dict (also written to OUT/summary.json)."""
    out_dir = Path(out_dir)
    results_path = out_dir / "results.jsonl"
    if results_path.exists() and not resume:
        raise ValueError(f"{results_path} exists: pass --resume to continue that run, or choose another --out")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    done = read_results(results_path)
    if done:
        print(f"resuming: {len(done)} attempts already in {results_path}")
    lock = threading.Lock()
    warm_pool = None
    if warm:
        try:
            warm_pool = WarmPool(sandbox)
        except ValueError:  # no sandbox mode works: every execution reports that as an infra error
            warm_pool = None
        if warm_pool and warm_pool.why_cold:
            print(f"warm workers off: {warm_pool.why_cold}")
    results_file = open(results_path, "a")

    def run_one(task, rnd, answer, gen_s):
        code = prompts.extract_code(task.language, answer)
        with tempfile.TemporaryDirectory(prefix="vc2-") as tmp:
            t0 = time.perf_counter()
            outcome = executors.run(task.language, code, Path(tmp), data_csv=task.data_csv, sandbox=sandbox,
                                    timeout_s=timeout_s, warm=warm_pool)
            exec_s = time.perf_counter() - t0
            image = None
            if outcome.image is not None and Path(outcome.image).is_file():
                image = out_dir / "images" / task.language / f"{task.id}_r{rnd}.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(outcome.image, image)
        row = {"key": task_key(task), "id": task.id, "language": task.language, "round": rnd,
               "outcome": outcome.status, "error": outcome.error or "", "code": code, "answer": answer,
               "image": str(image.relative_to(out_dir)) if image else None, "sandbox": outcome.sandbox,
               "gen_s": round(gen_s, 3), "exec_s": round(exec_s, 3)}
        with lock:
            results_file.write(json.dumps(row) + "\n")
            results_file.flush()
            done[(row["key"], rnd)] = row
        return row

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for rnd in range(rounds + 1):
                # tasks that need an attempt this round: never tried (round 0), or whose last attempt failed
                todo = []
                for task in interleave(tasks):
                    key = task_key(task)
                    if (key, rnd) in done:
                        continue
                    if rnd > 0:
                        prev = done.get((key, rnd - 1))
                        if prev is None or prev["outcome"] in ("pass", INFRA):
                            continue
                    todo.append(task)
                if rnd > 0 and isinstance(source, FixedAnswers):
                    break  # fixed answers cannot be corrected
                if not todo:
                    continue
                futures = []
                bar = tqdm(total=len(todo), desc=f"round {rnd}", unit="task")
                for start in range(0, len(todo), source.batch_size):
                    batch = todo[start:start + source.batch_size]
                    t0 = time.perf_counter()
                    if isinstance(source, FixedAnswers):
                        answers = [source.answer(task_key(t)) for t in batch]
                    else:
                        convs = [conversation_of(t, {r: done[(task_key(t), r)] for r in range(rnd)}) for t in batch]
                        answers = source(convs, seed=seed + rnd * 100003 + start)
                    gen_s = (time.perf_counter() - t0) / len(batch)
                    for task, answer in zip(batch, answers):
                        if answer is None:
                            raise ValueError(f"no answer for task {task_key(task)} in {source.name}")
                        f = pool.submit(run_one, task, rnd, answer, gen_s)
                        f.add_done_callback(lambda _: bar.update(1))
                        futures.append(f)
                for f in futures:
                    f.result()  # re-raise any bug in the worker
                bar.close()
    finally:
        results_file.close()
        if warm_pool:
            warm_pool.close()
    environment = executors.describe_sandbox(sandbox)  # the sandbox mode and every renderer's version
    if warm_pool and warm_pool.stats["failed"]:
        print(f"warm workers: {len(warm_pool.stats['failed'])} server failure(s), those tasks ran cold; first: "
              f"{warm_pool.stats['failed'][0][:300]}")
    return write_reports(tasks, read_results(results_path), out_dir, rounds, meta={
        "source": source.name, "rounds": rounds, "sandbox": environment.pop("sandbox"), "environment": environment,
        "warm_workers": warm_pool.stats if warm_pool else "off"})
