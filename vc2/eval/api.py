"""OpenAI-compatible chat completions for the evaluator: API models as the answer source, and the judge's transport.

    from vc2.eval import api
    key = api.take_secret("OPENAI_API_KEY")          # out of the environment (and of /proc/<pid>/environ)
    client = api.ChatClient("http://127.0.0.1:8000/v1", "my-model", api_key=key, cache_path="out/api_cache.jsonl")
    reply = client.complete([{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=64)
    # -> {"text", "finish_reason", "prompt_tokens", "completion_tokens"}, or an api.InfraFailure when the
    #    request failed after its retries

The request goes to `/v1/chat/completions`, so the *server* applies the model's own chat template
(vLLM, SGLang, `python -m vc2.serve`, proprietary APIs all do). What a client must decide, and decides here:
- retries: 429, 5xx, timeouts and dropped connections are retried with exponential backoff and
  jitter (Retry-After honoured, capped); any other error (400, 401, 404...) is not, since it would
  fail the same way again. A request that still fails is an InfraFailure: the runner records it as
  an infra error (not the model's failure, not scored, retried by --resume), never as an empty answer;
- a per-request timeout, and at most `concurrency` requests in flight (the server batches them);
- a cache keyed by (model, messages, sampling parameters), appended to a JSONL file as answers
  arrive, so a killed or resumed run never pays for the same request twice;
- the key is taken out of os.environ (take_secret), kept only in the client object, and redacted from
  error messages; it is never written to results, logs or reports.
The official `openai` package does the HTTP (`pip install -e ".[api]"`); its own retries are turned off
so that the rule above is the only one.
"""
import hashlib
import json
import os
import random
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OPENAI_BASE = "https://api.openai.com/v1"
MAX_BACKOFF_S = 60.0


class InfraFailure:
    """Returned instead of an answer when the request failed for reasons that are not the model's."""

    def __init__(self, message):
        self.message = message

    def __repr__(self):
        return f"InfraFailure({self.message!r})"


def take_secret(name):
    """Remove environment variable `name` from this process and return its value (None if unset).

    os.environ.pop keeps it from child processes; /proc/<pid>/environ, however, shows the block the
    process was started with, which unsetenv does not touch, and a sandboxed program running as the
    same user (plain mode, not root) could read it there. So the value's bytes in that block are
    overwritten too (through /proc/self/mem; Linux only, best effort, warned about when it fails).
    """
    value = os.environ.pop(name, None)
    if not value:
        return value
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3 of proc(5)
        start, end = int(fields[47]), int(fields[48])     # env_start, env_end (fields 50, 51)
        needle = f"{name}={value}".encode()
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            block = mem.read(end - start)
            i = block.find(needle)
            while i >= 0:
                mem.seek(start + i + len(name) + 1)
                mem.write(b"x" * (len(needle) - len(name) - 1))
                i = block.find(needle, i + 1)
    except (OSError, ValueError, IndexError) as e:
        warnings.warn(f"could not scrub ${name} from /proc/self/environ ({e}); in plain sandbox mode as a "
                      "non-root user, sandboxed programs may be able to read it")
    return value


def _retryable(e, openai):
    if isinstance(e, openai.APIStatusError):
        return e.status_code == 429 or e.status_code >= 500
    return isinstance(e, (openai.APITimeoutError, openai.APIConnectionError))


def _retry_after(e):
    try:
        return float(e.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


class ChatClient:
    """One OpenAI-compatible endpoint and model; thread-safe. See the module docstring."""

    def __init__(self, base_url, model, api_key=None, timeout_s=300.0, max_retries=6, backoff_s=1.0,
                 concurrency=8, cache_path=None):
        try:
            import openai
        except ImportError:
            raise ValueError("API models and the judge need the openai package: pip install -e \".[api]\"") from None
        self._openai = openai
        self.base_url, self.model = base_url.rstrip("/"), model
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self._key = api_key
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s)
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "cache_hits": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache = {}
        if self.cache_path and self.cache_path.is_file():
            for line in self.cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a kill

    def _redact(self, text):
        return text.replace(self._key, "<redacted>") if self._key else text

    def key_of(self, messages, params):
        blob = json.dumps({"model": self.model, "messages": messages, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete(self, messages, **params):
        """The reply to one chat ({"text", "finish_reason", "prompt_tokens", "completion_tokens"}) or
        InfraFailure. `params` go into the request as they are (temperature, top_p, max_tokens, seed, extra_body...)."""
        key = self.key_of(messages, params)
        with self._lock:
            if key in self._cache:
                self.stats["cache_hits"] += 1
                return self._cache[key]
        last = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                wait = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                wait = max(wait, min(_retry_after(last) or 0.0, MAX_BACKOFF_S))
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(wait)
            try:
                with self._slots:
                    with self._lock:
                        self.stats["requests"] += 1
                    resp = self._client.chat.completions.create(model=self.model, messages=messages, **params)
                choice = resp.choices[0]
                usage = getattr(resp, "usage", None)
                reply = {"text": choice.message.content or "", "finish_reason": choice.finish_reason,
                         "prompt_tokens": getattr(usage, "prompt_tokens", None),
                         "completion_tokens": getattr(usage, "completion_tokens", None)}
            except self._openai.OpenAIError as e:
                last = e
                if _retryable(e, self._openai):
                    continue
                break
            with self._lock:
                self.stats["prompt_tokens"] += reply["prompt_tokens"] or 0
                self.stats["completion_tokens"] += reply["completion_tokens"] or 0
                self._cache[key] = reply
                if self.cache_path:
                    with open(self.cache_path, "a") as f:
                        f.write(json.dumps({"key": key, "reply": reply}) + "\n")
            return reply
        with self._lock:
            self.stats["failures"] += 1
        status = getattr(last, "status_code", None)
        what = f"HTTP {status}" if status else type(last).__name__
        tries = attempt + 1
        return InfraFailure(self._redact(f"{self.base_url} model {self.model}: {what} after {tries} attempt(s): "
                                         f"{str(last)[:500]}"))


def sampling_params(base_url, max_tokens, seed, temperature=0.0, top_p=1.0):
    """The protocol's explicit sampling for every request. Servers such as vLLM and SGLang apply the
    model's generation_config.json unless told otherwise, so non-OpenAI endpoints also get
    repetition_penalty 1 and top_k off (-1) through the extra body; OpenAI itself rejects those fields."""
    params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
    if not base_url.rstrip("/").startswith(OPENAI_BASE):
        params["extra_body"] = {"repetition_penalty": 1.0, "top_k": -1}
    return params


class APIAnswers:
    """Answer source for the runner: each conversation becomes one chat request, `concurrency` at a time.

    The seed is fixed per run (not per batch, as for a local model), so a resumed run asks the very
    same requests and the cache answers them."""

    def __init__(self, client: ChatClient, max_tokens=3000, seed=0, concurrency=8):
        self.client, self.concurrency = client, concurrency
        self.params = sampling_params(client.base_url, max_tokens, seed)
        self.name = f"api:{client.model}@{client.base_url}"
        self.batch_size = 4 * concurrency  # enough requests in flight while earlier ones execute

    def __call__(self, conversations, seed=None, progress=None):
        """One runner.Answer per conversation, or an InfraFailure where the request failed."""
        from vc2.eval.runner import Answer

        def one(j):
            if progress:
                progress.start(j)
            reply = self.client.complete(conversations[j], **self.params)
            if progress:
                progress.done(j)
            if isinstance(reply, InfraFailure):
                return reply
            stop = {"stop": "eos", "length": "budget"}.get(reply["finish_reason"], reply["finish_reason"])
            return Answer(reply["text"], stop, reply["prompt_tokens"], reply["completion_tokens"])

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, range(len(conversations))))


def resolve_endpoint(model, api_base):
    """`openai:gpt-4.1` -> (OpenAI's endpoint, 'gpt-4.1'); otherwise (api_base, model)."""
    if model.startswith("openai:"):
        return api_base or OPENAI_BASE, model[len("openai:"):]
    return api_base, model
