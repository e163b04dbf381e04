"""GSM8K against any OpenAI-compatible ``/v1/completions`` endpoint, with SGLang's and lm-eval's protocols.

Why: a GSM8K gate is only comparable with the one it imitates when the protocol is the same to the
character (shots, template, stop strings, extraction, comparison). ``sglang`` reproduces SGLang 0.5.23's
completion-mode ``GSM8KEval``; ``lm-eval`` reproduces lm-evaluation-harness 0.4.13's ``gsm8k`` task (strict
and flexible extraction, string exact-match). See the shared notes eval-protocols.md §1–§3.

Scores come with a 95 % Wilson score interval; ``compare`` gives the paired difference of two runs on the
same questions with McNemar's exact test, which is what a regression gate should read.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxmix.errors import MxmixError

PROTOCOLS = ("sglang", "lm-eval")
SGLANG_STOP = ["Question", "Assistant:", "<|separator|>"]
LM_EVAL_STOP = ["Question:", "</s>", "<|im_end|>"]
DEFAULT_MAX_TOKENS = {"sglang": 512, "lm-eval": 256}
LM_EVAL_FEWSHOT_SEED = 1234
MAX_ATTEMPTS = 6
INVALID = "[invalid]"
_SGLANG_NUMBER = re.compile(r"-?\d+\.?\d*")
_LM_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_LM_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_LM_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


# --- data ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    row: int        # 0-based line index in the data file
    question: str
    answer: str     # full reference solution ending in "#### N"


def load_jsonl(path: str | Path) -> list[Problem]:
    """GSM8K-format JSONL: one object per line with string ``question`` and ``answer``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MxmixError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MxmixError(f"{path}: cannot read ({exc})") from None
    out: list[Problem] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise MxmixError(f"{path}:{n + 1}: not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) \
                or not isinstance(obj.get("answer"), str):
            raise MxmixError(f"{path}:{n + 1}: each line needs string fields 'question' and 'answer'")
        out.append(Problem(len(out), obj["question"], obj["answer"]))
    if not out:
        raise MxmixError(f"{path}: no problems in the file")
    return out


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- SGLang protocol -----------------------------------------------------------------------------

def sglang_shot(p: Problem) -> str:
    return f"Question: {p.question}\nAnswer: {p.answer}\n\n"


def sglang_prompt(shots: Sequence[Problem], target: Problem) -> str:
    return "".join(sglang_shot(s) for s in shots) + f"Question: {target.question}\nAnswer:"


def sglang_extract(text: str) -> int | float | None:
    """Delete commas, take the last ``-?\\d+\\.?\\d*`` and read it as a Python number (None: no number)."""
    found = _SGLANG_NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    s = found[-1]
    try:
        return int(s)
    except ValueError:
        return float(s)


def sglang_correct(output: str, answer: str) -> bool:
    pred, label = sglang_extract(output), sglang_extract(answer)
    return pred is not None and label is not None and pred == label


# --- lm-eval protocol ----------------------------------------------------------------------------

def lm_eval_strict(text: str) -> str:
    m = _LM_STRICT.findall(text)
    return m[0].strip() if m else INVALID


def lm_eval_flexible(text: str) -> str:
    found = _LM_FLEXIBLE.findall(text)
    if not found:
        return INVALID
    groups = [g for g in found[-1] if g]
    return groups[0].strip() if groups else INVALID


def lm_eval_normalise(text: str) -> str:
    for rx in _LM_IGNORE:
        text = rx.sub("", text)
    return text.strip().lower()


def lm_eval_exact_match(pred: str, answer: str) -> bool:
    return lm_eval_normalise(pred) == lm_eval_normalise(answer)


# --- planning the requests -----------------------------------------------------------------------

@dataclass
class Request:
    problem: Problem
    prompt: str


def plan_requests(rows: Sequence[Problem], protocol: str, num_shots: int, num_examples: int | None,
                  fewshot_rows: Sequence[Problem] | None = None) -> list[Request]:
    """Which questions are asked, with which prompt.

    sglang: shots = the first ``num_shots`` rows, items = rows[num_shots : num_shots + n].
    lm-eval: shots drawn with ``random.Random(1234)`` from ``fewshot_rows`` (lm-eval draws from the
    train split; without one, the first ``num_shots`` rows of the data file are the pool and are not
    evaluated), a fresh draw per item as lm-eval's shared sampler does.
    """
    if protocol not in PROTOCOLS:
        raise MxmixError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if num_shots < 0:
        raise MxmixError("--num-shots must be >= 0")
    if num_examples is not None and num_examples < 1:
        raise MxmixError("--num-examples must be >= 1")
    if protocol == "sglang" or fewshot_rows is None:
        shots, items = list(rows[:num_shots]), list(rows[num_shots:])
    else:
        shots, items = list(fewshot_rows), list(rows)
    if num_examples is not None:
        items = items[:num_examples]
    if not items:
        raise MxmixError(f"the data file has {len(rows)} rows: nothing left to evaluate after {num_shots} shots")
    if protocol == "sglang":
        return [Request(p, sglang_prompt(shots, p)) for p in items]
    if len(shots) < num_shots:
        raise MxmixError(f"only {len(shots)} few-shot rows for --num-shots {num_shots}")
    rnd = random.Random(LM_EVAL_FEWSHOT_SEED)
    out = []
    for p in items:
        pool = [s for s in shots if s.question != p.question] if fewshot_rows is not None else shots
        draw = rnd.sample(pool, num_shots) if num_shots else []
        out.append(Request(p, sglang_prompt(draw, p)))
    return out


# --- the client ----------------------------------------------------------------------------------

class CompletionError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


MODEL_LIST_ATTEMPTS = 3


@dataclass
class Client:
    """Minimal OpenAI-compatible client over urllib, with SGLang's retry rule."""

    base_url: str
    api_key: str | None = None
    timeout: float = 600.0
    max_attempts: int = MAX_ATTEMPTS
    backoff: float = 1.0
    sleep: Callable[[float], None] = time.sleep

    def _url(self, route: str) -> str:
        base = self.base_url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return base + route

    def _call(self, route: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._url(route), data=data, method="GET" if body is None else "POST")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise CompletionError(f"HTTP {exc.code} from {route}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise CompletionError(f"{route}: {getattr(exc, 'reason', exc)}") from None

    def models(self) -> list[str]:
        """Model ids from /v1/models: a few quick retries (a server may still be starting), but a wrong
        address must fail in seconds, not after the completions' full back-off."""
        attempts = min(self.max_attempts, MODEL_LIST_ATTEMPTS)
        for attempt in range(attempts):
            try:
                data = self._call("/models", None)
                return [m["id"] for m in data.get("data", [])]
            except CompletionError as exc:
                last: Exception = exc
                if exc.status is not None and exc.status < 500:
                    break
            except (KeyError, TypeError, AttributeError) as exc:
                last = exc
                break
            if attempt + 1 < attempts:
                self.sleep(self.backoff * 2 ** attempt)
        raise MxmixError(f"cannot list models at {self._url('/models')}: {last}")

    def complete(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(text, usage). Retries with exponential back-off; HTTP 400 answers "" at once, as SGLang does."""
        last: CompletionError | None = None
        for attempt in range(self.max_attempts):
            try:
                data = self._call("/completions", body)
                return data["choices"][0].get("text") or "", data.get("usage") or {}
            except CompletionError as exc:
                if exc.status == 400:
                    return "", {"error": str(exc)}
                last = exc
            except (KeyError, IndexError, TypeError) as exc:
                last = CompletionError(f"malformed completion response: {exc}")
            if attempt + 1 < self.max_attempts:
                self.sleep(self.backoff * 2 ** attempt)
        raise CompletionError(f"gave up after {self.max_attempts} attempts: {last}")


# --- running and scoring -------------------------------------------------------------------------

@dataclass
class ItemResult:
    row: int
    question_sha: str
    label: str
    output: str
    correct: bool
    pred: Any = None
    strict: str | None = None
    flexible: str | None = None
    strict_correct: bool | None = None
    latency_s: float = 0.0
    completion_tokens: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _score_item(req: Request, protocol: str, output: str) -> ItemResult:
    label = req.problem.answer.split("####")[-1].strip()
    qsha = hashlib.sha256(req.problem.question.encode()).hexdigest()[:16]
    if protocol == "sglang":
        return ItemResult(req.problem.row, qsha, label, output, sglang_correct(output, req.problem.answer),
                          pred=sglang_extract(output))
    strict, flexible = lm_eval_strict(output), lm_eval_flexible(output)
    return ItemResult(req.problem.row, qsha, label, output, lm_eval_exact_match(flexible, req.problem.answer),
                      pred=flexible, strict=strict, flexible=flexible,
                      strict_correct=lm_eval_exact_match(strict, req.problem.answer))


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for k successes in n (sound at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: no rounding residue at 0/n or n/n
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def score_summary(correct: Sequence[bool]) -> dict[str, Any]:
    n = len(correct)
    k = sum(bool(c) for c in correct)
    p = k / n if n else float("nan")
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "score": p, "std": math.sqrt(p * (1 - p)) if n else float("nan"),
            "se": math.sqrt(p * (1 - p) / n) if n else float("nan"), "ci95": [lo, hi], "ci_method": "wilson"}


@dataclass
class RunConfig:
    base_url: str
    data: str
    model: str | None = None
    protocol: str = "sglang"
    num_examples: int | None = 200
    num_shots: int = 5
    num_threads: int = 128
    max_tokens: int | None = None
    fewshot_data: str | None = None
    api_key: str | None = None
    timeout: float = 600.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_gsm8k(cfg: RunConfig, *, client: Client | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Ask every planned question (thread pool), score it, and return the result document."""
    from mxmix.progress import progress_bar

    rows = load_jsonl(cfg.data)
    fewshot = load_jsonl(cfg.fewshot_data) if cfg.fewshot_data else None
    reqs = plan_requests(rows, cfg.protocol, cfg.num_shots, cfg.num_examples, fewshot)
    client = client or Client(cfg.base_url, api_key=cfg.api_key, timeout=cfg.timeout)
    model = cfg.model
    if model is None:
        ids = client.models()
        if not ids:
            raise MxmixError(f"{cfg.base_url} lists no models; pass --model")
        model = ids[0]
    max_tokens = cfg.max_tokens or DEFAULT_MAX_TOKENS[cfg.protocol]
    stop = SGLANG_STOP if cfg.protocol == "sglang" else LM_EVAL_STOP

    def ask(req: Request) -> ItemResult:
        body = {"model": model, "prompt": req.prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "top_p": 1.0, "stop": stop}
        t0 = time.perf_counter()
        try:
            text, usage = client.complete(body)
            err = usage.get("error")
        except CompletionError as exc:
            text, usage, err = "", {}, str(exc)
        res = _score_item(req, cfg.protocol, text)
        res.latency_s = time.perf_counter() - t0
        res.completion_tokens = usage.get("completion_tokens")
        res.error = err
        return res

    t0 = time.perf_counter()
    bar = progress_bar(total=len(reqs), desc=f"gsm8k ({cfg.protocol})", enabled=progress, unit="q")
    results: list[ItemResult] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(cfg.num_threads, len(reqs)))) as pool:
            for res in pool.map(ask, reqs):
                results.append(res)
                bar.update(1)
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    failed = [r for r in results if r.error]
    if len(failed) == len(results):
        raise MxmixError(f"every request failed; first error: {failed[0].error}")
    tokens = sum(r.completion_tokens or 0 for r in results)
    doc: dict[str, Any] = {
        "protocol": cfg.protocol, "model": model, "base_url": cfg.base_url,
        "data": {"path": str(cfg.data), "sha256": file_sha256(cfg.data), "rows": len(rows)},
        "num_shots": cfg.num_shots, "max_tokens": max_tokens, "stop": stop, "temperature": 0.0,
        "wall_s": wall, "latency_mean_s": sum(r.latency_s for r in results) / len(results),
        "output_throughput_tok_s": tokens / wall if tokens and wall > 0 else None,
        "errors": len(failed),
    }
    doc.update(score_summary([r.correct for r in results]))
    if cfg.protocol == "lm-eval":
        doc["flexible_extract"] = score_summary([r.correct for r in results])
        doc["strict_match"] = score_summary([bool(r.strict_correct) for r in results])
    doc["items"] = [r.to_dict() for r in results]
    return doc


# --- paired comparison ---------------------------------------------------------------------------

def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test: binomial(b + c, 1/2) tail at min(b, c), doubled, capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare_runs(baseline: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Paired comparison on the questions both runs asked (matched by row and question hash).

    b = baseline right / current wrong, c = the reverse; difference (c − b)/n, SE ≈ √(b + c)/n.
    """
    def index(doc: dict[str, Any], what: str) -> dict[tuple[int, str], bool]:
        try:
            return {(int(i["row"]), str(i["question_sha"])): bool(i["correct"]) for i in doc["items"]}
        except (KeyError, TypeError, ValueError):
            raise MxmixError(f"{what} is not an `mxmix eval gsm8k --out` result (no per-item records)") from None

    base, cur = index(baseline, "the --compare file"), index(current, "this run")
    common = sorted(set(base) & set(cur))
    if not common:
        raise MxmixError("the two runs share no questions (different data files or rows?)")
    n = len(common)
    b = sum(1 for k in common if base[k] and not cur[k])
    c = sum(1 for k in common if cur[k] and not base[k])
    both = sum(1 for k in common if base[k] and cur[k])
    diff = (c - b) / n
    se = math.sqrt(b + c) / n
    return {"n": n, "baseline_score": (both + b) / n, "current_score": (both + c) / n,
            "both_right": both, "baseline_only": b, "current_only": c,
            "neither": n - both - b - c, "difference": diff, "se": se,
            "ci95": [diff - 1.959963984540054 * se, diff + 1.959963984540054 * se],
            "mcnemar_exact_p": mcnemar_exact_p(b, c),
            "unpaired_items": len(set(base) ^ set(cur))}
