"""OpenAI-compatible HTTP endpoints on the standard library's ThreadingHTTPServer.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (plus ``GET /health``).
Every failure is an OpenAI-style JSON error with a meaningful status: 400 bad JSON or parameters (also
a prompt longer than the context, as SGLang answers), 404 unknown route or model, 405 wrong method,
411 no Content-Length, 413 body too large, 500 generation failure, 503 while shutting down.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mxmix.serve.backend import Backend

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_STOP = 16
MAX_PROMPTS = 64
ROUTES = {"/v1/models": ("GET",), "/v1/completions": ("POST",), "/v1/chat/completions": ("POST",),
          "/health": ("GET",)}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


# --- parameter validation (pure) -----------------------------------------------------------------

def _number(req: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = req.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not (lo <= v <= hi):
        raise ApiError(400, f"'{key}' must be a number in [{lo}, {hi}]", param=key)
    return float(v)


def sampling_params(req: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """Validate the shared OpenAI sampling fields; unsupported options are refused, not ignored."""
    for key, ok in (("n", 1), ("best_of", 1)):
        if req.get(key, ok) not in (None, ok):
            raise ApiError(400, f"'{key}' other than 1 is not supported", param=key)
    if req.get("stream"):
        raise ApiError(400, "streaming is not supported by mxmix serve", param="stream")
    if req.get("logprobs") not in (None, False, 0) or req.get("echo"):
        raise ApiError(400, "'logprobs' and 'echo' are not supported by mxmix serve", param="logprobs")
    mt = req.get("max_tokens", req.get("max_completion_tokens", default_max_tokens))
    if mt is None:
        mt = default_max_tokens
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise ApiError(400, "'max_tokens' must be a positive integer", param="max_tokens")
    stop = req.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")
    seed = req.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ApiError(400, "'seed' must be a non-negative integer", param="seed")
    return {"max_tokens": mt, "temperature": _number(req, "temperature", 1.0, 0.0, 2.0),
            "top_p": _number(req, "top_p", 1.0, 1e-9, 1.0), "stop": [s for s in stop if s], "seed": seed}


def completion_prompts(req: dict[str, Any]) -> list[str | list[int]]:
    p = req.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return [p]
    if isinstance(p, list) and 0 < len(p) <= MAX_PROMPTS and all(isinstance(s, str) for s in p):
        return list(p)
    raise ApiError(400, f"'prompt' must be a string, a list of at most {MAX_PROMPTS} strings, or token ids",
                   param="prompt")


def chat_messages(req: dict[str, Any]) -> list[dict[str, str]]:
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ApiError(400, "each message needs a 'role' (system, user, assistant) and string 'content'",
                           param="messages")
        out.append({"role": m["role"], "content": m["content"]})
    return out


# --- the HTTP layer ------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    timeout = 60  # a client that connects and goes silent cannot hold a thread (or shutdown) forever
    server: ApiServer
    server_version = "mxmix-serve"

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _send(self, status: int, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path not in ROUTES:
                raise ApiError(404, f"no route {path}", "not_found_error")
            if method not in ROUTES[path]:
                raise ApiError(405, f"{method} is not allowed on {path}", "invalid_request_error")
            if self.server.stopping.is_set():
                raise ApiError(503, "the server is shutting down", "server_error")
            if path == "/health":
                return self._send(200, {"status": "ok"})
            if path == "/v1/models":
                return self._send(200, {"object": "list", "data": [
                    {"id": self.server.backend.name, "object": "model", "created": self.server.created,
                     "owned_by": "mxmix"}]})
            req = self._read_json()
            self._check_model(req)
            if path == "/v1/completions":
                return self._send(200, self.server.complete(req))
            return self._send(200, self.server.chat(req))
        except ApiError as exc:
            self._send(exc.status, exc.body())
        except Exception as exc:  # never a traceback to the client; one line to the log
            sys.stderr.write(f"mxmix serve: internal error: {exc!r}\n")
            self._send(500, ApiError(500, f"internal error: {type(exc).__name__}", "server_error").body())

    def _read_json(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "Content-Length is required")
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if n < 0:
            raise ApiError(400, "bad Content-Length")
        if n > self.server.max_body:
            self.close_connection = True
            raise ApiError(413, f"request body of {n} bytes exceeds the {self.server.max_body}-byte limit")
        raw = self.rfile.read(n)
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "request body must be a JSON object")
        return obj

    def _check_model(self, req: dict[str, Any]) -> None:
        m = req.get("model")
        if m not in (None, "", self.server.backend.name):
            raise ApiError(404, f"model {m!r} does not exist; this server serves {self.server.backend.name!r}",
                           param="model", code="model_not_found")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")


class ApiServer(ThreadingHTTPServer):
    # Handler threads are joined on close (not killed at interpreter exit): a daemon thread torn down in
    # the middle of a torch op can abort the process. Cancellation and the per-connection timeout bound
    # the wait.
    daemon_threads = False
    block_on_close = True
    request_queue_size = 256

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 8000, *,
                 max_body: int = MAX_BODY_BYTES, default_max_tokens: int = 16, verbose: bool = False) -> None:
        super().__init__((host, port), Handler)
        self.backend = backend
        self.max_body = max_body
        self.default_max_tokens = default_max_tokens
        self.verbose = verbose
        self.created = int(time.time())
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def _run(self, prompt_ids: list[int], params: dict[str, Any]):
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        room = self.backend.max_context - len(prompt_ids)
        if room < 1:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                                f"{self.backend.max_context}", param="prompt", code="context_length_exceeded")
        if any(not 0 <= t < len(self.backend.tokenizer) for t in prompt_ids):
            raise ApiError(400, "prompt token ids out of the vocabulary", param="prompt")
        return self.backend.generate(prompt_ids, max_tokens=min(params["max_tokens"], room),
                                     temperature=params["temperature"], top_p=params["top_p"],
                                     stop=params["stop"], seed=params["seed"])

    def complete(self, req: dict[str, Any]) -> dict[str, Any]:
        params = sampling_params(req, self.default_max_tokens)
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
        for i, p in enumerate(completion_prompts(req)):
            ids = p if isinstance(p, list) else self.backend.encode(p)
            g = self._run(ids, params)
            choices.append({"index": i, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason})
            usage["prompt_tokens"] += g.prompt_tokens
            usage["completion_tokens"] += g.completion_tokens
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.backend.name, "choices": choices, "usage": usage}

    def chat(self, req: dict[str, Any]) -> dict[str, Any]:
        params = sampling_params(req, self.default_max_tokens)
        try:
            prompt = self.backend.chat_prompt(chat_messages(req))
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        g = self._run(self.backend.encode(prompt), params)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.backend.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                             "finish_reason": g.finish_reason}],
                "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                          "total_tokens": g.prompt_tokens + g.completion_tokens}}

    def stop(self) -> None:
        """Stop accepting work, cut running generations short, and leave serve_forever (any thread)."""
        self.stopping.set()
        self.backend.cancel.set()
        threading.Thread(target=self.shutdown, daemon=True).start()


def serve_until_signalled(server: ApiServer, announce: Any = None) -> None:
    """serve_forever with SIGINT/SIGTERM → clean shutdown (port released, generation cancelled)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: server.stop())
    try:
        if announce:
            announce(server)
        server.serve_forever(poll_interval=0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        server.backend.close()


def load_backend(checkpoint: str, device: str = "cpu", dtype: str = "bfloat16") -> Backend:
    """Model (mxmix.load for MXFP8/mixed, transformers for plain checkpoints) + its tokenizer."""
    from pathlib import Path

    from mxmix.eval.models import load_model, load_tokenizer

    model = load_model(checkpoint, device=device, dtype=dtype)
    tok = load_tokenizer(checkpoint)
    return Backend(model, tok, Path(checkpoint).resolve().name)
