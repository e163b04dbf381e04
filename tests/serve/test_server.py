"""The OpenAI-compatible server on the real SmolLM2 (loopback only): outputs, parameters, errors, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(smollm2_bf16):
    from mxmix.serve.server import ApiServer, load_backend

    backend = load_backend(str(smollm2_bf16))
    srv = ApiServer(backend, "127.0.0.1", 0, max_body=64 * 1024)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    yield srv
    srv.stop()
    t.join(10)
    srv.server_close()


def call(srv, path, body=None, method=None, raw: bytes | None = None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(srv.url + path, data=data, method=method or ("GET" if data is None else "POST"))
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


PROMPT = "The three primary colours are"


def test_models_and_health(server) -> None:
    code, doc = call(server, "/v1/models")
    assert code == 200 and doc["data"][0]["id"] == server.backend.name
    assert call(server, "/health") == (200, {"status": "ok"})


def test_greedy_completion_matches_transformers_generate(server) -> None:
    import torch

    code, doc = call(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    assert code == 200
    choice = doc["choices"][0]
    tok, model = server.backend.tokenizer, server.backend.model
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    gen = out[0, len(ids):].tolist()
    eos = server.backend.eos_ids
    if any(t in eos for t in gen):
        gen = gen[: min(i for i, t in enumerate(gen) if t in eos)]
    assert choice["text"] == tok.decode(gen, skip_special_tokens=True)
    assert doc["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(gen),
                            "total_tokens": len(ids) + len(gen)}
    assert choice["finish_reason"] == ("length" if len(gen) == 12 else "stop")


def test_stop_strings_cut_the_text(server) -> None:
    _, full = call(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    text = full["choices"][0]["text"]
    stop = text.strip()[3:6]
    assert stop and stop in text
    _, cut = call(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                                              "stop": ["<never>", stop]})
    c = cut["choices"][0]
    assert c["text"] == text[: text.index(stop)] and c["finish_reason"] == "stop"


def test_sampling_parameters(server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 7}
    a = call(server, "/v1/completions", body)[1]["choices"][0]["text"]
    b = call(server, "/v1/completions", body)[1]["choices"][0]["text"]
    assert a == b  # same seed, same sample
    greedy = call(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0})[1]
    nucleus = call(server, "/v1/completions", {**body, "top_p": 1e-6})[1]  # only the top token survives
    assert nucleus["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_chat_completion_uses_the_template(server) -> None:
    msgs = [{"role": "user", "content": "Name a colour."}]
    code, doc = call(server, "/v1/chat/completions", {"messages": msgs, "max_tokens": 6, "temperature": 0})
    assert code == 200 and doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"]["role"] == "assistant"
    tok = server.backend.tokenizer
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert doc["usage"]["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= doc["usage"]["completion_tokens"] <= 6


@pytest.mark.parametrize("path,body,method,status,param", [
    ("/v1/nothing", {}, "POST", 404, None),
    ("/v1/completions", None, "GET", 405, None),
    ("/v1/completions", {"prompt": "x", "temperature": 5}, "POST", 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "POST", 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "stream": True}, "POST", 400, "stream"),
    ("/v1/completions", {"prompt": 5}, "POST", 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-9"}, "POST", 404, "model"),
    ("/v1/completions", {"prompt": "x", "n": 3}, "POST", 400, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "POST", 400, "messages"),
    ("/v1/completions", {"prompt": [1] * 9000, "max_tokens": 1}, "POST", 400, "prompt"),
])
def test_errors_are_openai_json_with_status(server, path, body, method, status, param) -> None:
    code, doc = call(server, path, body, method=method)
    assert code == status
    assert set(doc["error"]) >= {"message", "type", "param", "code"} and doc["error"]["message"]
    assert doc["error"]["param"] == param


def test_bad_json_and_oversized_bodies(server) -> None:
    code, doc = call(server, "/v1/completions", raw=b"{not json")
    assert code == 400 and "JSON" in doc["error"]["message"]
    big = json.dumps({"prompt": "x" * (server.max_body + 10)}).encode()
    try:
        code, doc = call(server, "/v1/completions", raw=big)
    except (ConnectionError, urllib.error.URLError):  # the server may close before reading it all
        return
    assert code == 413


def test_concurrent_requests_are_queued_and_identical(server) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
    serial = call(server, "/v1/completions", body)[1]["choices"][0]["text"]
    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda _: call(server, "/v1/completions", body)[1]["choices"][0]["text"], range(6)))
    assert texts == [serial] * 6


def test_cli_serve_prints_url_and_stops_cleanly_on_sigterm(smollm2_bf16) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mxmix.cli.main", "serve", str(smollm2_bf16), "--port", "0",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        with urllib.request.urlopen(info["url"] + "/health", timeout=30) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
