"""The training-data pipeline: the token cache (contents, key, writer and waiters, malformed rows), packing
on lengths, and the fast chat rendering it relies on.

    python -m pytest tests/test_data.py
"""
import json
import threading
import time

import numpy as np
import pytest
import torch

import vc2
import vc2.data as data
from vc2.data import IGNORE, epoch_order, load_conversations, pack, pack_lengths, prepare_cache, tokenize


def conversation(i):
    """Varied synthetic rows: multi-turn corrections, a system prompt now and then, unicode, long ones."""
    msgs = [{"role": "user", "content": f"Draw chart {i} of sales per month" + " with a title" * (i % 7)},
            {"role": "assistant", "content": f"```python\nimport matplotlib.pyplot as plt\nplt.plot([{i}, 2])\n```"
                                             + "\nplt.show()" * (i % 5)}]
    if i % 4 == 0:
        msgs = [{"role": "system", "content": "Answer with code only."}] + msgs
    if i % 3 == 0:
        msgs += [{"role": "user", "content": "Error: NameError — 数字 🎨"},
                 {"role": "assistant", "content": f"Fixed:\n```python\nplt.bar([1], [{i}])\n```"}]
    return {"uuid": f"c{i}", "messages": msgs}


BAD = ['{"uuid": "no messages"}', '{not json', '{"messages": [{"role": "robot", "content": "x"}]}',
       '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}']


@pytest.fixture
def data_file(tmp_path):
    """80 conversations with 4 malformed lines and a blank line among them."""
    lines = [json.dumps(conversation(i)) for i in range(80)]
    for k, bad in enumerate(BAD):
        lines.insert(7 + 19 * k, bad)
    lines.insert(30, "")
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_render_chats_equals_render_chat(tokenizer_dir):
    tok = vc2.load_tokenizer(tokenizer_dir)
    convs = [conversation(i)["messages"] for i in range(40)] + [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\n\nstarts with newlines"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  starts with spaces"}],
        [{"role": "user", "content": "<|im_end|> in a user turn"}, {"role": "assistant", "content": "<|endoftext|>é"}],
        [{"role": "assistant", "content": "an assistant turn first"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]]
    assert tok._pieces_are_independent()  # the fast path is what is being tested
    assert tok.render_chats(convs) == [tok.render_chat(m) for m in convs]
    with pytest.raises(ValueError, match=r"messages\[0\]: unknown role 'robot'"):
        tok.render_chats([[{"role": "robot", "content": "x"}]])


def test_cache_equals_in_memory_pipeline(tokenizer_dir, data_file, tmp_path, monkeypatch):
    """Tokenized in chunks by 1 process and by a pool of 2: byte-identical caches whose rows, counts and
    malformed-row reports (file:line across chunks) equal load_conversations + tokenize + pack."""
    tok = vc2.load_tokenizer(tokenizer_dir)
    monkeypatch.setattr(data, "CHUNK_BYTES", 1500)  # many chunks
    monkeypatch.setattr(data, "IN_PROCESS_BYTES", 0)  # a worker pool even for this little data
    max_length = 200
    one = prepare_cache(data_file, tok, max_length, root=tmp_path / "c1", workers=1, log=lambda m: None)
    two = prepare_cache(data_file, tok, max_length, root=tmp_path / "c2", workers=2, log=lambda m: None)
    assert one.meta["workers"] == 1 and two.meta["workers"] == 2
    for name in ("tokens.i32", "mask.u8", "lengths.i32", "n_sup.i32"):
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name

    rows, report = load_conversations(data_file)
    docs, dropped = tokenize(rows, tok, max_length)
    assert 0 < dropped < len(rows)  # some conversations are too long and dropped, not cut
    assert (one.meta["rows"], one.meta["skipped"], one.meta["dropped_too_long"]) == (report.rows, report.skipped, dropped)
    assert one.report.problems == [(str(data_file), n, reason) for _, n, reason in report.problems]
    assert [p[1] for p in report.problems] == [8, 27, 47, 66]  # 1-based lines; the blank line (line 31) counts
    assert one.meta["tokens"] == sum(len(d[0]) for d in docs)

    packed, _ = pack(docs, max_length, seed=3)
    bins = pack_lengths(one.lengths, max_length)
    from_cache = [one.row(bins[i]) for i in epoch_order(len(bins), 3, 0)]
    assert len(from_cache) == len(packed)
    for a, b in zip(from_cache, packed):
        for k in ("input_ids", "labels", "position_ids", "cu_seqlens"):
            assert torch.equal(a[k], b[k]), k
        assert a["max_seqlen"] == int((b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).max())
    n_sup = sum(int(one.n_sup[b].sum()) for b in bins)
    assert n_sup == sum(int((r["labels"] != IGNORE).sum()) for r in packed)


def test_cache_key_and_reuse(tokenizer_dir, data_file, tmp_path):
    tok = vc2.load_tokenizer(tokenizer_dir)
    root = tmp_path / "cache"
    first = prepare_cache(data_file, tok, 200, root=root, log=lambda m: None)
    (first.path / "sentinel").write_text("")
    again = prepare_cache(data_file, tok, 200, root=root, log=lambda m: None)
    assert again.path == first.path and (again.path / "sentinel").is_file()  # reused, not rebuilt
    assert prepare_cache(data_file, tok, 300, root=root, log=lambda m: None).path != first.path  # max_length
    other = vc2.tokenizer.Tokenizer(tok.path, {"chat_template": "{{ '<|im_start|>system\\nHi<|im_end|>\\n' }}"})
    assert prepare_cache(data_file, other, 200, root=root, log=lambda m: None).path != first.path  # chat template
    time.sleep(0.01)
    data_file.write_text(data_file.read_text() + json.dumps(conversation(99)) + "\n")  # the data changed
    changed = prepare_cache(data_file, tok, 200, root=root, log=lambda m: None)
    assert changed.path != first.path and changed.meta["rows"] == first.meta["rows"] + 1
    assert not list(root.glob(".*tmp*"))  # no temporary directory left behind


def test_strict_names_the_first_bad_line(tokenizer_dir, data_file, tmp_path, monkeypatch):
    tok = vc2.load_tokenizer(tokenizer_dir)
    monkeypatch.setattr(data, "CHUNK_BYTES", 1500)
    with pytest.raises(ValueError, match=r"d\.jsonl:8: missing or empty 'messages'"):
        prepare_cache(data_file, tok, 200, root=tmp_path / "a", strict=True, log=lambda m: None)
    prepare_cache(data_file, tok, 200, root=tmp_path / "b", log=lambda m: None)  # a lenient build, then strict
    with pytest.raises(ValueError, match=r"d\.jsonl:8: missing"):
        prepare_cache(data_file, tok, 200, root=tmp_path / "b", strict=True, log=lambda m: None)


def test_other_ranks_wait_for_the_writer(tokenizer_dir, data_file, tmp_path):
    """A non-writer waits on the file system for the writer's cache, hears of its failure, or times out."""
    tok = vc2.load_tokenizer(tokenizer_dir)
    got = {}

    def waiter(root, key, timeout=60):
        try:
            got[key] = prepare_cache(data_file, tok, 200, root=root, writer=False, timeout=timeout, log=lambda m: None)
        except Exception as e:
            got[key] = e

    t = threading.Thread(target=waiter, args=(tmp_path / "ok", "ok"))
    t.start()
    time.sleep(1.0)  # the waiter is polling before the cache exists
    built = prepare_cache(data_file, tok, 200, root=tmp_path / "ok", log=lambda m: None)
    t.join(30)
    assert got["ok"].path == built.path and len(got["ok"]) == len(built)

    t = threading.Thread(target=waiter, args=(tmp_path / "bad", "bad"))
    t.start()
    time.sleep(1.0)
    with pytest.raises(ValueError):
        prepare_cache(data_file, tok, 200, root=tmp_path / "bad", strict=True, log=lambda m: None)
    t.join(30)
    assert isinstance(got["bad"], ValueError) and "writer failed" in str(got["bad"])

    waiter(tmp_path / "nobody", "nobody", timeout=1)
    assert isinstance(got["nobody"], TimeoutError)


def _scan_bins(lengths, max_length):
    """The reference: best-fit decreasing by a scan over all open bins (vc2's packing before the cache)."""
    bins = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        best = None
        for b in bins:
            if b[0] >= lengths[i] and (best is None or b[0] < best[0]):
                best = b
        if best is None:
            best = [max_length, []]
            bins.append(best)
        best[0] -= lengths[i]
        best[1].append(i)
    return [members for _, members in bins]


def test_pack_lengths_is_best_fit_decreasing():
    rng = np.random.default_rng(0)
    for trial in range(30):
        max_length = int(rng.integers(20, 2000))
        n = int(rng.integers(1, 800))
        if trial % 2:
            lengths = rng.integers(1, max_length + 1, n)
        else:
            lengths = np.minimum(max_length, rng.lognormal(3, 1, n).astype(int) + 1)
        got = pack_lengths(lengths, max_length)
        assert [b.tolist() for b in got] == _scan_bins(lengths.tolist(), max_length), trial
        assert sorted(np.concatenate(got).tolist()) == list(range(n))  # every document exactly once
        assert all(lengths[b].sum() <= max_length for b in got)
    assert pack_lengths([], 10) == []
    assert epoch_order(50, 0, 0) == epoch_order(50, 0, 0) != epoch_order(50, 0, 1)
