"""The "keep these modules in BF16" list a converted checkpoint carries.

``full`` (default, engine-safe, engine-semantics.md §8): one full, unfused, checkpoint-named module
path per kept Linear; every shard and every expert enumerated; a kept MoE also names its fused module
(``...mlp.experts``), which is what SGLang, vLLM and transformers test for a fused MoE; ``lm_head`` is
listed whenever the model has one and it stays BF16 (also when it is tied to the embedding).

``prefix``: whole kept decoder layers as ``model.layers.N.`` entries — the style of checkpoints found
in the wild, which engines read differently (kept to reproduce what such checkpoints do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mxmix.checkpoint.modules import natural_key
from mxmix.checkpoint.selection import (
    FUSED_SHARDS,
    ModuleChoice,
    is_lm_head,
    last_component,
    moe_group,
)

STYLES = ("full", "prefix")


def _entries_for(c: ModuleChoice) -> list[str]:
    if c.stacked:
        proj = last_component(c.weight)
        shards = FUSED_SHARDS.get(proj, (proj,))
        experts = c.shape[0] if c.shape else 0
        return [c.path] + [f"{c.path}.{e}.{s}" for e in range(experts) for s in shards]
    if c.expert is not None:
        group = moe_group(c.path)
        return [group, c.path] if group else [c.path]
    return [c.path]


def layer_prefix(path: str, layer: int) -> str | None:
    """``model.layers.3.mlp.down_proj`` (layer 3) -> ``model.layers.3.``."""
    parts = path.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == str(layer):
            return ".".join(parts[: i + 1]) + "."
    return None


def build_skip_list(choices: Sequence[ModuleChoice], style: str = "full",
                    config: dict[str, Any] | None = None) -> list[str]:
    """The skip list for ``choices`` in ``style``, in natural order (layer 2 before 10), no duplicates."""
    if style not in STYLES:
        raise ValueError(f"unknown skip-list style {style!r}")
    whole_layers: dict[int, str] = {}
    if style == "prefix":
        by_layer: dict[int, list[ModuleChoice]] = {}
        for c in choices:
            if c.layer is not None:
                by_layer.setdefault(c.layer, []).append(c)
        for layer, members in by_layer.items():
            prefix = layer_prefix(members[0].path, layer)
            if prefix and all(not c.quantize for c in members) and all(
                    layer_prefix(c.path, layer) == prefix for c in members):
                whole_layers[layer] = prefix
    out: list[str] = []
    seen: set[str] = set()

    def add(entry: str) -> None:
        if entry not in seen:
            seen.add(entry)
            out.append(entry)

    for c in choices:
        if c.quantize:
            continue
        if c.layer in whole_layers:
            add(whole_layers[c.layer])
            continue
        for e in _entries_for(c):
            add(e)
    if not any(is_lm_head(c.path) for c in choices) and has_tied_lm_head(config):
        add("lm_head")  # the runtime module exists (tied to the embedding) and is never quantized
    return sorted(out, key=natural_key)


def has_tied_lm_head(config: dict[str, Any] | None) -> bool:
    """A causal LM whose checkpoint has no lm_head tensor still has an ``lm_head`` module at run time."""
    cfg = config or {}
    archs = cfg.get("architectures") or []
    return bool(cfg.get("tie_word_embeddings")) or any(
        isinstance(a, str) and a.endswith("ForCausalLM") for a in archs)
