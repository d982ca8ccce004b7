"""SFT data: VisCode-Multi-679K-style conversations -> a token cache on disk -> packed rows for training.

    from vc2.data import prepare_cache, pack_lengths, epoch_order
    cache = prepare_cache(["data/VisCode-Multi-679K.jsonl"], tokenizer, max_length=16384)  # tokenized once
    bins = pack_lengths(cache.lengths, max_length=16384)     # best-fit decreasing, on lengths only
    row = cache.row(bins[epoch_order(len(bins), seed=0, epoch=0)[0]])  # one packed row, built on demand

    rows, report = load_conversations("data/sample.jsonl")    # small data in memory (tests, benchmarks)
    docs, dropped = tokenize(rows, tokenizer, max_length=16384)
    packed, efficiency = pack(docs, max_length=16384, seed=0)

Each packed row is one training sequence of <= max_length tokens holding several whole conversations:
  input_ids (N,), labels (N,) (-100 = not supervised), position_ids (N,) restarting at 0 per conversation,
  cu_seqlens (n_docs + 1,) int32 boundaries, so attention never crosses a conversation (vc2/model.py),
  and max_seqlen (its longest conversation, a host int: the attention kernels need it, and reading it
  from cu_seqlens on a GPU would be a sync).
Labels are shifted *inside* each conversation: position t is trained to predict token t+1 of the same
conversation when that token is assistant content (or the <|im_end|> closing an assistant turn); the
last token of a conversation predicts nothing, so no conversation learns to predict the next one.

Policies, as in the VisCoder2 recipe: a conversation longer than max_length is dropped ("delete") and
counted, never cut. Malformed rows (not JSON, no messages, unknown role, non-string content, empty
assistant turn, no assistant turn) are skipped with a count and the first offending file:line, or
rejected with strict=True; a bad row never crashes an epoch.

The cache (why: 679K conversations take ~45 min to tokenize on one core, and every rank used to do it,
holding ~87 GB of Python lists each). `prepare_cache` tokenizes the data once, in parallel over the
machine's cores, into flat arrays in a directory keyed by the data files (path, size, mtime), the
tokenizer (tokenizer.json's hash, chat template, default system prompt) and max_length, so any change
makes a new cache and a second run on the same files starts at once; it lives under
~/.cache/vc2/data (or $VC2_DATA_CACHE, or --data-cache), not in the run directory, so a fresh --out
reuses it. Files: tokens.i32 (all conversations' ids back to back), mask.u8 (1 = supervised target:
assistant content and its <|im_end|>), lengths.i32 and n_sup.i32 per conversation, meta.json (the key,
counts, the first malformed rows). Each rank reads only its own rows' bytes, through the page cache all
ranks of a node share (see TokenCache).
One process writes (the trainer: local rank 0 of each node) into a private temporary directory and
renames it into place when complete; the others wait for that file, not in a collective, so a cold
tokenize longer than NCCL's 10-minute timeout cannot fail the run. On a filesystem shared between nodes
each node's writer may build the same cache at once: the first rename wins and the others are dropped
(same content), which wastes work but is safe.

Packing works on lengths only (a few MB for 679K conversations) and is deterministic, so every rank
computes the same bins without talking to the others, then materialises only its own rows, lazily.
"""
import hashlib
import heapq
import json
import os
import random
import resource
import shutil
import socket
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch

IGNORE = -100
ROLES = {"system", "user", "assistant"}
CACHE_VERSION = 1
CHUNK_BYTES = 4 << 20     # JSONL bytes per tokenizer task: small enough to balance workers, large enough to amortise
IN_PROCESS_BYTES = 8 << 20  # less data than this is tokenized in the calling process (no worker start-up)


@dataclass
class LoadReport:
    rows: int = 0
    skipped: int = 0
    problems: list = field(default_factory=list)  # (file, line, reason) of the first few skipped rows

    def __str__(self):
        s = f"{self.rows} conversations read, {self.skipped} malformed skipped"
        for file, line, reason in self.problems:
            s += f"\n  {file}:{line}: {reason}"
        return s


def row_problem(row) -> str | None:
    """Why a row cannot be trained on (None if it is fine)."""
    if not isinstance(row, dict):
        return f"row is {type(row).__name__}, expected an object"
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "missing or empty 'messages'"
    n_assistant = 0
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}]: bad role {m.get('role')!r}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}]: content is not a string"
        if m["role"] == "assistant":
            if not m["content"].strip():
                return f"messages[{i}]: empty assistant turn"
            n_assistant += 1
    if n_assistant == 0:
        return "no assistant turn (nothing to learn)"
    return None


def _parquet_rows(path: Path, row_group=None):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading parquet needs pyarrow: pip install -e '.[data]'") from None
    f = pq.ParquetFile(path)
    table = f.read() if row_group is None else f.read_row_group(row_group)
    for row in table.to_pylist():
        if isinstance(row.get("messages"), str):  # some exports store messages as a JSON string
            row["messages"] = json.loads(row["messages"])
        yield row


def _iter_file(path: Path):
    """(line_number, row or JSONDecodeError) for a .jsonl file, or (row_index + 1, row) for .parquet."""
    if path.suffix == ".parquet":
        yield from enumerate(_parquet_rows(path), 1)
        return
    yield from read_jsonl(path)


def read_jsonl(path):
    """(line_number, row) for each non-empty line; a line that is not JSON yields its JSONDecodeError
    instead, so each caller picks its policy (training data skips it, task files refuse it)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # reported like bad JSON, with its line: never a traceback
                yield n, json.JSONDecodeError(f"not UTF-8 ({e.reason})", raw.decode("utf-8", "replace"), e.start)
                continue
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                yield n, e


def data_files(paths) -> list[Path]:
    """The .jsonl/.parquet files named by `paths` (files, or directories of them, in sorted order)."""
    files = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".jsonl", ".parquet"))
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{p}: no such data file or directory")
    if not files:
        raise ValueError(f"{paths}: no .jsonl or .parquet files found")
    return files


def load_conversations(paths, strict=False, max_problems=5):
    """Read rows from .jsonl/.parquet files (or directories of them) into memory. Returns (rows, LoadReport)."""
    rows, report = [], LoadReport()
    for file in data_files(paths):
        for n, row in _iter_file(file):
            problem = f"not valid JSON ({row})" if isinstance(row, json.JSONDecodeError) else row_problem(row)
            if problem:
                if strict:
                    raise ValueError(f"{file}:{n}: {problem}")
                report.skipped += 1
                if len(report.problems) < max_problems:
                    report.problems.append((str(file), n, problem))
                continue
            rows.append(row)
    report.rows = len(rows)
    return rows, report


def shifted_labels(ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """labels[t] = ids[t+1] where token t+1 is a supervised target of the same document, else IGNORE."""
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    labels[:-1] = np.where(mask[1:] == 1, ids[1:], IGNORE)
    labels[np.cumsum(lengths) - 1] = IGNORE  # a document's last token predicts nothing (not the next document)
    return labels


def tokenize(rows, tokenizer, max_length):
    """Conversations -> documents [(ids, labels)] with labels already shifted; drops (counts) too-long ones."""
    docs, dropped = [], 0
    for ids, mask in tokenizer.render_chats([row["messages"] for row in rows]):
        if len(ids) > max_length:
            dropped += 1  # truncation_strategy "delete": never train on a cut-off answer
            continue
        labels = shifted_labels(np.array(ids), np.array(mask), np.array([len(ids)]))
        docs.append((ids, labels.tolist()))
    return docs, dropped


# --- packing ----------------------------------------------------------------------------------------

def pack_lengths(lengths, max_length: int) -> list[np.ndarray]:
    """Best-fit-decreasing bin packing of documents of these lengths into rows of <= max_length tokens.

    Returns the bins in creation order, each an array of document indices in placement order.
    Longest first, each document goes into the open bin with the least free space that still fits it
    (the earliest such bin on ties), else into a new bin: tight rows, and the same bins on every rank.
    Bins are kept in buckets by free capacity with a bitset over 0..max_length, so finding the tightest
    bin is two big-integer operations (O(max_length / 64) machine words) rather than a scan over all bins:
    O(n log n) in all, the sort included (679K documents pack in seconds, not the ~17 min of a scan).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    assert lengths.size == 0 or (lengths.min() >= 1 and lengths.max() <= max_length), "documents must fit a row"
    order = np.lexsort((np.arange(len(lengths)), -lengths))  # longest first; ties by index, as a stable sort
    free_bits = 0          # bit c set <=> some bin has exactly c tokens free
    by_free = {}           # c -> heap of the ids of the bins with c tokens free
    n_bins = 0
    bin_of = np.empty(len(lengths), dtype=np.int64)
    for i, n in zip(order.tolist(), lengths[order].tolist()):
        fits = free_bits >> n
        if fits:
            c = n + (fits & -fits).bit_length() - 1  # the smallest free capacity >= n
            heap = by_free[c]
            b = heapq.heappop(heap)
            if not heap:
                free_bits ^= 1 << c
        else:
            b, c = n_bins, max_length
            n_bins += 1
        bin_of[i] = b
        if c - n > 0:  # a full bin can take nothing more
            heapq.heappush(by_free.setdefault(c - n, []), b)
            free_bits |= 1 << (c - n)
    in_order = order[np.argsort(bin_of[order], kind="stable")]  # documents grouped by bin, in placement order
    return np.split(in_order, np.cumsum(np.bincount(bin_of, minlength=n_bins))[:-1]) if n_bins else []


def epoch_order(n_bins: int, seed: int, epoch: int) -> list[int]:
    """The order of the packed rows in an epoch: a shuffle seeded by (seed, epoch), the same on every rank."""
    order = list(range(n_bins))
    random.Random(seed + epoch).shuffle(order)
    return order


def make_row(ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> dict:
    """One packed row from its documents' concatenated ids and masks (see the module docstring)."""
    cu = np.concatenate([[0], np.cumsum(lengths)])
    positions = np.arange(len(ids)) - np.repeat(cu[:-1], lengths)
    return {"input_ids": torch.from_numpy(ids.astype(np.int64)),
            "labels": torch.from_numpy(shifted_labels(ids, mask, lengths)),
            "position_ids": torch.from_numpy(positions),
            "cu_seqlens": torch.from_numpy(cu.astype(np.int32)),
            "max_seqlen": int(lengths.max()),
            "doc_lengths": lengths.astype(np.int64)}


def pack(docs, max_length, seed=0):
    """In-memory packing of tokenize()'s documents: (rows shuffled with `seed`, efficiency), where
    efficiency = real tokens / (rows x max_length). For small data; training uses the cache."""
    lengths = np.array([len(d[0]) for d in docs], dtype=np.int64)
    rows = []
    for members in pack_lengths(lengths, max_length):
        ids = np.concatenate([np.asarray(docs[i][0], dtype=np.int64) for i in members])
        # tokenize() gives shifted labels; recover the mask of supervised targets they came from
        mask = np.concatenate([np.r_[0, np.asarray(docs[i][1][:-1]) != IGNORE] for i in members]).astype(np.uint8)
        rows.append(make_row(ids, mask, lengths[members]))
    rows = [rows[i] for i in epoch_order(len(rows), seed, 0)]
    return rows, (int(lengths.sum()) / (len(rows) * max_length) if rows else 0.0)


# --- the token cache --------------------------------------------------------------------------------

def default_cache_root() -> Path:
    if os.environ.get("VC2_DATA_CACHE"):
        return Path(os.environ["VC2_DATA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vc2" / "data"


def cache_key(files, tokenizer, max_length: int) -> tuple[str, dict]:
    """(directory name, key): what the cache's contents depend on. A change to any of it is a new cache."""
    key = {"version": CACHE_VERSION, "max_length": max_length,
           "files": [[str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files],
           "tokenizer_sha256": hashlib.sha256(Path(tokenizer.path).read_bytes()).hexdigest(),
           "chat_template": tokenizer.chat_template, "default_system_prompt": tokenizer.default_system_prompt}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{Path(files[0]).stem}-{len(files)}f-L{max_length}-{digest}", key


class TokenCache:
    """A complete cache directory, opened read-only: per-document arrays in memory, tokens and mask read
    from their files row by row.

    The token files are read with pread, not memory-mapped: the bytes come from the same shared page cache
    either way, but a mapping would count every page a rank has ever touched (and the kernel's readahead
    around it, ~1 GB after 100 rows here) in that rank's RSS, growing through the epochs."""

    def __init__(self, path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.lengths = np.fromfile(self.path / "lengths.i32", dtype=np.int32).astype(np.int64)
        self.n_sup = np.fromfile(self.path / "n_sup.i32", dtype=np.int32).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        n = int(self.lengths.sum())
        assert n == self.meta["tokens"], f"{self.path}: lengths do not add up to meta.json's token count"
        for name, itemsize in (("tokens.i32", 4), ("mask.u8", 1)):
            assert (self.path / name).stat().st_size == n * itemsize, f"{self.path / name}: truncated"
        self._tokens = os.open(self.path / "tokens.i32", os.O_RDONLY)
        self._mask = os.open(self.path / "mask.u8", os.O_RDONLY)

    def __len__(self):
        return len(self.lengths)

    def __del__(self):
        for fd in (getattr(self, "_tokens", None), getattr(self, "_mask", None)):
            if fd is not None:
                os.close(fd)

    @property
    def report(self) -> LoadReport:
        m = self.meta
        return LoadReport(rows=m["rows"], skipped=m["skipped"], problems=[tuple(p) for p in m["problems"]])

    def row(self, docs) -> dict:
        """The packed row of these documents (indices into the cache), read from the cache files."""
        lengths = self.lengths[np.asarray(docs)]
        ids = np.empty(int(lengths.sum()), dtype=np.int32)
        mask = np.empty(len(ids), dtype=np.uint8)
        at = 0
        for d, n in zip(docs, lengths.tolist()):
            start = int(self.starts[d])
            for fd, buf, size in ((self._tokens, ids, 4), (self._mask, mask, 1)):
                view = memoryview(buf[at:at + n]).cast("B")
                got = os.preadv(fd, [view], start * size)
                assert got == n * size, f"{self.path}: short read"
            at += n
        return make_row(ids, mask, lengths)


def prepare_cache(paths, tokenizer, max_length: int, root=None, writer: bool = True, workers: int | None = None,
                  strict: bool = False, timeout: float | None = None, log=print) -> TokenCache:
    """Open the cache of these data files, building it first if it does not exist (see the module docstring).

    writer=False waits for another process (the node's local rank 0) to build it, polling the file
    system; timeout None waits as long as that takes. workers None uses every core this process may run on.
    """
    files = data_files(paths)
    name, key = cache_key(files, tokenizer, max_length)
    root = Path(root) if root else default_cache_root()
    final, failed = root / name, root / (name + ".failed")
    if not (final / "meta.json").is_file():
        if writer:
            failed.unlink(missing_ok=True)
            try:
                _build_cache(files, tokenizer, max_length, final, key, workers, strict, log)
            except BaseException as e:  # tell the waiting ranks instead of leaving them waiting
                root.mkdir(parents=True, exist_ok=True)
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
        else:
            _wait_for(final / "meta.json", failed, timeout, log)
    cache = TokenCache(final)
    if strict and cache.meta["skipped"]:
        file, line, reason = cache.meta["problems"][0]
        raise ValueError(f"{file}:{line}: {reason}")
    return cache


def _wait_for(done: Path, failed: Path, timeout, log):
    t0, said = time.time(), 0.0
    while not done.is_file():
        if failed.is_file() and failed.stat().st_mtime >= t0 - 5:  # ignore a marker left by an earlier run
            raise ValueError(f"the data cache writer failed: {failed.read_text()}")
        if timeout is not None and time.time() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {done}; is local rank 0 still tokenizing?")
        if time.time() - t0 - said >= 60:
            said = time.time() - t0
            log(f"data: waiting for the writer of {done.parent} ({said:.0f} s)")
        time.sleep(0.5)


def _plan_chunks(files) -> list[tuple]:
    """Tokenizer tasks in data order: (file, "jsonl", start byte, end byte) ranges that begin and end at
    line starts, or (file, "parquet", row group, None)."""
    chunks = []
    for f in files:
        if f.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(f"{f}: reading parquet needs pyarrow: pip install -e '.[data]'") from None
            chunks += [(str(f), "parquet", g, None) for g in range(pq.ParquetFile(f).num_row_groups)]
            continue
        size, bounds = f.stat().st_size, [0]
        with open(f, "rb") as fh:
            while bounds[-1] + CHUNK_BYTES < size:
                fh.seek(bounds[-1] + CHUNK_BYTES)
                fh.readline()  # to the start of the next line
                if fh.tell() >= size:
                    break
                bounds.append(fh.tell())
        bounds.append(size)
        chunks += [(str(f), "jsonl", a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return chunks


_WORKER = {}  # the tokenizer and max_length of a worker process (set by _worker_init)


def _worker_init(tokenizer, max_length, pool=True):
    if pool:  # one process per core already: no Rust thread pool on top
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=tokenizer, max_length=max_length)


def _tokenize_chunk(chunk) -> dict:
    """Read, check and tokenize one chunk: flat arrays of the conversations that fit, and the counts."""
    path, kind, a, b = chunk
    if kind == "parquet":
        lines = list(enumerate(_parquet_rows(Path(path), a), 1))
        n_lines = len(lines)
    else:
        with open(path, "rb") as f:
            f.seek(a)
            text = f.read(b - a)
        split = text.split(b"\n")
        if split and split[-1] == b"":
            split.pop()  # the newline ending the last line
        n_lines = len(split)
        lines = [(n, line) for n, line in enumerate(split, 1) if line.strip()]
    convs, problems = [], []
    for n, row in lines:
        if isinstance(row, bytes):
            try:
                row = json.loads(row)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                problems.append((n, f"not valid JSON ({e})"))
                continue
        problem = row_problem(row)
        if problem:
            problems.append((n, problem))
            continue
        convs.append(row["messages"])
    rendered = [(ids, mask) for ids, mask in _WORKER["tokenizer"].render_chats(convs)
                if len(ids) <= _WORKER["max_length"]]
    lengths = np.array([len(ids) for ids, _ in rendered], dtype=np.int32)
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(r[0] for r in rendered), dtype=np.int32, count=total)
    mask = np.fromiter(chain.from_iterable(r[1] for r in rendered), dtype=np.uint8, count=total)
    starts = np.cumsum(lengths) - lengths
    targets = mask.astype(np.int32)
    targets[starts] = 0  # a document's first token is nobody's target
    n_sup = np.add.reduceat(targets, starts).astype(np.int32) if len(lengths) else np.zeros(0, np.int32)
    return {"ids": ids, "mask": mask, "lengths": lengths, "n_sup": n_sup, "rows": len(convs), "lines": n_lines,
            "dropped": len(convs) - len(rendered), "problems": problems,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "pid": os.getpid(),
            "cpu_s": time.process_time()}


def _chunk_results(chunks, tokenizer, max_length, workers):
    """_tokenize_chunk over the chunks, in order, in this process or a pool of worker processes."""
    if workers <= 1:
        _worker_init(tokenizer, max_length, pool=False)
        yield from map(_tokenize_chunk, chunks)
        return
    import concurrent.futures
    import multiprocessing
    # forkserver: workers fork from a clean server that imported vc2 once (no threads or CUDA inherited
    # from the trainer, and no ~1.6 s import of torch per worker); spawn where it does not exist
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["vc2.data"])
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                                initargs=(tokenizer, max_length)) as pool:
        pending, it = [], iter(chunks)
        for c in it:  # a bounded window of tasks: results are written in order, never all held at once
            pending.append(pool.submit(_tokenize_chunk, c))
            if len(pending) >= 3 * workers:
                yield pending.pop(0).result()
        for p in pending:
            yield p.result()


def _build_cache(files, tokenizer, max_length, final: Path, key: dict, workers, strict, log):
    from tqdm import tqdm
    t0 = time.time()
    chunks = _plan_chunks(files)
    total_bytes = sum(os.stat(f).st_size for f in files)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = 1 if total_bytes < IN_PROCESS_BYTES else max(1, min(workers, len(chunks)))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"data: tokenizing {len(files)} file(s), {total_bytes / 2**20:.0f} MiB, with {workers} process(es) into {final}")
    counts = {"rows": 0, "skipped": 0, "dropped_too_long": 0, "docs": 0, "tokens": 0, "supervised": 0}
    problems, lines_before, current_file, worker_rss, cpu = [], 0, None, 0, {}
    out = {name: open(tmp / name, "wb") for name in ("tokens.i32", "mask.u8", "lengths.i32", "n_sup.i32")}
    try:
        bar = tqdm(total=len(chunks), desc="tokenize", unit="chunk", disable=len(chunks) < 4)
        for chunk, res in zip(chunks, _chunk_results(chunks, tokenizer, max_length, workers)):
            if chunk[0] != current_file:
                current_file, lines_before = chunk[0], 0
            for n, reason in res["problems"]:
                if strict:
                    raise ValueError(f"{chunk[0]}:{lines_before + n}: {reason}")
                if len(problems) < 5:
                    problems.append((chunk[0], lines_before + n, reason))
            lines_before += res["lines"]
            res["ids"].tofile(out["tokens.i32"])
            res["mask"].tofile(out["mask.u8"])
            res["lengths"].tofile(out["lengths.i32"])
            res["n_sup"].tofile(out["n_sup.i32"])
            counts["rows"] += res["rows"]
            counts["skipped"] += len(res["problems"])
            counts["dropped_too_long"] += res["dropped"]
            counts["docs"] += len(res["lengths"])
            counts["tokens"] += int(res["lengths"].sum())
            counts["supervised"] += int(res["n_sup"].sum())
            worker_rss = max(worker_rss, res["peak_rss"])
            cpu[res["pid"]] = res["cpu_s"]
            bar.update(1)
        bar.close()
    except BaseException:
        for f in out.values():
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in out.values():
        f.close()
    meta = {**counts, "problems": problems, "key": key, "workers": workers, "build_s": round(time.time() - t0, 2),
            "worker_peak_rss_gb": round(worker_rss / 2**30, 3), "worker_cpu_s": round(sum(cpu.values()), 2)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: a directory without it is incomplete
    try:
        os.rename(tmp, final)
    except OSError:  # another writer (another node on a shared file system) finished first: same content
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"data: {counts['docs']} conversations, {counts['tokens']} tokens cached in {time.time() - t0:.1f} s")
