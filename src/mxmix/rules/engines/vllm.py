"""vLLM 0.33.0's readings of a skip list (engine-semantics.md §3).

Mirrors ``is_layer_skipped`` in ``vllm/model_executor/layers/quantization/utils/quant_utils.py``
(match modes exact / substring / suffix), compressed-tensors' ``should_ignore_layer`` and the
ModelOpt configs' ``is_layer_excluded``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxmix.rules.decision import KEEP, QUANTIZE
from mxmix.rules.primitives import Backend
from mxmix.rules.reading import (
    PathReading,
    Verdict,
    agree_on_shards,
    first_hit,
    shard_paths_replace,
)

VISION_MARKERS = ("vision_tower", "vision_model", "vit_large_projector")
CT_EXPERT_ZERO = ("gate_proj", "up_proj", "down_proj")


def is_layer_skipped(rules: Sequence[str], fused: dict[str, tuple[str, ...]], backend: Backend, mode: str):
    """path -> Verdict, raising EngineRaised on mixed shards.

    Order: a packed path that matches directly is skipped; otherwise its shards must agree; in
    exact mode a path containing ``experts`` is skipped iff it is a substring of a rule containing
    ``experts``; otherwise the mode's test decides.
    """
    if mode == "exact":
        matcher = backend.exact(list(enumerate(rules)))
        how = "equals the path"
    elif mode == "substring":
        matcher = backend.substring(list(enumerate(rules)))
        how = "is a substring of the path"
    elif mode == "suffix":
        matcher = backend.dotted_suffix(list(enumerate(rules)))
        how = "equals the path or is its dotted suffix"
    else:  # pragma: no cover - programming error
        raise ValueError(mode)
    experts = backend.contained_in([(i, r) for i, r in enumerate(rules) if "experts" in r])

    def skipped(path: str) -> Verdict:
        proj = path.split(".")[-1]
        if proj in fused:
            hit = matcher.first(path)
            if hit is not None:
                return KEEP, hit, f"packed module listed directly: rule {rules[hit]!r} {how}"
            shards = shard_paths_replace(path, proj, fused[proj])
            return agree_on_shards(path, shards, [matcher.first(s) for s in shards], rules)
        if mode == "exact" and "experts" in path:
            hit = experts.first(path)
            if hit is not None:
                return KEEP, hit, (f"experts branch: the path is a substring of rule {rules[hit]!r}, "
                                   "so the whole FusedMoE stays unquantized")
            return QUANTIZE, None, "experts branch: the path is not a substring of any rule naming experts"
        hit = matcher.first(path)
        if hit is not None:
            return KEEP, hit, f"rule {rules[hit]!r} {how}"
        return QUANTIZE, None, "no rule matches"

    return skipped


def _is_lm_head(path: str) -> bool:
    return path.split(".")[-1] == "lm_head"


def build_vllm(rules, fused, backend) -> PathReading:
    """``Fp8Config`` / mxfp8: exact membership (fused and experts handling); LM head never quantized."""
    skipped = is_layer_skipped(rules, fused, backend, "exact")

    def reading(path: str) -> Verdict:
        verdict = skipped(path)
        if verdict[0] != KEEP and _is_lm_head(path):
            return KEEP, None, "vLLM Fp8Config never quantizes the LM head"
        return verdict

    return reading


def build_vllm_substring(rules, fused, backend) -> PathReading:
    """Substring mode (AWQ family; older vLLM ``skip_with_substr=True``)."""
    return is_layer_skipped(rules, fused, backend, "substring")


def build_vllm_suffix(rules, fused, backend) -> PathReading:
    """Suffix mode (path equals the rule or ends with ``"." + rule``; bailing_moe_v3 only)."""
    return is_layer_skipped(rules, fused, backend, "suffix")


def build_vllm_compressed_tensors(rules, fused, backend) -> PathReading:
    """``should_ignore_layer``: ``re:`` start-anchored else exact. A fused path literally in the list
    is kept; otherwise its shards decide (all or ValueError). A FusedMoE looks only at expert 0's
    gate/up/down projections."""
    regex = backend.regex([(i, r[3:]) for i, r in enumerate(rules) if r.startswith("re:")])
    exact = backend.exact([(i, r) for i, r in enumerate(rules) if not r.startswith("re:")])
    listed = backend.exact(list(enumerate(rules)))

    def test(p: str) -> int | None:
        return first_hit(regex.first(p), exact.first(p), failures=[regex.failure])

    def reading(path: str) -> Verdict:
        proj = path[path.rfind(".") + 1:]
        if proj == "experts":
            shards = [f"{path}.0.{s}" for s in CT_EXPERT_ZERO]
            return agree_on_shards(path, shards, [test(s) for s in shards], rules,
                                   what="expert-0 projections")
        if proj in fused and listed.first(path) is None:
            shards = shard_paths_replace(path, proj, fused[proj])
            return agree_on_shards(path, shards, [test(s) for s in shards], rules)
        hit = test(path)
        if hit is not None:
            return KEEP, hit, f"rule {rules[hit]!r} matches the path (regex start or exact name)"
        return QUANTIZE, None, "no rule matches"

    return reading


def build_vllm_modelopt(rules, fused, backend) -> PathReading:
    """ModelOpt: (1) exact ``is_layer_skipped``; (2) substring, also without ``language_model.``;
    (3) ``fnmatch`` on the whole path. Vision-tower paths always stay unquantized."""
    skipped = is_layer_skipped(rules, fused, backend, "exact")
    sub = backend.substring(list(enumerate(rules)))
    glob = backend.glob(list(enumerate(rules)))

    def reading(path: str) -> Verdict:
        verdict = skipped(path)
        if verdict[0] == KEEP:
            return verdict
        hit = sub.first(path)
        if path.startswith("language_model."):
            alt = sub.first(path[len("language_model."):])
            hit = alt if hit is None or (alt is not None and alt < hit) else hit
        if hit is not None:
            return KEEP, hit, f"substring step: rule {rules[hit]!r} occurs in the path"
        hit = first_hit(glob.first(path))
        if hit is not None:
            return KEEP, hit, f"fnmatch step: rule {rules[hit]!r} matches the path as a glob"
        if any(m in path for m in VISION_MARKERS):
            return KEEP, None, "vLLM ModelOpt never quantizes vision-tower modules"
        return QUANTIZE, None, "no rule matches"

    return reading
