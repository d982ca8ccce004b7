"""API models and the judge against a local OpenAI-compatible test server (loopback only, no network):
retries and what is retried, infra-error accounting per round, resume, caching, the judge's unscored
answers, and that the key is never written anywhere nor readable by other processes.

Run: python -m pytest tests/eval/test_api.py     # ~15 s
"""
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vc2.eval import api, judge as judge_mod, runner
from vc2.eval.report import spearman
from vc2.eval.tasks import Task

KEY = "sk-test-" + "3f9a1c7e5b2d4f60"


class FakeAPI:
    """A /v1/chat/completions server whose replies are scripted: `plan` pops one action per request
    ("429", "500", "400", ("sleep", s), or None = answer), then `answer(body)` gives the text."""

    def __init__(self, answer, plan=()):
        self.plan, self.answer, self.requests, self.lock = list(plan), answer, [], threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    action = outer.plan.pop(0) if outer.plan else None
                if isinstance(action, tuple):
                    time.sleep(action[1])
                    action = None
                if action in ("429", "500", "400", "401"):
                    msg = {"error": {"message": f"scripted {action}; you sent {self.headers.get('Authorization')}"}}
                    return self._send(int(action), msg, {"Retry-After": "0"} if action == "429" else {})
                text = outer.answer(body)
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})

            def _send(self, status, obj, headers={}):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def make(answer=lambda body: "ok", plan=()):
        made.append(FakeAPI(answer, plan))
        return made[-1]

    yield make
    for s in made:
        s.close()


def client(url, **kw):
    kw = {"api_key": KEY, "timeout_s": 0.5, "max_retries": 4, "backoff_s": 0.01, **kw}
    return api.ChatClient(url, "fake-model", **kw)


def test_retries_429_500_timeout_then_answers(server):
    s = server(plan=["429", "500", ("sleep", 1.5), None])
    c = client(s.url)
    reply = c.complete([{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=5)
    assert reply["text"] == "ok" and reply["finish_reason"] == "stop" and reply["completion_tokens"] == 7
    assert len(s.requests) == 4 and c.stats["retries"] == 3 and c.stats["failures"] == 0
    assert s.requests[0]["auth"] == f"Bearer {KEY}"


def test_other_errors_are_not_retried_and_failures_are_infra(server):
    s = server(plan=["401"])
    c = client(s.url)
    out = c.complete([{"role": "user", "content": "hi"}])
    assert isinstance(out, api.InfraFailure) and "HTTP 401" in out.message and len(s.requests) == 1
    assert KEY not in out.message and "<redacted>" in out.message  # the server echoed the key back
    s2 = server(plan=["500"] * 10)
    c2 = client(s2.url, max_retries=2)
    out = c2.complete([{"role": "user", "content": "hi"}])
    assert isinstance(out, api.InfraFailure) and "after 3 attempt(s)" in out.message and len(s2.requests) == 3


def test_cache_answers_the_same_request_again_and_across_clients(server, tmp_path):
    s = server(answer=lambda body: f"answer to {body['messages'][-1]['content']}")
    cache = tmp_path / "cache.jsonl"
    c = client(s.url, cache_path=cache)
    msgs = [{"role": "user", "content": "q1"}]
    assert c.complete(msgs, temperature=0.0)["text"] == "answer to q1"
    assert c.complete(msgs, temperature=0.0)["text"] == "answer to q1"
    assert len(s.requests) == 1 and c.stats["cache_hits"] == 1
    c.complete(msgs, temperature=0.5)  # other parameters: another request
    assert len(s.requests) == 2
    again = client(s.url, cache_path=cache)
    assert again.complete(msgs, temperature=0.0)["text"] == "answer to q1" and len(s.requests) == 2
    assert KEY not in cache.read_text()


def test_protocol_sampling_in_every_request(server):
    s = server()
    src = api.APIAnswers(client(s.url), max_tokens=3000, seed=11, concurrency=2)
    answers = src([[{"role": "user", "content": f"c{i}"}] for i in range(3)])
    assert [a.text for a in answers] == ["ok"] * 3 and answers[0].stop == "eos" and answers[0].new_tokens == 7
    for r in s.requests:
        b = r["body"]
        assert (b["temperature"], b["top_p"], b["max_tokens"], b["seed"]) == (0.0, 1.0, 3000, 11)
        assert (b["repetition_penalty"], b["top_k"]) == (1.0, -1)  # vLLM/SGLang would otherwise apply generation_config
    assert "extra_body" not in api.sampling_params(api.OPENAI_BASE, 3000, 0)  # OpenAI rejects those fields
    assert api.resolve_endpoint("openai:gpt-4.1", None) == (api.OPENAI_BASE, "gpt-4.1")


def test_take_secret_leaves_no_trace_in_proc_environ(tmp_path):
    """A process that took its key: neither it (/proc/self/environ) nor a child reading its parent's
    /proc entry (what a plain-mode sandboxed program could do as the same user) finds the value."""
    code = (f"import os, subprocess, sys\nfrom vc2.eval import api\n"
            f"assert open('/proc/self/environ', 'rb').read().count(b'{KEY}') == 1\n"
            f"v = api.take_secret('VC2_TEST_KEY')\nassert v == '{KEY}', v\n"
            f"print(open('/proc/self/environ', 'rb').read().count(b'{KEY}'))\n"
            f"print(subprocess.run([sys.executable, '-c', 'import os; print(open(f\"/proc/{{os.getppid()}}/environ\", \"rb\")"
            f".read().count(b\"{KEY}\"), os.environ.get(\"VC2_TEST_KEY\"))'], capture_output=True, text=True).stdout)\n")
    env = {**os.environ, "VC2_TEST_KEY": KEY, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0", "None"], r.stdout


def test_parse_score_is_the_originals_rule():
    assert judge_mod.parse_score("85") == 85
    assert judge_mod.parse_score("looks close.\n[FINAL SCORE]: 72") == 72
    assert judge_mod.parse_score("[FINAL SCORE]: 10 ... on reflection [FINAL SCORE]:90") == 90  # the last one
    assert judge_mod.parse_score("[FINAL SCORE] 40") == 40
    assert judge_mod.parse_score("I would say eighty") is None
    assert judge_mod.parse_score("[FINAL SCORE]: 250") is None and judge_mod.parse_score("") is None


def test_spearman_matches_scipy_on_random_data():
    from scipy.stats import spearmanr
    rng = np.random.default_rng()
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)  # ties on one side
    assert spearman(list(x), list(y)) == pytest.approx(spearmanr(x, y).statistic, abs=1e-4)
    assert spearman([1, 2], [3, 4]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


# ---------------------------------------------------------------------------------------------------
# the runner with an API answer source and a judge, with a stand-in executor

TASKS = [Task(language="svg", id=f"svg_{i}", description=f"draw thing {i}", style="plain") for i in range(4)]


def png(path, seed):
    rng = np.random.default_rng(seed)
    a = np.full((60, 80, 3), 255, np.uint8)
    a[10:50, 10:70] = rng.integers(0, 200, 3)
    Image.fromarray(a).save(path)
    return path


class FakeExecutor:
    """Code containing GOOD passes with an image (the reference picture; task 3 another colour), else fails."""

    def __call__(self, language, code, workdir, data_csv=None, sandbox="auto", timeout_s=None, warm=None):
        if "GOOD" in code:
            seed = 3 if "GOOD 3" in code else 0
            return SimpleNamespace(status="pass", error="", image=png(Path(workdir) / "out.png", seed), sandbox="fake")
        return SimpleNamespace(status="runtime_error", error="Boom", image=None, sandbox="fake")


def task_answer(body, odd_image_url):
    """svg_i is right at attempt i; judges say 80, except about task 3's image (no score in the reply)."""
    msgs = body["messages"]
    if msgs[0]["role"] == "system":  # a judge request
        assert "```" not in msgs[0]["content"] and "plotting" not in msgs[0]["content"].lower()
        images = [c for c in msgs[1]["content"] if c["type"] == "image_url"]
        assert all(c["image_url"]["url"].startswith("data:image/png;base64,") for c in images)
        if images[0]["image_url"]["url"] == odd_image_url:  # the generated image comes first
            return "I cannot tell."  # unparsed: must be unscored, not 0
        return "Fine.\n[FINAL SCORE]: 80"
    i = int(msgs[0]["content"].split("draw thing ")[1][0])
    attempt = sum(m["role"] == "assistant" for m in msgs)
    return f"```svg\n{'GOOD' if attempt >= i else 'bad'} {i}\n```"


def last_fid(rows, tid):
    return [r["fidelity"] for r in rows if r["id"] == tid and r["outcome"] == "pass"][-1]


def test_runner_api_source_infra_per_round_resume_and_judge(server, tmp_path, monkeypatch):
    monkeypatch.setattr(runner.executors, "run", FakeExecutor())
    monkeypatch.setattr(runner.executors, "describe_sandbox", lambda mode, names=None: {"sandbox": "fake"})
    for t in TASKS:
        t.reference_image = png(tmp_path / f"{t.id}_ref.png", 0)
    fail_svg2_round1 = {"left": 10}  # svg_2's round-1 request fails every retry; later requests are fine

    odd = judge_mod.data_url(png(tmp_path / "odd.png", 3))

    def answer(body):
        return task_answer(body, odd)

    s = server(answer=answer)
    orig = s.httpd.RequestHandlerClass.do_POST

    def do_post(handler):  # scripted failure for one conversation: 500 until `left` runs out
        n = int(handler.headers["Content-Length"])
        raw = handler.rfile.read(n)
        body = json.loads(raw)
        m = body["messages"]
        if m[0]["role"] == "user" and "draw thing 2" in m[0]["content"] and len(m) == 3 and fail_svg2_round1["left"] > 0:
            fail_svg2_round1["left"] -= 1
            handler._send(500, {"error": {"message": "scripted outage"}})
            return
        import io
        handler.rfile = io.BytesIO(raw)
        orig(handler)

    s.httpd.RequestHandlerClass.do_POST = do_post
    out = tmp_path / "out"
    src = api.APIAnswers(client(s.url, max_retries=1), seed=0, concurrency=2)
    jc = api.ChatClient(s.url, "fake-judge", api_key=KEY, max_retries=1, backoff_s=0.01, cache_path=out / "judge_cache.jsonl")
    out.mkdir()
    summary = runner.evaluate(TASKS, src, out, rounds=3, workers=2, judge=judge_mod.Judge(jc))
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    svg = summary["languages"]["svg"]
    # svg_0 passes in r0, svg_1 in r1; svg_2's r1 request failed (infra: not scored in r1..r3, its r0
    # failure still counts in r0); svg_3 passes in r3
    assert svg["infra_errors_by_round"] == [0, 1, 1, 1] and svg["scored_by_round"] == [4, 3, 3, 3]
    assert svg["passed_by_round"] == [1, 2, 2, 3] and svg["pass_rate_by_round"][0] == 25.0
    infra_rows = [r for r in rows if r["outcome"] == "infra_error"]
    assert len(infra_rows) == 1 and "HTTP 500" in infra_rows[0]["error"] and infra_rows[0]["key"] == "svg/svg_2"
    # fidelity on every non-infra attempt: the passing images are the reference picture
    for r in rows:
        if r["outcome"] != "infra_error":
            assert r["fidelity"] == (0.0 if r["outcome"] != "pass" else 1.0 if r["id"] != "svg_3" else r["fidelity"])
    assert 0 < last_fid(rows, "svg_3") < 1
    # judge: passing attempts judged; svg_3's answers unparsed -> unscored, counted, not 0
    last = runner.read_results(out / "results.jsonl")
    judged = {k: r["judge"] for k, r in last.items() if r.get("judge")}
    assert set(judged) == {("svg/svg_0", 0), ("svg/svg_1", 1), ("svg/svg_3", 3)}
    assert judged[("svg/svg_3", 3)]["vis"] == {"score": None, "status": "unparsed", "detail": "I cannot tell."}
    j3 = svg["by_round"][3]["judge"]["vis"]
    assert j3["unscored"] == 1 and j3["passing"]["n"] == 2 and j3["passing"]["mean"] == 80
    assert j3["all"]["n"] == 2 and j3["all"]["mean"] == 80  # svg_2 is infra at r3: in neither view
    j0 = svg["by_round"][0]["judge"]["vis"]
    assert j0["all"]["n"] == 4 and j0["all"]["mean"] == 20 and j0["all"]["bad"] == 0.75  # failures count 0
    report = (out / "report.md").read_text()
    assert "Judge scores after exec pass (init)" in report and "Infra errors per round" in report
    html = (out / "report.html").read_text()
    assert html.index("<h2>Tasks</h2>") < html.index('data-outcome="infra"') < html.index('data-outcome="pass"')

    # resume (the outage is over): only the infra attempt is asked again, then svg_2 goes on; nothing else
    fail_svg2_round1["left"] = 0
    n_before = len(s.requests)
    summary = runner.evaluate(TASKS, api.APIAnswers(client(s.url, max_retries=1), seed=0, concurrency=2), out,
                              rounds=3, workers=2, resume=True,
                              judge=judge_mod.Judge(api.ChatClient(s.url, "fake-judge", api_key=KEY, max_retries=1,
                                                                   cache_path=out / "judge_cache.jsonl")))
    new = s.requests[n_before:]
    assert all(r["body"]["messages"][0]["role"] == "user" and "draw thing 2" in r["body"]["messages"][0]["content"]
               for r in new if r["body"]["model"] == "fake-model")
    assert summary["languages"]["svg"]["passed_by_round"] == [1, 2, 3, 4]
    assert summary["languages"]["svg"]["infra_errors_by_round"] == [0, 0, 0, 0]
    judge_calls = [r for r in new if r["body"]["model"] == "fake-judge"]
    # svg_2's new pass: its task judgement is new; its vis judgement (same two images as svg_0's) comes from the
    # cache, and the attempts judged before are not asked again
    assert len(judge_calls) == 1 and "draw thing 2" in judge_calls[0]["body"]["messages"][1]["content"][0]["text"]
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".md", ".html"):
            assert KEY not in f.read_text(), f
