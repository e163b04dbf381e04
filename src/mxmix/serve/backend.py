"""Text generation for the server: one model, one worker thread, OpenAI sampling parameters.

All model work runs on one long-lived thread: request-handler threads are short-lived, and a thread
that ran torch ops can abort the process when it exits ("terminate called without an active
exception"), so handlers only queue work and wait. Why serial rather than batching: a CPU or single-GPU test server gains little from batching a
135M model, and a strictly serial worker makes greedy outputs independent of concurrency (the batch
invariance SGLang cannot promise), which is what an accuracy harness wants.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class Backend:
    """Wraps a causal LM + tokenizer; ``generate`` calls queue for the single model thread."""

    def __init__(self, model: Any, tokenizer: Any, name: str, *, max_context: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        cfg = getattr(model, "config", None)
        self.max_context = int(max_context or getattr(cfg, "max_position_embeddings", 0) or 2048)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(cfg, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])
        self.cancel = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxmix-model")
        import inspect

        # transformers 5.2x names the KV-cache argument/field ``cache``; older releases ``past_key_values``
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; use /v1/completions")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, prompt_ids: list[int], *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None, seed: int | None = None) -> Generation:
        import torch

        job = self._worker.submit(self._generate, torch, prompt_ids, max_tokens, temperature, top_p, stop or [], seed)
        return job.result()

    def close(self) -> None:
        """Finish queued work (cut short by ``cancel``) and stop the model thread."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _generate(self, torch: Any, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float,
                  stop: list[str], seed: int | None) -> Generation:
        gen = None
        if temperature > 0:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(seed if seed is not None else torch.seed())
        out_ids: list[int] = []
        text, finish = "", "length"
        past = None
        inputs = torch.tensor([prompt_ids], device=self.device)
        with torch.inference_mode():
            for _ in range(max_tokens):
                if self.cancel.is_set():
                    break
                res = self.model(input_ids=inputs, use_cache=True, **{self._cache_name: past})
                past = getattr(res, self._cache_name)
                logits = res.logits[0, -1].float()
                tok = self._pick(torch, logits, temperature, top_p, gen)
                if tok in self.eos_ids:
                    finish = "stop"
                    break
                out_ids.append(tok)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                cut = _first_stop(text, stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    break
                inputs = torch.tensor([[tok]], device=self.device)
        return Generation(text, len(prompt_ids), len(out_ids), finish)

    @staticmethod
    def _pick(torch: Any, logits: Any, temperature: float, top_p: float, gen: Any) -> int:
        if temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / temperature, dim=-1).cpu()
        if top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < top_p  # smallest prefix whose mass reaches top_p
            sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
            return int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)])
        return int(torch.multinomial(probs, 1, generator=gen))


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [i for s in stop if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None
