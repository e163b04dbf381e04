"""Deliberately (in)consistent mixed checkpoints for the audit tests, written tensor by tensor.

Consistent checkpoints come from the real converter (``quantize_checkpoint``); the broken ones are
made here, where every flaw is explicit: which weights are FP8, what the skip list says, and what was
done to the scales.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from mxmix.checkpoint.dialects import DIALECTS, quantization_config_for
from mxmix.example.synthetic import SyntheticSpec, synthetic_config, synthetic_tensors
from mxmix.mx import quantize

Tensors = dict[str, torch.Tensor]


def is_linear_weight(name: str) -> bool:
    return name.endswith("_proj.weight")


def realish(n: int, k: int, seed: int) -> torch.Tensor:
    """Weights with per-row and per-column magnitude structure (and a few outlier input columns), as real
    LLM weights have; i.i.d. Gaussians have none and make every scale layout look alike."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.exp(torch.randn(n, 1, generator=g) * 0.5)
    cols = torch.exp(torch.randn(1, k, generator=g) * 0.5)
    cols[0, torch.randint(0, k, (max(1, k // 100),), generator=g)] *= 20
    return (torch.randn(n, k, generator=g) * rows * cols * 0.02).to(torch.bfloat16)


def build(dest: Path, spec: SyntheticSpec, *, fp8: Callable[[str], bool], skip_list: Iterable[str] | None,
          dialect: str = "sglang", structured: bool = False,
          mutate: Callable[[Tensors], None] | None = None, config_extra: dict | None = None) -> Path:
    """Write a checkpoint whose Linear weights named by ``fp8(weight_name)`` are MXFP8 (scales under
    the dialect's suffix) and whose config carries ``skip_list`` (None: no quantization_config)."""
    dest.mkdir(parents=True)
    tensors = synthetic_tensors(spec)
    suffix = DIALECTS[dialect].scale_suffix
    out: Tensors = {}
    for i, (name, t) in enumerate(tensors.items()):
        if structured and t.dim() == 2 and is_linear_weight(name):
            t = realish(*t.shape, seed=i)
        if is_linear_weight(name) and fp8(name):
            q, s = quantize(t)
            out[name] = q
            out[name[: -len("weight")] + suffix] = s
        else:
            out[name] = t
    if mutate is not None:
        mutate(out)
    cfg = synthetic_config(spec)
    side: dict = {}
    if skip_list is not None:
        qc, side = quantization_config_for(DIALECTS[dialect], list(skip_list))
        cfg["quantization_config"] = qc
    cfg.update(config_extra or {})
    (dest / "config.json").write_text(json.dumps(cfg))
    for fname, data in side.items():
        (dest / fname).write_text(json.dumps(data))
    save_file({k: v.contiguous() for k, v in out.items()}, str(dest / "model.safetensors"))
    return dest


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None
