"""Which Linear weights the converter quantizes, which stay BF16, and why.

The policy, in order of precedence:

1. a weight that cannot be MXFP8 (K not a multiple of 32, empty) stays in its dtype;
2. the user's keep rules (``--keep``, ``--keep-from-file``), ``--keep-first`` / ``--keep-last`` layers;
3. defaults: the LM head and MoE router gates stay BF16 (small, precision-critical, and several engines
   never quantize them) unless ``quantize_lm_head`` / ``quantize_router``;
4. consistency, so every engine reads the result the same way (engine-semantics.md §8): shards that
   engines fuse into one module (q/k/v, gate/up) are kept together, and a layer's experts are kept all
   or none (SGLang and vLLM keep a whole fused MoE BF16 as soon as one expert is listed).

Everything else is quantized. Matching of rules is delegated to :mod:`mxmix.rules` (canonical reading).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mxmix.checkpoint.modules import natural_key
from mxmix.checkpoint.safetensors_header import FLOAT_DTYPES, FP8_DTYPES
from mxmix.errors import MxmixError
from mxmix.rules import DEFAULT_FUSED

BLOCK_SIZE = 32
LM_HEAD_NAMES = frozenset({"lm_head", "embed_out"})
ROUTER_NAMES = frozenset({"gate", "router", "shared_expert_gate"})
# runtime fused module -> the checkpoint shards engines load into it: the engines' fallback mapping
# (shared with mxmix.rules) plus SGLang's DeepSeek MLA fusion
FUSED_SHARDS: dict[str, tuple[str, ...]] = {
    **DEFAULT_FUSED,
    "fused_qkv_a_proj_with_mqa": ("q_a_proj", "kv_a_proj_with_mqa"),
}

# reason codes (stable, used in JSON) -> short human text
REASONS: dict[str, str] = {
    "quantize": "quantized (default for Linear weights)",
    "quantize-lm-head": "quantized (--quantize-lm-head)",
    "quantize-router": "quantized (--quantize-router)",
    "keep-rule": "kept: matches a --keep rule",
    "keep-first": "kept: in the first N layers (--keep-first)",
    "keep-last": "kept: in the last N layers (--keep-last)",
    "lm-head": "kept: LM head (default; --quantize-lm-head to override)",
    "router": "kept: MoE router gate (default; --quantize-router to override)",
    "k-not-multiple-of-32": "kept: input dim K is not a multiple of 32",
    "experts-k-major": "kept: stacked experts stored [E, K, N] (K not last); MX blocks must run along K",
    "empty": "kept: empty tensor",
    "fused-shards": "kept: engines fuse it with a kept shard (q/k/v or gate/up must agree)",
    "moe-all-or-none": "kept: engines keep a layer's experts all BF16 or all MXFP8",
}


@dataclass(frozen=True)
class ModuleChoice:
    """One Linear weight tensor and what the converter does with it."""

    path: str                   # module path (stacked experts: ...mlp.experts)
    weight: str                 # tensor name in the checkpoint
    kind: str
    layer: int | None
    expert: int | None
    stacked: bool
    shape: tuple[int, ...]
    dtype: str
    quantize: bool
    reason: str                 # a REASONS key
    detail: str = ""            # e.g. the rule that matched

    @property
    def k(self) -> int:
        return self.shape[-1] if self.shape else 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "weight": self.weight, "kind": self.kind, "layer": self.layer,
                "expert": self.expert, "stacked": self.stacked, "shape": list(self.shape), "dtype": self.dtype,
                "action": "quantize" if self.quantize else "keep", "reason": self.reason,
                "why": REASONS[self.reason] + (f" ({self.detail})" if self.detail else "")}


@dataclass(frozen=True)
class SelectionOptions:
    keep: tuple[str, ...] = ()
    keep_first: int = 0
    keep_last: int = 0
    quantize_lm_head: bool = False
    quantize_router: bool = False


@dataclass
class Selection:
    choices: list[ModuleChoice]
    num_layers: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def quantized(self) -> list[ModuleChoice]:
        return [c for c in self.choices if c.quantize]

    @property
    def kept(self) -> list[ModuleChoice]:
        return [c for c in self.choices if not c.quantize]


def last_component(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def is_lm_head(path: str) -> bool:
    return last_component(path) in LM_HEAD_NAMES or path == "output"


def is_router(path: str) -> bool:
    return last_component(path) in ROUTER_NAMES


def moe_group(path: str) -> str | None:
    """The fused-MoE module path an expert tensor belongs to (``...mlp.experts``), else None."""
    parts = path.split(".")
    if "experts" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("experts")
    return ".".join(parts[: i + 1])


def fused_group(path: str) -> tuple[str, str] | None:
    """(parent, fused name) when ``path`` is one shard of a module engines fuse at load time."""
    parent, _, leaf = path.rpartition(".")
    for fused, shards in FUSED_SHARDS.items():
        if leaf in shards:
            return parent, fused
    return None


def count_layers(config: dict[str, Any] | None, modules: Iterable[Any]) -> int | None:
    """Decoder layer count from config (top level or text_config), else from module paths."""
    cfg = config or {}
    for c in (cfg, cfg.get("text_config") or {}):
        n = c.get("num_hidden_layers") if isinstance(c, dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    layers = [m.layer for m in modules if m.layer is not None]
    return max(layers) + 1 if layers else None


def select_modules(modules: Sequence[Any], config: dict[str, Any] | None, opts: SelectionOptions) -> Selection:
    """Decide every Linear. ``modules`` are ``mxmix.checkpoint.modules.LinearModule`` records."""
    for m in modules:
        if m.dtype in FP8_DTYPES:
            raise MxmixError(f"weight {m.weight!r} is already {m.dtype}: mxmix quantize needs a BF16/FP16/FP32 "
                             f"checkpoint")
        if m.dtype not in FLOAT_DTYPES:
            raise MxmixError(f"weight {m.weight!r} is {m.dtype}, not a float type: mxmix quantize needs a "
                             f"BF16/FP16/FP32 checkpoint")
    num_layers = count_layers(config, modules)
    for flag, n in (("--keep-first", opts.keep_first), ("--keep-last", opts.keep_last)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise MxmixError(f"{flag} needs a non-negative whole number of layers, got {n!r}")
        if n and num_layers is None:
            raise MxmixError(f"{flag}: cannot tell how many decoder layers this model has")
        if n and num_layers is not None and n > num_layers:
            raise MxmixError(f"{flag} {n} exceeds the model's {num_layers} decoder layers")
    hidden = _hidden_size(config)
    first = set(range(opts.keep_first))
    last = set(range(num_layers - opts.keep_last, num_layers)) if opts.keep_last and num_layers else set()

    compiled = None
    notes: list[str] = []
    if opts.keep:
        from mxmix.rules import compile_rules
        from mxmix.rules.lint import lint

        for finding in lint(list(opts.keep)):
            if finding.severity == "error":
                raise MxmixError(f"--keep rule {finding.rule!r}: {finding.message}")
            if finding.severity == "warning":
                notes.append(f"--keep rule {finding.rule!r}: {finding.message}")
        compiled = compile_rules(list(opts.keep))

    choices: list[ModuleChoice] = []
    for m in sorted(modules, key=lambda m: natural_key(m.weight)):
        base = ModuleChoice(m.path, m.weight, m.kind, m.layer, m.expert, m.stacked, tuple(m.shape), m.dtype,
                            True, "quantize")
        decided = _decide_one(base, compiled, first, last, opts, hidden)
        choices.append(decided)
    used = {c.detail for c in choices if c.reason == "keep-rule"}
    notes += [f"--keep rule {r!r} matched no Linear module" for r in dict.fromkeys(opts.keep) if r not in used]
    choices, grown = _make_consistent(choices)
    return Selection(choices, num_layers, notes + grown)


def _hidden_size(config: dict[str, Any] | None) -> int | None:
    cfg = config or {}
    for c in (cfg, cfg.get("text_config") or {}):
        h = c.get("hidden_size") if isinstance(c, dict) else None
        if isinstance(h, int) and not isinstance(h, bool) and h > 0:
            return h
    return None


def k_major_experts(c: ModuleChoice, hidden: int | None) -> bool:
    """A stacked expert tensor laid out [E, K, N] (e.g. GPT-OSS) rather than transformers' [E, N, K]:
    gate/up projections read the hidden state (K = hidden), down projections write it (N = hidden)."""
    if not c.stacked or hidden is None or len(c.shape) != 3 or c.shape[1] == c.shape[2]:
        return False
    proj = last_component(c.weight.removesuffix(".weight"))
    if proj in ("gate_up_proj", "gate_proj", "up_proj", "w1", "w3", "w13"):
        return c.shape[1] == hidden and c.shape[2] != hidden
    if proj in ("down_proj", "w2"):
        return c.shape[2] == hidden and c.shape[1] != hidden
    return False


def _decide_one(c: ModuleChoice, compiled: Any, first: set[int], last: set[int],
                opts: SelectionOptions, hidden: int | None) -> ModuleChoice:
    if any(d == 0 for d in c.shape):
        return replace(c, quantize=False, reason="empty")
    if k_major_experts(c, hidden):
        return replace(c, quantize=False, reason="experts-k-major", detail=f"shape {list(c.shape)}")
    if c.k % BLOCK_SIZE:
        return replace(c, quantize=False, reason="k-not-multiple-of-32", detail=f"K={c.k}")
    if compiled is not None:
        d = compiled.decide(c.path)
        if d.decision == "error":
            raise MxmixError(f"--keep rules for {c.path}: {d.reason}")
        if d.decision == "keep":
            return replace(c, quantize=False, reason="keep-rule", detail=str(d.rule))
    if c.layer is not None and c.layer in first:
        return replace(c, quantize=False, reason="keep-first", detail=f"layer {c.layer}")
    if c.layer is not None and c.layer in last:
        return replace(c, quantize=False, reason="keep-last", detail=f"layer {c.layer}")
    if is_lm_head(c.path):
        if opts.quantize_lm_head:
            return replace(c, reason="quantize-lm-head")
        return replace(c, quantize=False, reason="lm-head")
    if is_router(c.path):
        if opts.quantize_router:
            return replace(c, reason="quantize-router")
        return replace(c, quantize=False, reason="router")
    return c


def _make_consistent(choices: list[ModuleChoice]) -> tuple[list[ModuleChoice], list[str]]:
    """Propagate 'keep' across fused shards and across a layer's experts; returns notes on what grew."""
    notes: list[str] = []
    by_moe: dict[str, list[int]] = {}
    by_fused: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(choices):
        g = moe_group(c.path) if (c.stacked or c.expert is not None) else None
        if g is not None:
            by_moe.setdefault(g, []).append(i)
        elif (f := fused_group(c.path)) is not None:
            by_fused.setdefault(f, []).append(i)
    for (parent, fused), idx in by_fused.items():
        kept = [choices[i] for i in idx if not choices[i].quantize]
        if kept and len(kept) < len(idx):
            cause = kept[0].path
            for i in idx:
                if choices[i].quantize:
                    choices[i] = replace(choices[i], quantize=False, reason="fused-shards",
                                         detail=f"{fused} with {last_component(cause)}")
            notes.append(f"{parent}.{fused}: kept every shard because {cause} is kept")
    for group, idx in by_moe.items():
        kept = [choices[i] for i in idx if not choices[i].quantize]
        if kept and len(kept) < len(idx):
            cause = kept[0].path if not kept[0].stacked else kept[0].weight
            for i in idx:
                if choices[i].quantize:
                    choices[i] = replace(choices[i], quantize=False, reason="moe-all-or-none",
                                         detail=f"with {cause}")
            notes.append(f"{group}: kept all {len(idx)} expert weights because {cause} is kept")
    return choices, notes
