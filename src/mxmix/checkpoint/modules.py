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
from collections.abc import Sequence
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
_HAS_DIGIT = re.compile(r"\d")


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
    parts = _DIGITS.split(name)          # text, digits, text, ...: the digit runs are the odd items
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


def natural_keys(names: Sequence[str]) -> list[tuple[Any, ...]]:
    """``[natural_key(n) for n in names]``, faster on names that share parents.

    A digit run never spans a dot, so when the last two components hold no digit the key is the
    (memoised) key of the grandparent path with its trailing text extended.
    """
    split = _DIGITS.split
    parents: dict[str, tuple[Any, ...]] = {}
    plain_tails: dict[str, bool] = {}
    out: list[tuple[Any, ...]] = []
    append = out.append
    for name in names:
        head, _, tail = name.rpartition(".")
        grand, dot, mid = head.rpartition(".")
        tail = f".{mid}.{tail}"
        plain = plain_tails.get(tail)
        if plain is None:
            plain = plain_tails[tail] = _HAS_DIGIT.search(tail) is None
        if plain and dot:
            key = parents.get(grand)
            if key is None:
                parts = split(grand)
                parts[1::2] = map(int, parts[1::2])
                key = parents[grand] = tuple(parts)
            append((*key[:-1], key[-1] + tail))
        else:
            append(natural_key(name))
    return out


def layer_index(parts: list[str]) -> int | None:
    """The decoder layer a module belongs to: the number after ``layers`` / ``h`` / ``blocks``."""
    for prev, cur in itertools.pairwise(parts):
        if prev in LAYER_CONTAINERS and cur.isdigit():
            return int(cur)
    return None


def decoder_layer(path: str) -> tuple[str, int] | None:
    """(the decoder layer's module path, its number) for a module inside one, e.g.
    ``model.layers.3.mlp.up_proj`` → ``("model.layers.3", 3)``; the same reading as :func:`layer_index`."""
    parts = path.split(".")
    for i in range(1, len(parts) - 1):
        if parts[i - 1] in LAYER_CONTAINERS and parts[i].isdigit():
            return ".".join(parts[:i + 1]), int(parts[i])
    return None


_WEIGHT_DTYPES = frozenset(FLOAT_DTYPES) | frozenset(FP8_DTYPES)


def _parent_facts(parent: str) -> tuple[int | None, int | None, str | None]:
    """What a module's parent path fixes: its decoder layer (unless the module name itself is the
    layer number), and for per-expert modules the expert and the kind's prefix.

    ``kind_prefix`` is None when ``experts`` is not a parent component; when the parent ends in
    ``experts`` the expert is None (the module's own name is then the expert number).
    """
    if not parent:
        return None, None, None
    parts = parent.split(".")
    layer = layer_index(parts)
    if "experts" not in parts:
        return layer, None, None
    k = len(parts) - 1 - parts[::-1].index("experts")
    rest = parts[k + 1:]
    if not rest:
        return layer, None, ""
    if not rest[0].isdigit():
        return layer, None, None
    return layer, int(rest[0]), "experts." + "".join(p + "." for p in rest[1:])


def linear_modules(ckpt: Checkpoint) -> list[LinearModule]:
    """Every Linear module of ``ckpt``, naturally sorted by weight name; headers only.

    Computed once per opened checkpoint (``Checkpoint.derived``): inspect, plan and audit on one open
    share it. The list is a fresh copy; the (frozen) modules are shared."""
    return list(ckpt.derived("linear_modules", lambda: _build_linear_modules(ckpt)))


def _build_linear_modules(ckpt: Checkpoint) -> list[LinearModule]:
    with _gc_paused():  # ~10^5 small acyclic objects: cyclic GC passes over them only cost time
        return _linear_modules(ckpt)


def _linear_modules(ckpt: Checkpoint) -> list[LinearModule]:
    # One pass over ~10^5 names: string tests before any split, the decoder layer memoised per parent
    # path, and modules built straight into their __dict__ (a frozen dataclass's __init__ costs 2x).
    tensors = ckpt.tensors
    weight_dtypes = _WEIGHT_DTYPES
    new = object.__new__
    by_parent: dict[str, tuple[int | None, int | None, str | None]] = {}
    out: list[LinearModule] = []
    append = out.append
    for name, loc in tensors.items():
        info = loc.info
        dtype = info.dtype
        if dtype not in weight_dtypes:
            continue
        shape = info.shape
        ndim = len(shape)
        if ndim == 2 and name.endswith(".weight"):
            module = name[:-7]
            parent, _, last = module.rpartition(".")
            if last in EMBEDDING_NAMES or "embed" in last or "norm" in last:
                continue
            facts = by_parent.get(parent)
            if facts is None:
                facts = by_parent[parent] = _parent_facts(parent)
            layer, expert, kind_prefix = facts
            if layer is None and parent and last.isdigit() and parent.rpartition(".")[2] in LAYER_CONTAINERS:
                layer = int(last)
            if kind_prefix is None or last == "experts":
                kind = last
                expert = None
            elif expert is None:          # <...>.experts.<last>: last is the expert number
                if last.isdigit():
                    expert = int(last)
                    kind = "experts"
                else:
                    kind = last
            else:
                kind = kind_prefix + last
            scale = module + ".weight_scale_inv"
            if scale not in tensors:
                scale = module + ".weight_scale"
                if scale not in tensors:
                    scale = None
            m = new(LinearModule)
            d = m.__dict__
            d["path"] = module
            d["weight"] = name
            d["dtype"] = dtype
            d["shape"] = tuple(shape)
            d["layer"] = layer
            d["kind"] = kind
            d["scale"] = scale
            d["stacked"] = False
            d["expert"] = expert
            d["scale_dtype"] = tensors[scale].info.dtype if scale else None
            append(m)
        elif ndim == 3 and "experts" in name:
            parts = name.split(".")
            if len(parts) < 2 or "experts" not in parts[:-1]:
                continue
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
            append(LinearModule(module, name, dtype, tuple(shape), layer_index(parts[:k]),
                                f"experts.{proj}", scale, True, None,
                                tensors[scale].info.dtype if scale else None))
    keys = natural_keys([m.weight for m in out])
    order = sorted(range(len(out)), key=keys.__getitem__)
    return [out[i] for i in order]


__all__ = ["LinearModule", "layer_index", "linear_modules", "natural_key", "natural_keys"]
