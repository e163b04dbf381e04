"""Batch-1 greedy decoding, eager or with the one-token step captured in a CUDA graph.

Decode at batch 1 runs ~200 small kernels per token; in eager PyTorch the Python and launch overhead
(tens of ms per token for a 32-layer model) hides the weight-streaming time that MXFP8 halves. A
static KV cache (transformers' ``StaticCache``, whose write position is a device tensor) makes the
step capturable, and replaying the graph leaves only the GPU work. Used by ``mxmix run --device cuda``
and ``benchmarks/bench_e2e.py``; both BF16 and MXFP8 models go through the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class GenerationResult:
    tokens: list[int]                 # generated token ids (prompt excluded)
    prompt_tokens: int
    prefill_s: float                  # time to first token
    decode_s: float                   # time for the steady-state tokens (after warm-up and capture)
    timed_tokens: int                 # tokens produced in decode_s
    mode: str                         # "cuda-graph" | "eager"
    notes: list[str] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.timed_tokens
        return n / self.decode_s if n > 0 and self.decode_s > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "prefill_s": self.prefill_s,
                "decode_s": self.decode_s, "timed_tokens": self.timed_tokens,
                "decode_tokens_per_s": self.decode_tokens_per_s,
                "mode": self.mode, "notes": self.notes}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _eos_ids(model) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _static_cache(model, max_len: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


def _cache_kw(model) -> str:
    """transformers 5.2x calls the cache argument ``cache``; older releases ``past_key_values``."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, use_cuda_graph: bool = True,
                    stop_at_eos: bool = True) -> GenerationResult:
    """Greedy decode ``max_new_tokens`` tokens after ``input_ids`` [1, T] (on the model's device)."""
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError("greedy_generate decodes one sequence: input_ids must be [1, T]")
    device = input_ids.device
    eos = _eos_ids(model) if stop_at_eos else set()
    kw = _cache_kw(model)
    max_len = input_ids.shape[1] + max_new_tokens + 1
    cache = _static_cache(model, max_len)
    notes: list[str] = []
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{kw: cache})
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    first = int(tok.item())
    prefill_s = time.perf_counter() - t0
    tokens = [first]
    if max_new_tokens <= 1 or first in eos:
        return GenerationResult(tokens, input_ids.shape[1], prefill_s, 0.0, 0, "eager", notes)

    static_in = tok.clone()

    def step() -> None:
        o = model(input_ids=static_in, use_cache=True, **{kw: cache})
        static_in.copy_(o.logits[:, -1].argmax(-1, keepdim=True))

    mode = "eager"
    graph = None
    # one eager step first: compiles the kernels, initialises lazy buffers, produces a real token
    step()
    tokens.append(int(static_in.item()))
    if use_cuda_graph and device.type == "cuda" and tokens[-1] not in eos and len(tokens) < max_new_tokens:
        try:
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                step()
            torch.cuda.current_stream(device).wait_stream(stream)
            mode = "cuda-graph"
        except Exception as exc:  # capture unsupported by this model / transformers version
            graph = None
            notes.append(f"CUDA graph capture failed, decoding eagerly: {type(exc).__name__}: {exc}"[:300])
    _sync(device)
    t1 = time.perf_counter()
    before = len(tokens)
    while len(tokens) < max_new_tokens and tokens[-1] not in eos:
        if graph is not None:
            graph.replay()
        else:
            step()
        tokens.append(int(static_in.item()))  # one host read per token, same for every model
    _sync(device)
    decode_s = time.perf_counter() - t1
    return GenerationResult(tokens, input_ids.shape[1], prefill_s, decode_s, len(tokens) - before, mode, notes)
