"""The evaluation loop: prompts -> batched generation -> sandboxed execution in parallel -> self-debug rounds.

    python run_eval.py --lang svg                      # the CLI (run_eval.py) wraps `evaluate` below
    python run_eval.py --lang all --model reference    # replay the bundled reference solutions

Round 0 asks every task once; each later round (up to --rounds) asks again only the tasks whose latest
attempt failed, with the error fed back as a new user turn. The conversation keeps every attempt once
(the original harness duplicated earlier turns). Infra errors (a missing renderer, a broken sandbox,
an API request that failed after its retries) are not the model's failure: they are not self-debugged,
not counted in that round's pass rate, reported loudly, and tried again by --resume.

Every attempt with an image gets its offline fidelity score against the task's reference image
(vc2/eval/fidelity.py; an attempt without an image scores 0). With a judge (vc2/eval/judge.py), every
passing attempt is then judged (vis and task scores) in a last pass over results.jsonl, which
appends the judged row; a later row for the same attempt supersedes the earlier one.

Every attempt is appended to OUT/results.jsonl as soon as it has run, so a killed run continues with
--resume and redoes nothing already recorded: the conversation of a task is rebuilt from its rows.
A model's round goes to the continuous-batching engine (vc2/engine.py) whole: --batch-size rows
decode at once, a finished row's slot takes the next waiting task, and each answer is executed in a
thread pool (--workers) as soon as it ends, while the others keep decoding; the executors start their
own sandboxed processes, so threads are enough here. (The next round starts when the last execution
of this one is back; its prompts need those outcomes.) Other answer sources answer in batches
(--batch-size). Renders go to warm servers (vc2/eval/warm.py) unless warm=False, and the tasks of a
round are interleaved by language, so that parallel workers mostly need different servers. Under
torchrun the tasks are split over ranks (see `evaluate`).
"""
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from vc2.eval import executors, extract, fidelity, prompts
from vc2.eval import sandbox as sb
from vc2.eval.api import InfraFailure
from vc2.eval.executors.status import Status
from vc2.eval.report import write_reports
from vc2.eval.warm import WarmPool
from vc2.sample import derive_seed

INFRA = Status.INFRA_ERROR


# ---------------------------------------------------------------------------------------------------
# answer sources: a model, the reference solutions, or a file of responses

# VisPlotBench's generation protocol for local models (its vLLM engine): greedy, no repetition penalty,
# up to 5,000 new tokens, stop at the model's eos ids. (Its OpenAI engine uses 3,000 tokens.)
PROTOCOL_SAMPLING = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
PROTOCOL_MAX_NEW_TOKENS = 5000
PROTOCOL_API_MAX_NEW_TOKENS = 3000  # its budget for API models (the OpenAI engine's max_tokens)


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
    """--responses FILE.jsonl: rows with `id` (and optional `language`) and `answer` or `code`, both strings.
    ValueError naming the file, line and field for anything else: a line that is not UTF-8 or not JSON, a
    missing or non-string field, or an id given twice (which one would count?)."""
    out, where = {}, {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            if not isinstance(row, dict) or "id" not in row or not ({"answer", "code"} & set(row)):
                raise ValueError(f"{path}:{n}: a response row needs 'id' and 'answer' or 'code'")
            for field in ("id", "language", "answer", "code"):
                if field in row and not isinstance(row[field], str) and not (field == "id" and isinstance(row[field], int)):
                    if field == "language" and row[field] is None:
                        continue
                    raise ValueError(f"{path}:{n}: field {field!r} must be a string, not "
                                     f"{type(row[field]).__name__} ({str(row[field])[:40]})")
            answer = row.get("answer")
            if answer is None:
                answer = f"```\n{row['code']}\n```"
            key = (row.get("language"), str(row["id"]))
            if key in out:
                raise ValueError(f"{path}:{n}: id {key[1]!r}" + (f" ({key[0]})" if key[0] else "") +
                                 f" is given twice (first at line {where[key]})")
            out[key], where[key] = answer, n
    return out


def match_responses(path, responses: dict, tasks, all_tasks) -> dict:
    """{task key: answer} for the selected tasks. ValueError for a response that names no task at all
    (a typo, or another benchmark's file), or one id that fits tasks of two languages."""
    by_id = {}
    for t in all_tasks:
        by_id.setdefault(t.id, []).append(t)
    for (lang, tid) in responses:
        hits = [t for t in by_id.get(tid, []) if lang in (None, t.language)]
        if not hits:
            raise ValueError(f"{path}: response id {tid!r}" + (f" (language {lang})" if lang else "") +
                             " matches no task")
        if len(hits) > 1:
            raise ValueError(f"{path}: response id {tid!r} fits {len(hits)} tasks "
                             f"({', '.join(task_key(t) for t in hits)}): give its 'language'")
    selected = {task_key(t) for t in tasks}
    out = {}
    for (lang, tid), answer in responses.items():
        for t in by_id[tid]:
            if lang in (None, t.language) and task_key(t) in selected:
                out[task_key(t)] = answer
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
             warm=True, generation=None, force=False, judge=None, judge_concurrency=4):
    """Run the benchmark; returns the summary dict (also written to OUT/summary.json).

    generation: the generation settings in force (recorded in run.json, summary.json and report.md, and
    checked on --resume; --force resumes despite a difference).
    judge: a vc2.eval.judge.Judge; every passing attempt is judged, judge_concurrency at a time.
    A model source with an engine (`submit`) gets each round whole; sampled answers are seeded per
    (task, round), so they do not depend on the batch or the rank.

    Data parallel: when torch.distributed is initialised (run_eval.py under torchrun), each rank takes
    every world-th task of the interleaved list, generates and executes it, and appends to its own
    OUT/results.rank<R>.jsonl; at the end rank 0 gathers the new rows and their images over
    torch.distributed (no shared filesystem needed), writes OUT/results.jsonl, judges, and writes the
    summary and the reports. On --resume every rank reads all results*.jsonl files it has and the ranks
    exchange them, so a run continues with any number of ranks."""
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
    mine = tasks if world == 1 else interleave(tasks)[rank::world]
    results_path = out_dir / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    if done and rank == 0:
        print(f"resuming: {len(done)} attempts already in {out_dir}")
    retry = [k for k, row in done.items() if row["outcome"] == INFRA]
    if retry:  # infra errors are not the model's answer: ask and run those attempts again
        if rank == 0:
            print(f"resuming: retrying {len(retry)} attempt(s) that ended in an infra error")
        for k in retry:
            del done[k]
    stale = sb.clean_stale()  # left by killed runs; live runs' and ranks' dirs are not touched
    if stale:
        print(f"removed {stale} temporary dir(s) of killed vc2 runs")
    sb.hide(out_dir)  # other tasks' images and answers are never visible to a sandboxed program
    try:
        fidelity._libs()
        score_images = True
    except ImportError as e:
        print(f"fidelity scores off: {e}")
        score_images = False
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
    new_rows = []

    def record(row):
        with lock:
            results_file.write(json.dumps(row) + "\n")
            results_file.flush()
            done[(row["key"], row["round"])] = row
            new_rows.append(row)
        return row

    def run_one(task, rnd, answer: Answer, gen_s):
        if isinstance(answer, InfraFailure):  # the answer source failed (an API request, after its retries)
            return record({"key": task_key(task), "id": task.id, "language": task.language, "round": rnd,
                           "outcome": INFRA, "error": f"answer source: {answer.message}", "code": "", "answer": "",
                           "image": None, "fidelity": None, "gen_s": round(gen_s, 3), "exec_s": 0.0})
        code = extract.extract_code(task.language, answer.text)
        tmp = sb.private_dir("task")
        t0 = time.perf_counter()
        image = None
        try:
            outcome = executors.run(task.language, code, tmp, data_csv=task.data_csv, sandbox=sandbox,
                                    timeout_s=timeout_s, warm=warm_pool)
            if outcome.image is not None and Path(outcome.image).is_file():
                image = out_dir / "images" / task.language / f"{task.id}_r{rnd}.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(outcome.image, image)
        except Exception as e:  # ours, not the program's: this task's infra error, and the run goes on
            outcome = SimpleNamespace(status=INFRA, error=f"vc2 failed on this task: {type(e).__name__}: {e}",
                                      sandbox=sandbox)
            image = None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        exec_s = time.perf_counter() - t0
        row = {"key": task_key(task), "id": task.id, "language": task.language, "round": rnd,
               "outcome": outcome.status, "error": outcome.error or "", "code": code, "answer": answer.text,
               "stop": answer.stop, "prompt_tokens": answer.prompt_tokens, "new_tokens": answer.new_tokens,
               "image": str(image.relative_to(out_dir)) if image else None, "sandbox": outcome.sandbox,
               "gen_s": round(gen_s, 3), "exec_s": round(exec_s, 3)}
        row["fidelity"], row["fidelity_parts"] = None, None
        ref = getattr(task, "reference_image", None)
        if score_images and outcome.status != INFRA and ref and Path(ref).is_file():
            if image is None:
                row["fidelity"] = 0.0  # nothing drawn: as far from the reference as a blank image
            else:
                try:
                    parts = fidelity.score(ref, image)
                    row["fidelity"], row["fidelity_parts"] = parts.pop("score"), parts
                except Exception as e:  # a score we could not compute is missing, never a crash or a 0
                    row["fidelity_error"] = f"{type(e).__name__}: {e}"[:300]
        return record(row)

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
                    if not isinstance(answer, (Answer, InfraFailure)):
                        answer = Answer(answer)
                    f = pool.submit(run_one, task, rnd, answer, gen_s)
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
        if rank == 0 and (world > 1 or any(p.name != "results.jsonl" for p in earlier)):
            results_file.close()  # rank files: one merged results.jsonl, which the judge's rows then extend
            write_merged_results(out_dir / "results.jsonl", done, tasks)
            results_file = open(out_dir / "results.jsonl", "a")
        if judge is not None and rank == 0:
            judge_all(judge, tasks, done, out_dir, record, judge_concurrency)
    finally:
        results_file.close()
        if warm_pool:
            warm_pool.close()
    if warm_pool and warm_pool.stats["failed"]:
        print(f"warm workers: {len(warm_pool.stats['failed'])} server failure(s), those tasks ran cold; first: "
              f"{warm_pool.stats['failed'][0][:300]}")
    summary = None
    if rank == 0:
        # the sandbox mode (per language: a container where its image is built) and every renderer's version
        environment = executors.describe_sandbox(sandbox, sorted({t.language for t in tasks}))
        summary = write_reports(tasks, read_results(out_dir / "results.jsonl"), out_dir, rounds, meta={
            "source": source.name, "rounds": rounds, "generation": generation, "sandbox": environment.pop("sandbox"),
            "sandbox_by_language": environment.pop("sandbox_by_language", None),
            "environment": environment, "warm_workers": warm_pool.stats if warm_pool else "off",
            "fidelity": "vc2.eval.fidelity" if score_images else "off (scikit-image/ImageHash missing)",
            "judge": None if judge is None else {"model": judge.name, "base_url": judge.client.base_url,
                                                 "stats": dict(judge.client.stats)},
            "api": dict(source.client.stats) if hasattr(source, "client") else None, "ranks": world})
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


def judge_all(judge, tasks, done, out_dir, record, concurrency):
    """Judge every passing attempt that has no judge scores yet (or whose call failed last time), and
    append its row again with them. Unscored answers keep their status ("error", "unparsed") and no score."""
    by_key = {task_key(t): t for t in tasks}

    def needs(row):
        j = row.get("judge")
        return (row["outcome"] == "pass" and row.get("image") and row["key"] in by_key
                and (j is None or any(j.get(k, {}).get("status") == "error" for k in ("vis", "task"))))

    rows = [row for row in done.values() if needs(row)]
    if not rows:
        return

    def one(row):
        task, image = by_key[row["key"]], out_dir / row["image"]
        ref = getattr(task, "reference_image", None)
        vis = (judge.vis(image, ref) if ref and Path(ref).is_file()
               else {"score": None, "status": "no_reference", "detail": "the task has no reference image"})
        return record({**row, "judge": {"model": judge.name, "vis": vis, "task": judge.task(image, task)}})

    with ThreadPoolExecutor(concurrency) as pool:
        list(tqdm(pool.map(one, rows), total=len(rows), desc="judge", unit="attempt", dynamic_ncols=True))


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
