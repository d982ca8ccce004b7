"""`python -m vc2.serve --model DIR|NAME`: an OpenAI-compatible server over vc2's own sampler.

    python -m vc2.serve --model smollm2-135m --port 8000             # the embedded CPU demo model
    python -m vc2.serve --model runs/sft/hf --dtype bfloat16 --device cuda
    python run_eval.py --api-base http://127.0.0.1:8000/v1 --model smollm2-135m --lang svg

Endpoints: GET /v1/models, POST /v1/chat/completions (messages with text content; temperature,
top_p, top_k, repetition_penalty, max_tokens / max_completion_tokens, seed, stop, stream). The chat
template is the checkpoint's (vc2.tokenizer.render_chat), so a fine-tuned model is asked exactly as in
training, by any OpenAI client. Listens on 127.0.0.1 unless --host says otherwise: there is no
authentication, so do not expose it.

Batching: every request goes straight into vc2's generation engine (vc2/engine.py), which one thread
steps: up to --max-batch requests decode together, each with its own sampling settings, stop ids, budget
and seed, and a finished request's slot takes the next waiting one at once (continuous batching; greedy
requests use exact prompt lookup). Tokens stream as the engine accepts them. Limits: n=1 only; `stop`
strings cut the text after generation (the budget is still spent); greedy answers equal the in-process
runner's and sampled ones depend only on their seed, not on which requests ran beside them
(tests/test_serve.py).
"""
import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import vc2
from vc2.engine import Engine


class RequestError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class EngineLoop:
    """The engine, stepped by one thread (the model is not thread-safe); any thread may submit."""

    def __init__(self, model, tokenizer, slots=8):
        self.model, self.tok, self.slots = model, tokenizer, slots
        self.engine = Engine(model, slots=slots)
        self.max_rows = 0  # the most requests decoding at once so far (tests read it)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vc2-serve-engine")
        self._thread.start()

    def generate(self, ids, params, on_token=None):
        """Token ids generated for `ids` (stop token excluded); blocks until done. RequestError(400) for
        settings the engine refuses."""
        p = dict(params)
        max_new, seed = p.pop("max_new_tokens"), p.pop("seed", None)
        stream = (lambda r, new: [on_token(t) for t in new]) if on_token else None
        try:
            req = self.engine.add_request(ids, max_new, stop_ids=self.tok.eos_ids, seed=seed or 0, on_token=stream, **p)
        except ValueError as e:
            raise RequestError(400, str(e)) from None
        self._wake.set()
        req.done.wait()
        if getattr(req, "error", None):
            raise req.error
        return req.out

    def _loop(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            while self.engine.has_work():
                try:
                    self.engine.step()
                except Exception as e:  # fail what was in flight, start a fresh engine: the server lives on
                    failed, self.engine = self.engine, Engine(self.model, slots=self.slots)
                    with failed.inbox_lock:
                        pending = list(failed.running) + list(failed.waiting) + list(failed.inbox)
                    for r in pending:
                        r.error = e
                        r.done.set()
                    break
                self.max_rows = max(self.max_rows, len(self.engine.running))


def _text_of(content, i):
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" for c in content):
        return "".join(c.get("text", "") for c in content)
    raise RequestError(400, f"messages[{i}].content: only text content is supported")


class Server:
    """The request logic, independent of HTTP (tests call it directly too)."""

    def __init__(self, model, tokenizer, name, max_new_tokens=1024, max_batch=8):
        self.model, self.tok, self.name, self.max_new_tokens = model, tokenizer, name, max_new_tokens
        self.generator = EngineLoop(model, tokenizer, max_batch)
        self.context = getattr(model.config, "max_seq_len", None) or getattr(model.config, "max_position_embeddings", None)

    def models(self):
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "vc2"}]}

    def prepare(self, body):
        """Validate a chat request -> (prompt ids, generation params, stop strings)."""
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        if body.get("model") not in (None, self.name):
            raise RequestError(404, f"model {body.get('model')!r} is not served here (this server has {self.name!r})")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError(400, "'messages' must be a non-empty list")
        messages = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise RequestError(400, f"messages[{i}]: needs a role of system, user or assistant")
            messages.append({"role": m["role"], "content": _text_of(m.get("content"), i)})
        if body.get("n", 1) != 1:
            raise RequestError(400, "only n=1 is supported")
        ids = self.tok.render_chat(messages, add_generation_prompt=True)[0]
        max_new = body.get("max_completion_tokens") or body.get("max_tokens") or self.max_new_tokens
        if not isinstance(max_new, int) or max_new < 1:
            raise RequestError(400, "max_tokens must be a positive integer")
        if self.context and len(ids) + max_new > self.context:
            max_new = self.context - len(ids)
            if max_new < 1:
                raise RequestError(400, f"the prompt has {len(ids)} tokens; the model's context is {self.context}")
        params = {"max_new_tokens": max_new}
        for k in ("temperature", "top_p", "top_k", "repetition_penalty"):
            v = body.get(k)
            if v is not None:
                if not isinstance(v, (int, float)):
                    raise RequestError(400, f"{k} must be a number")
                params[k] = v
        if params.get("top_k") == -1:  # the vLLM/SGLang spelling of "off"
            params["top_k"] = 0
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise RequestError(400, "seed must be an integer")
        params["seed"] = seed
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        return ids, params, stop

    def complete(self, body, on_text=None):
        """The response object of a chat completion; on_text(delta) streams the text as it grows."""
        ids, params, stop = self.prepare(body)
        tokens, sent = [], [""]

        def on_token(t):
            tokens.append(t)
            if on_text:
                text = self.tok.decode(tokens, skip_special_tokens=True)
                if not text.endswith("\ufffd") and len(text) > len(sent[0]):  # hold back half a character
                    on_text(text[len(sent[0]):])
                    sent[0] = text

        out = self.generator.generate(ids, params, on_token if on_text else None)
        text = self.tok.decode(out, skip_special_tokens=True)
        finish = "length" if len(out) >= params["max_new_tokens"] else "stop"
        for s in stop:
            if s and s in text:
                text, finish = text[:text.index(s)], "stop"
        if on_text and len(text) > len(sent[0]) and text.startswith(sent[0]):
            on_text(text[len(sent[0]):])
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                 "finish_reason": finish}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)}}


def make_handler(server: Server, quiet=False):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        def _json(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status, message):
            kind = "invalid_request_error" if status < 500 else "server_error"
            self._json(status, {"error": {"message": message, "type": kind, "code": status}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                return self._json(200, server.models())
            self._error(404, f"no route {self.path}")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}")
            try:
                body = json.loads(raw or b"null")
            except json.JSONDecodeError as e:
                return self._error(400, f"body is not JSON: {e}")
            try:
                if isinstance(body, dict) and body.get("stream"):
                    return self._stream(body)
                self._json(200, server.complete(body))
            except RequestError as e:
                self._error(e.status, str(e))
            except Exception as e:  # noqa: BLE001 (reported to the client as a 500, the server goes on)
                self._error(500, f"{type(e).__name__}: {e}")

        def _stream(self, body):
            server.prepare(body)  # validation errors before the 200 goes out
            cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def chunk(delta, finish=None, usage=None):
                obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": server.name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                if usage:
                    obj["usage"] = usage
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            chunk({"role": "assistant", "content": ""})
            resp = server.complete(body, on_text=lambda t: chunk({"content": t}))
            chunk({}, resp["choices"][0]["finish_reason"], resp["usage"])
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def serve(server: Server, host="127.0.0.1", port=8000, quiet=False):
    """An HTTP server for `server` (not started: call .serve_forever(), or run it in a thread)."""
    httpd = ThreadingHTTPServer((host, port), make_handler(server, quiet))
    httpd.daemon_threads = True
    return httpd


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vc2.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="HF checkpoint directory or an embedded model name (smollm2-135m)")
    p.add_argument("--name", default=None, help="model id reported by /v1/models and expected in requests "
                                                "(default: --model as given)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="answer length when a request gives none (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="requests decoded together at most: the engine's slots; more wait and take a slot as soon "
                        "as one frees (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = p.parse_args(argv)
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    try:
        model = vc2.load_model(args.model, dtype=dtype, device=device)
        tok = vc2.load_tokenizer(args.model)
    except ValueError as e:
        p.error(str(e))
    server = Server(model, tok, args.name or args.model, args.max_new_tokens, args.max_batch)
    httpd = serve(server, args.host, args.port, args.quiet)
    print(f"serving {server.name} on http://{httpd.server_address[0]}:{httpd.server_address[1]}/v1", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
