"""The evaluation loop: prompts -> batched generation -> sandboxed execution in parallel -> self-debug rounds.

    python run_eval.py --lang svg                      # the CLI (run_eval.py) wraps `evaluate` below
    python run_eval.py --lang all --model reference    # replay the bundled reference solutions

Round 0 asks every task once; each later round (up to --rounds) asks again only the tasks whose latest
attempt failed, with the error fed back as a new user turn. The conversation keeps every attempt once
(the original harness duplicated earlier turns). Infra errors (a missing renderer, a broken sandbox)
are not the model's failure: they are not retried, not counted in pass rates, and reported loudly.

Every attempt is appended to OUT/results.jsonl as soon as it has run, so a killed run continues with
--resume and redoes nothing already recorded: the conversation of a task is rebuilt from its rows.
A model's round goes to the continuous-batching engine (vc2/engine.py) whole: --batch-size rows
decode at once, a finished row's slot takes the next waiting task, and each answer is executed in a
thread pool (--workers) as soon as it ends, while the others keep decoding; the executors start their
own sandboxed processes, so threads are enough here. (The next round starts when the last execution
of this one is back; its prompts need those outcomes.) Renders go to warm servers (vc2/eval/warm.py)
unless warm=False, and the tasks of a round are interleaved by language, so that parallel workers
mostly need different servers. Under torchrun the tasks are split over ranks (see `evaluate`).
"""
import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from vc2.eval import executors, prompts
from vc2.eval.report import write_reports
from vc2.eval.warm import WarmPool
from vc2.sample import derive_seed

INFRA = "infra_error"


# ---------------------------------------------------------------------------------------------------
# answer sources: a model, the reference solutions, or a file of responses

# VisPlotBench's generation protocol for local models (its vLLM engine): greedy, no repetition penalty,
# up to 5,000 new tokens, stop at the model's eos ids. (Its OpenAI engine uses 3,000 tokens.)
PROTOCOL_SAMPLING = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
PROTOCOL_MAX_NEW_TOKENS = 5000


@dataclass
class Answer:
    """One generated answer and why generation stopped: "eos" (a stop id), "budget" (max_new_tokens) or
    "context" (the prompt plus the answer reached the model's max_position_embeddings)."""
    text: str
    stop: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None


class GenerationProgress:
    """The live generation line of a round: rows generating and waiting, tokens so far, tokens/s, ETA.

    An answer source reports `start(i)` when row i enters the model, `token(i)` per generated token and
    `done(i)` when it ends; `wait(n)` adds rows to the queue. That fits a static batch (a batch's rows all
    start together, later batches wait) and a slot engine (a row starts when a slot frees) alike.
    The bar counts tokens; its total, and so tqdm's ETA, is an estimate: rows still to come are assumed as
    long as the mean finished answer so far, or the whole budget before any has finished (an upper bound).
    """

    def __init__(self, desc, budget):
        self.budget, self.waiting, self.live, self.n_done, self.done_tokens = budget, 0, {}, 0, 0
        self.bar = tqdm(total=0, desc=desc, unit="tok", dynamic_ncols=True, smoothing=0.1, position=0)

    def wait(self, n):
        self.waiting += n
        self._refresh()

    def start(self, i):
        self.waiting -= 1
        self.live[i] = 0
        self._refresh()

    def token(self, i):
        self.live[i] += 1
        self.bar.update(1)
        if self.bar.n % 16 == 0:
            self._refresh(redraw=False)  # tqdm redraws at most every 0.1 s by itself

    def done(self, i):
        self.done_tokens += self.live.pop(i)
        self.n_done += 1
        self._refresh()

    def _refresh(self, redraw=True):
        expect = self.done_tokens / self.n_done if self.n_done else self.budget
        todo = sum(max(expect - n, 0) for n in self.live.values()) + self.waiting * expect
        self.bar.total = int(self.bar.n + todo)
        self.bar.set_postfix_str(f"rows: {len(self.live)} generating, {self.waiting} waiting, {self.n_done} done",
                                 refresh=redraw)

    def close(self):
        self.bar.total = self.bar.n
        self.bar.close()


class ModelAnswers:
    """Chat generation with a vc2 model on the continuous-batching engine (vc2/engine.py).

    The runner submits a whole round (`submit` per conversation, then `run`); each answer is handed to
    `on_answer` as soon as it ends, while the other rows keep decoding. __call__ answers one batch (the
    interface the other answer sources share). `settings` are the resolved generation settings
    (run_eval.py: the benchmark's protocol by default): temperature, top_p, top_k, repetition_penalty,
    max_new_tokens. Each row's budget is capped so that prompt + answer never exceeds the model's
    context (max_position_embeddings): such a row ends with stop reason "context".
    batch_size: the engine's slots (rows decoding at once). prompt_lookup: exact prompt-lookup decoding
    for greedy rows (same tokens, fewer forwards; bench/RESULTS.md).
    """

    def __init__(self, model, tokenizer, settings: dict, batch_size, prompt_lookup=True, **engine_options):
        from vc2.engine import Engine
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.settings = {k: settings[k] for k in PROTOCOL_SAMPLING}
        self.max_new_tokens = settings["max_new_tokens"]
        self.context = model.config.max_position_embeddings
        self.prompt_lookup = prompt_lookup
        self.engine = Engine(model, slots=batch_size, max_len=self.context, **engine_options)
        self.name = str(getattr(model, "source_dir", "model"))

    def submit(self, conversation, seed, row=0, progress=None, on_answer=None):
        """Queue one conversation; on_answer(Answer, seconds in a slot) is called when it ends."""
        ids = self.tok.render_chat(conversation, add_generation_prompt=True)[0]
        started = {}

        def on_start(r):
            started["t"] = time.perf_counter()
            if progress:
                progress.start(row)

        def on_token(r, toks):
            if progress:
                for _ in toks:
                    progress.token(row)

        def on_done(r):
            if progress and started:
                progress.done(row)
            if on_answer:
                secs = time.perf_counter() - started["t"] if started else 0.0
                on_answer(self.answer(r), secs)

        return self.engine.add_request(ids, self.max_new_tokens, stop_ids=self.tok.eos_ids, seed=seed,
                                       prompt_lookup=self.prompt_lookup, on_start=on_start, on_token=on_token,
                                       on_done=on_done, **self.settings)

    def answer(self, req):
        return Answer(self.tok.decode(req.out, skip_special_tokens=True), req.finish_reason, len(req.prompt),
                      len(req.out))

    def run(self):
        self.engine.run()

    def __call__(self, conversations, seed, progress=None):
        reqs = [self.submit(c, derive_seed(seed, j), j, progress) for j, c in enumerate(conversations)]
        self.run()
        return [self.answer(r) for r in reqs]


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

def run_identity(source, generation, rounds):
    """What a resumed run must share with the run it continues: the answer source and generation settings."""
    return {"source": source.name, "generation": generation, "rounds": rounds}


def check_resume(path: Path, identity: dict, force: bool):
    """OUT/run.json holds the identity of the run; --resume with other settings would mix two runs' answers."""
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); remove it or choose another --out") from None
    diffs = []
    for key in ("source", "generation"):
        a, b = before.get(key), identity.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: was {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: was {a!r}, now {b!r}")
    if diffs and not force:
        raise ValueError(f"--resume: this run differs from the one in {path.parent} ({'; '.join(diffs)}); "
                         f"use the same settings, another --out, or --force to continue anyway")
    if diffs:
        print(f"--force: resuming although {'; '.join(diffs)}")


def evaluate(tasks, source, out_dir, rounds=3, workers=2, sandbox="auto", resume=False, seed=0, timeout_s=None,
             warm=True, generation=None, force=False):
    """Run the benchmark; returns the summary dict (also written to OUT/summary.json).

    generation: the generation settings in force (recorded in run.json, summary.json and report.md, and
    checked on --resume; --force resumes despite a difference). A model source with an engine
    (`submit`) gets each round whole; sampled answers are seeded per (task, round).

    Data parallel: when torch.distributed is initialised (run_eval.py under torchrun), each rank takes
    every world-th task of the interleaved list, generates and executes it, and appends to its own
    OUT/results.rank<R>.jsonl; at the end rank 0 gathers the new rows and their images over
    torch.distributed (no shared filesystem needed), writes OUT/results.jsonl, the summary and the
    reports. On --resume every rank reads all results*.jsonl files it has and the ranks exchange them,
    so a run continues with any number of ranks.
    """
    out_dir = Path(out_dir)
    rank, world = _rank_world()
    earlier = sorted(out_dir.glob("results*.jsonl"))
    identity = run_identity(source, generation, rounds)
    problem = None
    if earlier and not resume:
        problem = f"{earlier[0]} exists: pass --resume to continue that run, or choose another --out"
    else:
        try:
            check_resume(out_dir / "run.json", identity, force)
        except ValueError as e:
            problem = str(e)
    problem = next((p for p in _all_gather(problem, world) if p), None)  # every rank stops, or none
    if problem:
        raise ValueError(problem)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps(identity, indent=2))
    local = {}
    for path in earlier:
        local.update(read_results(path))
    done = dict(local)
    for part in _all_gather(local, world) if world > 1 else []:
        done.update(part)
    if done and rank == 0:
        print(f"resuming: {len(done)} attempts already in {out_dir}")
    mine = tasks if world == 1 else interleave(tasks)[rank::world]
    results_path = out_dir / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    lock = threading.Lock()
    warm_pool = None
    if warm:
        try:
            warm_pool = WarmPool(sandbox)
        except ValueError:  # no sandbox mode works: every execution reports that as an infra error
            warm_pool = None
        if warm_pool and warm_pool.why_cold and rank == 0:
            print(f"warm workers off: {warm_pool.why_cold}")
    results_file = open(results_path, "a")
    new_rows = []

    def run_one(task, rnd, answer: Answer, gen_s):
        code = prompts.extract_code(task.language, answer.text)
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
               "outcome": outcome.status, "error": outcome.error or "", "code": code, "answer": answer.text,
               "stop": answer.stop, "prompt_tokens": answer.prompt_tokens, "new_tokens": answer.new_tokens,
               "image": str(image.relative_to(out_dir)) if image else None, "sandbox": outcome.sandbox,
               "gen_s": round(gen_s, 3), "exec_s": round(exec_s, 3)}
        with lock:
            results_file.write(json.dumps(row) + "\n")
            results_file.flush()
            done[(row["key"], rnd)] = row
            new_rows.append(row)
        return row

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for rnd in range(rounds + 1):
                # tasks that need an attempt this round: never tried (round 0), or whose last attempt failed
                todo = []
                for task in interleave(mine):
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
                fixed = isinstance(source, FixedAnswers)
                bar = tqdm(total=len(todo), desc=f"round {rnd} execute", unit="task", dynamic_ncols=True,
                           position=0 if fixed else 1)
                gen_bar = None if fixed else GenerationProgress(f"round {rnd} generate", getattr(source, "max_new_tokens", 0))
                if gen_bar:
                    gen_bar.wait(len(todo))

                def execute(task, answer, gen_s):
                    if answer is None:
                        raise ValueError(f"no answer for task {task_key(task)} in {source.name}")
                    f = pool.submit(run_one, task, rnd, answer if isinstance(answer, Answer) else Answer(answer), gen_s)
                    f.add_done_callback(lambda _: bar.update(1))
                    futures.append(f)

                if hasattr(source, "submit"):  # the engine takes the whole round; answers run as they end
                    for i, task in enumerate(todo):
                        conv = conversation_of(task, {r: done[(task_key(task), r)] for r in range(rnd)})
                        source.submit(conv, seed=derive_seed(seed, task_key(task), rnd), row=i, progress=gen_bar,
                                      on_answer=lambda answer, secs, task=task: execute(task, answer, secs))
                    source.run()
                else:
                    for start in range(0, len(todo), source.batch_size):
                        batch = todo[start:start + source.batch_size]
                        t0 = time.perf_counter()
                        if fixed:
                            answers = [source.answer(task_key(t)) for t in batch]
                        else:
                            convs = [conversation_of(t, {r: done[(task_key(t), r)] for r in range(rnd)}) for t in batch]
                            answers = source(convs, seed=seed + rnd * 100003 + start,
                                             progress=_Offset(gen_bar, start))
                        gen_s = (time.perf_counter() - t0) / len(batch)
                        for task, answer in zip(batch, answers):
                            execute(task, answer, gen_s)
                if gen_bar:
                    gen_bar.close()
                pending = sum(not f.done() for f in futures)
                if pending:
                    bar.set_postfix_str("generation done, waiting for the executions")
                for f in futures:
                    f.result()  # re-raise any bug in the worker
                bar.close()
    finally:
        results_file.close()
        if warm_pool:
            warm_pool.close()
    if warm_pool and warm_pool.stats["failed"]:
        print(f"warm workers: {len(warm_pool.stats['failed'])} server failure(s), those tasks ran cold; first: "
              f"{warm_pool.stats['failed'][0][:300]}")
    if world > 1:  # rank 0 collects every rank's new rows and the images of the rows it has
        mine_rows = list(local.values()) + new_rows
        images = {r["image"]: (out_dir / r["image"]).read_bytes() for r in mine_rows
                  if r.get("image") and (out_dir / r["image"]).is_file()}
        parts = _gather((new_rows, images), world)  # every rank takes part; only rank 0 receives
        for rows, imgs in parts or []:
            for row in rows:
                done[(row["key"], row["round"])] = row
            for rel, data in imgs.items():
                if not (out_dir / rel).is_file():
                    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    (out_dir / rel).write_bytes(data)
    summary = None
    if rank == 0:
        if world > 1 or any(p.name != "results.jsonl" for p in earlier):  # rank files: one merged results.jsonl
            write_merged_results(out_dir / "results.jsonl", done, tasks)
        environment = executors.describe_sandbox(sandbox)  # the sandbox mode and every renderer's version
        summary = write_reports(tasks, done, out_dir, rounds, meta={
            "source": source.name, "rounds": rounds, "generation": generation, "sandbox": environment.pop("sandbox"),
            "environment": environment, "warm_workers": warm_pool.stats if warm_pool else "off", "ranks": world})
    return _broadcast(summary, world)


def write_merged_results(path: Path, rows: dict, tasks):
    """All attempts, ordered by round then task, written atomically (the rank files stay for --resume)."""
    order = {task_key(t): i for i, t in enumerate(interleave(tasks))}
    ordered = sorted(rows.values(), key=lambda r: (r["round"], order.get(r["key"], len(order)), r["key"]))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in ordered))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# data parallel: object collectives over the default process group (run_eval.py makes it gloo)

def _rank_world():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(obj, world):
    if world == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _gather(obj, world):
    """The objects of every rank, on rank 0 (None elsewhere)."""
    import torch.distributed as dist
    rank = dist.get_rank()
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def _broadcast(obj, world):
    if world == 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Offset:
    """A batch's view of the round's GenerationProgress: batch row j is round row `start + j`."""

    def __init__(self, progress, start):
        self.progress, self.start_row = progress, start

    def start(self, j):
        self.progress.start(self.start_row + j)

    def token(self, j):
        self.progress.token(self.start_row + j)

    def done(self, j):
        self.progress.done(self.start_row + j)
