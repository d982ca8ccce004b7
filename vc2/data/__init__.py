"""SFT data: VisCode-Multi-679K-style conversations -> packed rows for training.

    from vc2.data import load_conversations, pack
    convs, report = load_conversations("data/sample.jsonl")           # rows: {uuid, messages, language}
    docs, dropped = tokenize(convs, tokenizer, max_length=16384)     # render_chat -> (ids, labels)
    rows, efficiency = pack(docs, max_length=16384, seed=0)          # best-fit bin packing

Each packed row is one training sequence of <= max_length tokens holding several whole conversations:
  input_ids (N,), labels (N,) (-100 = not supervised), position_ids (N,) restarting at 0 per conversation,
  cu_seqlens (n_docs + 1,) int32 boundaries, so attention never crosses a conversation (vc2/model.py).
Labels are shifted *inside* each conversation: position t is trained to predict token t+1 of the same
conversation when that token is assistant content (or the <|im_end|> closing an assistant turn); the
last token of a conversation predicts nothing, so no conversation learns to predict the next one.

Policies, as in the VisCoder2 recipe: a conversation longer than max_length is dropped ("delete") and
counted, never cut. Malformed rows (no messages, unknown role, non-string content, empty assistant turn,
no assistant turn) are skipped with a count and the first offending line numbers, or rejected with
strict=True; a bad row never crashes an epoch.
"""
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

IGNORE = -100
ROLES = {"system", "user", "assistant"}


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


def iter_rows(path: Path):
    """(line_number, row or JSONDecodeError) for a .jsonl file, or (row_index + 1, row) for .parquet
    (read a batch at a time: a shard of a large dataset never has to fit in memory as Python objects)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow: pip install -e '.[data]'") from None
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                if isinstance(row.get("messages"), str):  # some exports store messages as a JSON string
                    row["messages"] = json.loads(row["messages"])
                yield n, row
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


def data_files(paths):
    """The .jsonl/.parquet files named by `paths` (files, or directories of them); ValueError if none."""
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
    """Read rows from .jsonl/.parquet files (or directories of them). Returns (rows, LoadReport)."""
    rows, report = [], LoadReport()
    for file in data_files(paths):
        for n, row in iter_rows(file):
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


def tokenize(rows, tokenizer, max_length):
    """Conversations -> documents [(ids, labels)] with labels already shifted; drops (counts) too-long ones."""
    docs, dropped = [], 0
    for row in rows:
        ids, mask = tokenizer.render_chat(row["messages"])
        if len(ids) > max_length:
            dropped += 1  # truncation_strategy "delete": never train on a cut-off answer
            continue
        labels = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        docs.append((ids, labels))
    return docs, dropped


def pack(docs, max_length, seed=0):
    """Best-fit-decreasing bin packing of documents into rows of <= max_length tokens.

    Returns (rows, efficiency): rows are dicts of tensors (see module docstring), shuffled with `seed`;
    efficiency = real tokens / (rows x max_length). Sorting longest-first then placing each document in
    the fullest row it still fits gives tight rows; the final shuffle restores a random order.
    """
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i][0]), i))
    bins = []  # [free_space, [doc indices]]
    for i in order:
        n = len(docs[i][0])
        assert n <= max_length, "tokenize() drops documents longer than max_length"
        best = None
        for b in bins:  # O(docs x bins); fine for up to ~1e5 documents per shard
            if b[0] >= n and (best is None or b[0] < best[0]):
                best = b
        if best is None:
            best = [max_length, []]
            bins.append(best)
        best[0] -= n
        best[1].append(i)
    rows = []
    for _, members in bins:
        ids, labels, pos, cu = [], [], [], [0]
        for i in members:
            d_ids, d_labels = docs[i]
            ids += d_ids
            labels += d_labels
            pos += range(len(d_ids))
            cu.append(len(ids))
        rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                     "position_ids": torch.tensor(pos), "cu_seqlens": torch.tensor(cu, dtype=torch.int32)})
    random.Random(seed).shuffle(rows)
    real = sum(len(d[0]) for d in docs)
    return rows, (real / (len(rows) * max_length) if rows else 0.0)


def shard(rows, rank, world_size):
    """Disjoint, equal-sized shards: rank r takes rows r, r+W, ...; the last len % W rows are left out so
    every rank runs the same number of steps (the caller reports how many)."""
    usable = len(rows) - len(rows) % world_size
    return rows[rank:usable:world_size]
