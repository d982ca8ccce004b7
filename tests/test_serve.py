"""`python -m vc2.serve` on loopback with a tiny random model: the OpenAI endpoints, streaming, batching of
concurrent requests, errors, and `run_eval.py --api-base` against it giving the in-process answers.

Run: python -m pytest tests/test_serve.py      # ~20 s
"""
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import vc2
from conftest import make_hf_model
from vc2 import serve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_eval  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("serve")
    _, path = make_hf_model(tmp, vocab_size=320, seed=3, max_position_embeddings=2048)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)
    model, tok = vc2.load_model(path), vc2.load_tokenizer(path)
    server = serve.Server(model, tok, "tiny", max_new_tokens=8, max_batch=4)
    httpd = serve.serve(server, port=0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", path, model, tok, server
    httpd.shutdown()
    httpd.server_close()


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_models_completion_stream_and_errors(served):
    url, _, model, tok, server = served
    import openai
    c = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    msgs = [{"role": "user", "content": "Draw a bar chart of sales."}]
    r = c.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=6)
    ids = tok.render_chat(msgs, add_generation_prompt=True)[0]
    [expect] = vc2.generate(model, [ids], 6, temperature=0.0, stop_ids=tok.eos_ids)
    assert r.choices[0].message.content == tok.decode(expect, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(expect)
    assert r.choices[0].finish_reason == ("length" if len(expect) == 6 else "stop")
    chunks = list(c.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=6, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    status, body = post(url + "/chat/completions", {"model": "other", "messages": msgs})
    assert status == 404 and "not served here" in body
    status, body = post(url + "/chat/completions", {"model": "tiny", "messages": []})
    assert status == 400 and "messages" in json.loads(body)["error"]["message"]
    status, _ = post(url + "/chat/completions", {"messages": msgs, "n": 2})
    assert status == 400


def test_concurrent_requests_are_batched_and_answer_as_alone(served):
    url, _, model, tok, server = served
    prompts = [f"Plot {w} please" for w in ("a line", "two bars", "a scatter of many points", "x")]
    alone = [json.loads(post(url + "/chat/completions", {"messages": [{"role": "user", "content": p}],
                                                          "temperature": 0, "max_tokens": 8})[1])
             for p in prompts]
    server.generator.max_rows = 0
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: json.loads(post(url + "/chat/completions", {
            "messages": [{"role": "user", "content": p}], "temperature": 0, "max_tokens": 8})[1]), prompts))
    assert server.generator.max_rows > 1  # at least two requests decoded in one engine step
    assert [a["choices"][0]["message"]["content"] for a in alone] == \
           [t["choices"][0]["message"]["content"] for t in together]
    # sampled: a request's answer depends on its seed, not on the requests beside it
    body = lambda p, seed: {"messages": [{"role": "user", "content": p}], "temperature": 0.9, "max_tokens": 8, "seed": seed}
    alone = [json.loads(post(url + "/chat/completions", body(p, 7))[1]) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: json.loads(post(url + "/chat/completions", body(p, 7))[1]), prompts))
    assert [a["choices"][0]["message"]["content"] for a in alone] == \
           [t["choices"][0]["message"]["content"] for t in together]
    status, text = post(url + "/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_p": 0})
    assert status == 400 and "top_p" in text


def test_run_eval_against_serve_gives_the_in_process_answers(served, tmp_path):
    url, path, _, _, _ = served
    common = ["--lang", "svg", "--limit", "2", "--rounds", "1", "--max-new-tokens", "12", "--workers", "1",
              "--batch-size", "1"]
    run_eval.main(common + ["--model", str(path), "--out", str(tmp_path / "local")])
    run_eval.main(common + ["--api-base", url, "--model", "tiny", "--api-concurrency", "1", "--out", str(tmp_path / "api")])
    rows = {}
    for side in ("local", "api"):
        rows[side] = {(r["key"], r["round"]): r for r in map(json.loads, (tmp_path / side / "results.jsonl").read_text().splitlines())}
    assert set(rows["local"]) == set(rows["api"]) and len(rows["local"]) >= 2
    for k, r in rows["local"].items():
        assert rows["api"][k]["answer"] == r["answer"] and rows["api"][k]["outcome"] == r["outcome"], k
    summary = json.loads((tmp_path / "api" / "summary.json").read_text())
    assert summary["meta"]["source"].startswith("api:tiny@http://127.0.0.1") and summary["meta"]["api"]["requests"] >= 2


def test_cli_help_lists_every_flag():
    r = subprocess.run([sys.executable, "-m", "vc2.serve", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    for flag in ("--model", "--host", "--port", "--max-batch", "127.0.0.1"):
        assert flag in r.stdout
