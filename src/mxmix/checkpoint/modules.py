"""A checkpoint's Linear modules, from safetensors headers alone (no tensor data is read).

Recognised: 2-D ``<m>.weight`` tensors of Linear-like modules (attention and MLP projections, fused
``qkv_proj`` / ``gate_up_proj``, per-expert ``experts.N.*``, ``lm_head``, router gates), 3-D stacked
expert tensors (``…mlp.experts.gate_up_proj`` ``[E, N, K]``, ``…mlp.experts.down_proj``) — reported
under the FusedMoE module path ``…mlp.experts`` — and their scale companions
(``weight_scale_inv`` / ``weight_scale``, ``<proj>_scale_inv`` / ``<proj>_scale`` for stacked).
Embeddings are never Linear; norms and biases are not ``.weight`` matrices.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.safetensors_header import FLOAT_DTYPES, FP8_DTYPES, _gc_paused

EMBEDDING_NAMES = frozenset({
    "embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings", "token_type_embeddings",
    "embed_positions", "embeddings", "embed_in", "tok_embeddings", "shared", "embedding", "embed",
})
STACKED_SUFFIXES = ("_scale_inv", "_scale", "_bias", "_blocks", "_scales", "_zero_point", "_input_scale")
LAYER_CONTAINERS = frozenset({"layers", "layer", "h", "blocks", "block"})
MX_SCALE_DTYPES = frozenset({"U8", "F8_E8M0"})
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class LinearModule:
    """One Linear weight: ``path`` is the runtime module (``…mlp.experts`` for stacked experts)."""

    path: str
    weight: str
    dtype: str
    shape: tuple[int, ...]
    layer: int | None
    kind: str
    scale: str | None
    stacked: bool
    expert: int | None
    scale_dtype: str | None = None

    @property
    def precision(self) -> str:
        """What is stored: "mxfp8" (E4M3 + E8M0 block scales), "fp8" (other FP8), else the dtype ("bf16")."""
        if self.dtype == "F8_E4M3" and (self.scale_dtype in MX_SCALE_DTYPES or (self.scale_dtype is None
                                        and self.scale is not None)):
            return "mxfp8"
        if self.dtype in FP8_DTYPES:
            return "fp8"
        return self.dtype.lower()

    @property
    def quantized(self) -> bool:
        return self.dtype in FP8_DTYPES

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "weight": self.weight, "dtype": self.dtype, "shape": list(self.shape),
                "layer": self.layer, "kind": self.kind, "scale": self.scale, "stacked": self.stacked,
                "expert": self.expert, "precision": self.precision}


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``layers.2`` before ``layers.10``."""
    return tuple(int(t) if t.isdigit() else t for t in _DIGITS.split(name))


def layer_index(parts: list[str]) -> int | None:
    """The decoder layer a module belongs to: the number after ``layers`` / ``h`` / ``blocks``."""
    for prev, cur in itertools.pairwise(parts):
        if prev in LAYER_CONTAINERS and cur.isdigit():
            return int(cur)
    return None


def _is_weight_dtype(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES or dtype in FP8_DTYPES


def linear_modules(ckpt: Checkpoint) -> list[LinearModule]:
    """Every Linear module of ``ckpt``, naturally sorted by weight name; headers only."""
    with _gc_paused():  # ~10^5 small acyclic objects: cyclic GC passes over them only cost time
        return _linear_modules(ckpt)


def _linear_modules(ckpt: Checkpoint) -> list[LinearModule]:
    tensors = ckpt.tensors
    out: list[LinearModule] = []
    for name, loc in tensors.items():
        info = loc.info
        if not _is_weight_dtype(info.dtype):
            continue
        parts = name.split(".")
        if len(info.shape) == 2 and parts[-1] == "weight" and len(parts) >= 2:
            module = ".".join(parts[:-1])
            last = parts[-2]
            if last in EMBEDDING_NAMES or "embed" in last or "norm" in last:
                continue
            expert = None
            kind = last
            mparts = parts[:-1]
            if "experts" in mparts:
                k = len(mparts) - 1 - mparts[::-1].index("experts")
                rest = mparts[k + 1:]
                if rest and rest[0].isdigit():
                    expert = int(rest[0])
                    kind = "experts." + ".".join(rest[1:]) if len(rest) > 1 else "experts"
            scale = next((f"{module}.{s}" for s in ("weight_scale_inv", "weight_scale")
                          if f"{module}.{s}" in tensors), None)
            out.append(LinearModule(module, name, info.dtype, tuple(info.shape), layer_index(mparts), kind,
                                    scale, False, expert, tensors[scale].info.dtype if scale else None))
        elif len(info.shape) == 3 and len(parts) >= 2 and "experts" in parts[:-1]:
            # stacked experts: <p>.experts.<proj>[.weight]
            tail = parts[-1]
            if tail == "weight":
                k = len(parts) - 2
                proj = parts[-2]
            else:
                k = len(parts) - 1
                proj = tail
            if parts[k - 1] != "experts" or proj.endswith(STACKED_SUFFIXES) or "bias" in proj:
                continue
            module = ".".join([*parts[:k - 1], "experts"])
            candidates = ([f"{name[:-len('.weight')]}.weight_scale_inv", f"{name[:-len('.weight')]}.weight_scale"]
                          if tail == "weight" else [f"{name}_scale_inv", f"{name}_scale"])
            scale = next((c for c in candidates if c in tensors), None)
            out.append(LinearModule(module, name, info.dtype, tuple(info.shape), layer_index(parts[:k]),
                                    f"experts.{proj}", scale, True, None,
                                    tensors[scale].info.dtype if scale else None))
    out.sort(key=lambda m: natural_key(m.weight))
    return out


__all__ = ["LinearModule", "layer_index", "linear_modules", "natural_key"]
