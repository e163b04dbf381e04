"""GSM8K protocols (SGLang, lm-eval), intervals, paired comparison, and the client against a live HTTP server."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from mxmix.errors import MxmixError
from mxmix.eval import gsm8k as g

DATA = Path(__file__).resolve().parents[1] / "data" / "gsm8k_mini.jsonl"


def test_test_file_answers_are_consistent() -> None:
    rows = g.load_jsonl(DATA)
    assert len(rows) >= 12
    for r in rows:
        label = g.sglang_extract(r.answer)
        assert label is not None and str(label) == r.answer.split("####")[-1].strip().replace(",", "")


def test_sglang_prompt_is_character_exact() -> None:
    rows = g.load_jsonl(DATA)
    reqs = g.plan_requests(rows, "sglang", 2, 3)
    assert [r.problem.row for r in reqs] == [2, 3, 4]  # shots are rows 0-1, items follow them
    expect = (f"Question: {rows[0].question}\nAnswer: {rows[0].answer}\n\n"
              f"Question: {rows[1].question}\nAnswer: {rows[1].answer}\n\n"
              f"Question: {rows[2].question}\nAnswer:")
    assert reqs[0].prompt == expect
    assert len(g.plan_requests(rows, "sglang", 5, None)) == len(rows) - 5


@pytest.mark.parametrize("text,value", [
    ("so the answer is 72.", 72), ("1,000 apples then 2,500", 2500), ("it is -7 degrees", -7),
    ("costs 3.50 dollars", 3.5), ("#### 18\nQuestion", 18), ("no digits here", None), ("ends 72.", 72),
])
def test_sglang_extraction(text: str, value) -> None:
    assert g.sglang_extract(text) == value


def test_sglang_numeric_compare() -> None:
    assert g.sglang_correct("The answer is 72.0", "... #### 72")
    assert g.sglang_correct("#### 1,000", "x #### 1000")
    assert not g.sglang_correct("no number", "#### 0")
    assert not g.sglang_correct("-5", "#### 5")


def test_lm_eval_filters_and_exact_match() -> None:
    out = "She has 5 + 3 = 8 apples.\n#### 8\n\nThen $1,200 more."
    assert g.lm_eval_strict(out) == "8"
    assert g.lm_eval_flexible(out) == "$1,200"  # last match of (-?[$0-9.,]{2,})|(-?[0-9]+)
    assert g.lm_eval_flexible("total 1,200.") == "1,200."
    assert g.lm_eval_exact_match("$1,200.", "blah #### 1200")
    assert not g.lm_eval_exact_match("72.0", "#### 72")  # string compare, unlike SGLang's numeric one
    assert g.lm_eval_strict("no hashes 42") == g.INVALID
    assert g.lm_eval_flexible("7 apples") == "7"


def test_lm_eval_plan_draws_seeded_shots_from_the_pool() -> None:
    rows = g.load_jsonl(DATA)
    a = g.plan_requests(rows, "lm-eval", 3, 4, fewshot_rows=rows)
    b = g.plan_requests(rows, "lm-eval", 3, 4, fewshot_rows=rows)
    assert [r.prompt for r in a] == [r.prompt for r in b]  # deterministic (seed 1234)
    assert [r.problem.row for r in a] == [0, 1, 2, 3]
    for r in a:  # an item never appears among its own shots
        assert r.prompt.count(r.problem.question) == 1
    assert len({r.prompt.split("Question: ")[1] for r in a}) > 1  # fresh draw per item


def test_wilson_and_mcnemar_against_known_values() -> None:
    lo, hi = g.wilson_interval(0, 12)
    assert lo == 0.0 and hi == pytest.approx(0.2425, abs=1e-4)
    assert g.wilson_interval(7, 7)[1] == 1.0
    lo, hi = g.wilson_interval(184, 200)  # p=0.92: centre pulled toward 1/2, asymmetric
    assert lo < 0.92 < hi and (0.92 - lo) > (hi - 0.92)
    # exact two-sided: b=1, c=9 -> 2 * (1 + 10) / 1024
    assert g.mcnemar_exact_p(1, 9) == pytest.approx(22 / 1024)
    assert g.mcnemar_exact_p(0, 0) == 1.0 and g.mcnemar_exact_p(5, 5) == 1.0
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    for b, c in ((3, 11), (20, 31), (0, 7)):
        assert g.mcnemar_exact_p(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
    for k, n in ((184, 200), (0, 12), (5, 9)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert g.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_compare_runs_counts_discordant_pairs() -> None:
    def doc(flags):
        return {"items": [{"row": i, "question_sha": f"q{i}", "correct": f} for i, f in enumerate(flags)]}

    base = doc([1, 1, 0, 0, 1, 1])
    cur = doc([1, 0, 1, 1, 1, 0])
    c = g.compare_runs(base, cur)
    assert (c["n"], c["baseline_only"], c["current_only"], c["both_right"], c["neither"]) == (6, 2, 2, 2, 0)
    assert c["difference"] == 0 and c["se"] == pytest.approx(math.sqrt(4) / 6)
    with pytest.raises(MxmixError):
        g.compare_runs({"nothing": 1}, cur)


class _Scripted(BaseHTTPRequestHandler):
    """An OpenAI-style endpoint that answers each question with its reference solution (or fails on cue)."""

    answers: ClassVar[dict[str, str]] = {}
    fail_first: ClassVar[dict[str, int]] = {}
    seen: ClassVar[list[dict]] = []
    lock = threading.Lock()

    def log_message(self, *a):  # quiet
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.seen.append(req)
        target = req["prompt"].rsplit("Question: ", 1)[1].split("\nAnswer:")[0]
        with self.lock:
            left = self.fail_first.get(target, 0)
            if left:
                self.fail_first[target] = left - 1
        if left:
            return self._send(503, {"error": {"message": "busy"}})
        if "too long" in target:
            return self._send(400, {"error": {"message": "prompt too long"}})
        text = self.answers.get(target, " I do not know.")
        self._send(200, {"choices": [{"text": text}], "usage": {"completion_tokens": 5}})


@pytest.fixture
def scripted_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_run_against_a_live_endpoint_scores_retries_and_compares(scripted_server, tmp_path) -> None:
    _, url = scripted_server
    rows = g.load_jsonl(DATA)
    items = rows[5:]
    # right on the even items (answers the reference solution), wrong on the odd ones
    _Scripted.answers = {p.question: " " + p.answer for p in items[::2]}
    _Scripted.fail_first = {items[0].question: 2}  # two 503s, then success
    _Scripted.seen = []
    cfg = g.RunConfig(base_url=url, data=str(DATA), num_examples=None, num_shots=5, num_threads=4, max_tokens=32)
    client = g.Client(url, backoff=0.0)
    doc = g.run_gsm8k(cfg, client=client, progress=False)
    n = len(items)
    assert doc["n"] == n and doc["model"] == "scripted" and doc["errors"] == 0
    assert doc["correct"] == len(items[::2])
    assert doc["ci95"][0] <= doc["score"] <= doc["ci95"][1]
    assert len(_Scripted.seen) == n + 2  # two retried attempts
    req = _Scripted.seen[-1]
    assert req["temperature"] == 0.0 and req["stop"] == g.SGLANG_STOP and req["max_tokens"] == 32
    # a second run where everything is right: the paired comparison sees only c-type changes
    _Scripted.answers = {p.question: " " + p.answer for p in items}
    doc2 = g.run_gsm8k(cfg, client=client, progress=False)
    cmp = g.compare_runs(doc, doc2)
    assert (cmp["baseline_only"], cmp["current_only"]) == (0, n - len(items[::2]))
    assert cmp["difference"] > 0 and cmp["mcnemar_exact_p"] == pytest.approx(2 / 2 ** cmp["current_only"])
    # lm-eval protocol on the same server: strict and flexible are both reported
    _Scripted.answers = {p.question: " " + p.answer for p in rows}
    doc3 = g.run_gsm8k(g.RunConfig(base_url=url, data=str(DATA), protocol="lm-eval", num_examples=4,
                                   num_shots=2), client=client, progress=False)
    assert doc3["strict_match"]["score"] == 1.0 and doc3["flexible_extract"]["n"] == 4


def test_http_400_scores_zero_without_retry(scripted_server, tmp_path) -> None:
    _, url = scripted_server
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "this is too long", "answer": "#### 1"}) + "\n"
                    + json.dumps({"question": "easy", "answer": "#### 2"}) + "\n")
    _Scripted.answers = {"easy": " 2"}
    _Scripted.fail_first = {}
    _Scripted.seen = []
    doc = g.run_gsm8k(g.RunConfig(base_url=url, data=str(data), num_shots=0, num_examples=None),
                      client=g.Client(url, backoff=0.0), progress=False)
    assert doc["n"] == 2 and doc["correct"] == 1 and doc["errors"] == 1
    assert len(_Scripted.seen) == 2


def test_unreachable_server_is_a_clean_error(tmp_path) -> None:
    client = g.Client("http://127.0.0.1:9", max_attempts=2, backoff=0.0, timeout=2)
    with pytest.raises(MxmixError, match="cannot list models"):
        g.run_gsm8k(g.RunConfig(base_url="http://127.0.0.1:9", data=str(DATA), num_examples=2), client=client,
                    progress=False)
    with pytest.raises(MxmixError, match="every request failed"):
        g.run_gsm8k(g.RunConfig(base_url="http://127.0.0.1:9", data=str(DATA), num_examples=2, model="m"),
                    client=client, progress=False)


def test_bad_data_files(tmp_path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"question": "q"}\n')
    with pytest.raises(MxmixError, match="'question' and 'answer'"):
        g.load_jsonl(p)
    p.write_text("not json\n")
    with pytest.raises(MxmixError, match=":1: not valid JSON"):
        g.load_jsonl(p)
    rows = g.load_jsonl(DATA)
    with pytest.raises(MxmixError, match="nothing left"):
        g.plan_requests(rows[:3], "sglang", 5, None)


def test_cli_out_compare_and_errors(scripted_server, tmp_path, capsys) -> None:
    from mxmix.cli.main import main

    _, url = scripted_server
    rows = g.load_jsonl(DATA)
    _Scripted.answers = {p.question: " " + p.answer for p in rows[5:9]}
    _Scripted.fail_first = {}
    base = ["eval", "gsm8k", "--base-url", url, "--data", str(DATA), "--num-examples", "8", "--no-progress"]
    first = tmp_path / "first.json"
    assert main([*base, "--out", str(first)]) == 0
    text = capsys.readouterr().out
    assert "score 0.5000 (4/8)" in text and "Wilson" in text
    assert len(json.loads(first.read_text())["items"]) == 8
    _Scripted.answers = {p.question: " " + p.answer for p in rows[5:13]}
    assert main([*base, "--compare", str(first), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["score"] == 1.0 and doc["compare"]["current_only"] == 4 and doc["compare"]["baseline_only"] == 0
    assert main([*base, "--out", str(first)]) == 2  # never overwrite without --force
    assert "already exists" in capsys.readouterr().err
    assert main([*base, "--compare", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_model_discovery_gives_up_quickly_on_a_dead_address() -> None:
    slept: list[float] = []
    client = g.Client("http://127.0.0.1:9", timeout=2, sleep=slept.append)
    with pytest.raises(MxmixError, match="cannot list models"):
        client.models()
    assert len(slept) == g.MODEL_LIST_ATTEMPTS - 1 and sum(slept) < 10
