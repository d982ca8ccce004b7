"""Data-parallel evaluation: 2 gloo ranks give the same results as 1 process, rank 0 gathers every row
and image without a shared filesystem, and --resume works after the number of ranks changes.

    python -m pytest tests/eval/test_data_parallel.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vc2.eval import runner
from vc2.eval.tasks import Task

ROOT = Path(__file__).resolve().parents[2]
TASKS = [Task(language=lang, id=f"{lang}_{i}", description=f"draw thing {i}", style="plain", vis_cate="Bars")
         for lang in ("svg", "python") for i in range(5)]
TIMING = ("gen_s", "exec_s")


def fake_run(language, code, workdir, data_csv=None, sandbox="auto", timeout_s=None, warm=None):
    """Passes code containing 'GOOD' (and writes an image: the gather must carry it); else a runtime error."""
    if "GOOD" in code:
        img = Path(workdir) / "out.png"
        img.write_bytes(b"\x89PNG " + code.encode())
        return SimpleNamespace(status="pass", error="", image=img, sandbox="fake")
    return SimpleNamespace(status="runtime_error", error=f"Boom in {code}", image=None, sandbox="fake")


class Source:
    """Task i gets it right at attempt i (0-based)."""
    name, batch_size, max_new_tokens = "fake-model", 3, 8

    def __call__(self, conversations, seed, progress=None):
        out = []
        for conv in conversations:
            attempt = sum(m["role"] == "assistant" for m in conv)
            i = int(conv[0]["content"].split("draw thing ")[1][0])
            out.append(runner.Answer(f"```\n{'GOOD' if attempt >= i else 'bad'} {i} attempt {attempt}\n```", "eos", 5, 3))
        return out


def _fakes(mp=None):
    """The fake executor; `mp` (a MonkeyPatch) restores the real one afterwards. Spawned ranks are
    processes of their own and patch for their whole life."""
    set_ = mp.setattr if mp else setattr
    set_(runner.executors, "run", fake_run)
    set_(runner.executors, "describe_sandbox", lambda mode, names=None: {"sandbox": "fake"})


def _rank(rank, world, init_file, out_dirs, rounds, resume):
    _fakes()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        runner.evaluate(TASKS, Source(), out_dirs[rank], rounds=rounds, workers=2, resume=resume, warm=False)
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, out_dirs, rounds, resume=False):
    init = tmp_path / f"init-{len(list(tmp_path.glob('init-*')))}"
    mp.spawn(_rank, args=(len(out_dirs), str(init), [str(d) for d in out_dirs], rounds, resume), nprocs=len(out_dirs))


def rows(out_dir):
    return sorted((json.dumps({k: v for k, v in json.loads(line).items() if k not in TIMING}, sort_keys=True)
                   for line in (Path(out_dir) / "results.jsonl").read_text().splitlines()))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as mp:  # later test files must get the real executors back
        _fakes(mp)
        runner.evaluate(TASKS, Source(), out, rounds=3, workers=2, warm=False)
    return out


def test_two_ranks_equal_one_process_without_a_shared_filesystem(tmp_path, single):
    a, b = tmp_path / "rank0", tmp_path / "rank1"  # each rank writes only its own directory
    run_ranks(tmp_path, [a, b], rounds=3)
    assert rows(a) == rows(single) and len(rows(a)) == 28  # 1+2+3+4+4 attempts per language
    assert not (b / "results.jsonl").exists() and (b / "results.rank1.jsonl").is_file()
    keys = [{json.loads(line)["key"] for line in (d / f"results.rank{r}.jsonl").read_text().splitlines()}
            for r, d in ((0, a), (1, b))]
    assert keys[0] and keys[1] and not keys[0] & keys[1]  # the tasks were split, not repeated
    images = sorted(p.relative_to(a) for p in (a / "images").rglob("*.png"))
    assert images == sorted(p.relative_to(single) for p in (single / "images").rglob("*.png")) and len(images) == 8
    assert any(not (b / p).exists() for p in images)  # some came from rank 1 over the process group
    assert json.loads((a / "summary.json").read_text())["overall"] == json.loads((single / "summary.json").read_text())["overall"]


def test_resume_after_the_number_of_ranks_changes(tmp_path, single, monkeypatch):
    a, b = tmp_path / "rank0", tmp_path / "rank1"
    run_ranks(tmp_path, [a, b], rounds=1)  # 2 ranks, first two rounds
    _fakes(monkeypatch)
    runner.evaluate(TASKS, Source(), a, rounds=3, workers=2, resume=True, warm=False)  # then 1 process
    assert rows(a) == rows(single)
    c, d = tmp_path / "c0", tmp_path / "c1"
    runner.evaluate(TASKS, Source(), c, rounds=0, workers=2, warm=False)  # 1 process, round 0
    run_ranks(tmp_path, [c, d], rounds=3, resume=True)                      # then 2 ranks
    assert rows(c) == rows(single)


def test_torchrun_run_eval_two_ranks_equal_one_process(tmp_path, tokenizer_dir):
    """The real path: torchrun, the engine, the SVG renderer, a tiny random model; greedy, so the
    answers cannot depend on how the tasks were split."""
    import vc2
    from vc2.config import PRESETS
    from vc2.model import Transformer
    model = Transformer(PRESETS["debug"]).init_weights(seed=0, std=0.2)
    model_dir = vc2.save_model(model, tmp_path / "tiny", tokenizer_dir=tokenizer_dir)
    common = ["run_eval.py", "--model", str(model_dir), "--lang", "svg", "--limit", "4", "--rounds", "1",
              "--max-new-tokens", "12", "--no-warm", "--batch-size", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    def go(cmd, out, *extra):
        p = subprocess.run(cmd + common + ["--out", str(out), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode in (0, 3), p.stderr[-3000:]  # 3: infra errors (a renderer missing) are reported, not raised
        return p
    go([sys.executable], tmp_path / "one")
    go(torchrun, tmp_path / "two")
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
    assert {p.name for p in (tmp_path / "two").glob("results*.jsonl")} == {"results.jsonl", "results.rank0.jsonl",
                                                                          "results.rank1.jsonl"}
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["meta"]["ranks"] == 2 and summary["overall"] == json.loads((tmp_path / "one" / "summary.json").read_text())["overall"]


def test_node_tasks_scale_the_uid_wide_process_limit_not_the_cgroup_one(monkeypatch):
    from vc2.eval import sandbox as sb
    monkeypatch.setattr(sb, "NODE_TASKS", 1)
    limits = sb.Limits(timeout_s=10, nproc=512)
    one = sb._rlimits(limits, cgroup=None)
    sb.set_node_tasks(6)  # e.g. 3 workers x 2 ranks on this machine
    six = sb._rlimits(limits, cgroup=None)
    assert (one["nproc"], six["nproc"]) == (512, 6 * 512)  # RLIMIT_NPROC counts all the uid's processes
    assert {k: v for k, v in six.items() if k != "nproc"} == {k: v for k, v in one.items() if k != "nproc"}
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    with_cgroup = sb._rlimits(limits, cgroup=object())["nproc"]  # pids.max binds the tree instead
    assert with_cgroup == (None if hard == resource.RLIM_INFINITY else hard)
