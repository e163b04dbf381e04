"""SGLang's readings of a skip list (engine-semantics.md §2).

Mirrors ``is_layer_skipped`` in ``python/sglang/srt/layers/quantization/utils.py`` in its three
historical states, ``Fp8Config``'s ``model.`` normalisation of the list, ``should_ignore_layer``
(compressed-tensors) and the ModelOpt configs' ``is_layer_excluded``. Bugs are reproduced on
purpose: these functions predict what SGLang does, not what it should do.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxmix.rules.decision import DEFAULT_FUSED, KEEP, QUANTIZE
from mxmix.rules.primitives import Backend, _min, is_dot_wildcard_literal
from mxmix.rules.reading import (
    EngineRaised,
    PathReading,
    Verdict,
    agree_on_shards,
    first_hit,
    shard_paths_replace,
)

MODELOPT_FUSED_TAILS = frozenset({"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"})


def _fp8_skipped(rules: Sequence[str], fused: dict[str, tuple[str, ...]], backend: Backend, mode: str,
                 entries: Sequence[tuple[int, str]] | None = None):
    """``is_layer_skipped`` as a function path -> Verdict (raises EngineRaised on mixed shards).

    mode "dot": 0.5.23 (component runs after ``rstrip('.')`` of rule and path);
    mode "dot-raw": the #23467 state (component runs, no strip);
    mode "substring": before #23467 (``rule in path``).
    ``entries`` overrides the (rule index, entry) list (Fp8Config's expanded list).
    """
    entries = list(entries) if entries is not None else list(enumerate(rules))
    if backend.indexed:
        entries = _first_of_each(entries)
    if mode == "dot":
        matcher = backend.components([(i, tuple(r.rstrip(".").split("."))) for i, r in entries])

        def test(p: str) -> int | None:
            return matcher.first(tuple(p.rstrip(".").split(".")))
        how = "names whole components of the path (after trailing-dot strip)"
    elif mode == "dot-raw":
        matcher = backend.components([(i, tuple(r.split("."))) for i, r in entries])

        def test(p: str) -> int | None:
            return matcher.first(tuple(p.split(".")))
        how = "names whole components of the path"
    elif mode == "substring":
        matcher = backend.substring(entries)
        test = matcher.first
        how = "is a substring of the path"
    else:  # pragma: no cover - programming error
        raise ValueError(mode)
    experts = backend.contained_in([(i, r) for i, r in entries if "experts" in r])

    def skipped(path: str) -> Verdict:
        proj = path[path.rfind(".") + 1:]
        if proj in fused:
            shards = shard_paths_replace(path, proj, fused[proj])
            return agree_on_shards(path, shards, [test(s) for s in shards], rules)
        hit = test(path)
        if hit is not None:
            return KEEP, hit, f"rule {rules[hit]!r} {how}"
        if "experts" in path:
            hit = experts.first(path)
            if hit is not None:
                return KEEP, hit, (f"experts branch: the path is a substring of rule {rules[hit]!r}, "
                                   "so the whole FusedMoE stays unquantized")
        return QUANTIZE, None, "no rule matches"

    return skipped


def _first_of_each(entries: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``entries`` without the repeats of a rule text (each text with its smallest index): every test
    here answers the smallest index among the texts that pass, so a repeat never decides. Fp8Config's
    list read again (``skip_list_for``) holds each text twice."""
    texts = [r for _, r in entries]
    if len(set(texts)) == len(texts):
        return entries
    smallest = dict(zip(reversed(texts), reversed([i for i, _ in entries])))   # the last write wins: the first
    return sorted((i, r) for r, i in smallest.items())


def build_sglang(rules, fused, backend) -> PathReading:
    """SGLang 0.5.23+: dot-boundary component match with trailing-dot normalisation (#26287)."""
    return _fp8_skipped(rules, fused, backend, "dot")


# #23467's fallback packed mapping also unfused the Qwen3.5 linear-attention tensors (later removed:
# they are real unified tensors, engine-semantics.md §2.2).
FALLBACK_23467_EXTRA = {"in_proj_ba": ("in_proj_b", "in_proj_a"), "in_proj_qkvz": ("in_proj_qkv", "in_proj_z")}


def build_sglang_23467(rules, fused, backend) -> PathReading:
    """The #23467 state: dot-boundary without the trailing-dot strip (``model.layers.34.`` matches nothing).

    With the default mapping, its wider fallback (``in_proj_ba``, ``in_proj_qkvz``) applies too."""
    if fused == DEFAULT_FUSED:
        fused = {**fused, **FALLBACK_23467_EXTRA}
    return _fp8_skipped(rules, fused, backend, "dot-raw")


def build_sglang_legacy(rules, fused, backend) -> PathReading:
    """Before #23467: plain substring, with the experts branch on top."""
    return _fp8_skipped(rules, fused, backend, "substring")


def fp8config_entries(rules: Sequence[str]) -> list[tuple[int, str]]:
    """``Fp8Config``'s list: each entry without a leading ``model.``, then ``model.`` + that."""
    out = []
    for i, r in enumerate(rules):
        base = r[len("model."):] if r.startswith("model.") else r
        out.append((i, base))
        out.append((i, "model." + base))
    return out


def build_sglang_fp8config(rules, fused, backend) -> PathReading:
    """0.5.23 matching after Fp8Config's ``model.`` normalisation (``""`` becomes ``model.``: keeps all)."""
    return _fp8_skipped(rules, fused, backend, "dot", entries=fp8config_entries(rules))


def build_sglang_compressed_tensors(rules, fused, backend) -> PathReading:
    """``should_ignore_layer``: ``re:`` start-anchored, else equal or dotted suffix. A fused path that
    is not literally in the list is decided by its shards (all or ValueError), whatever else matches it."""
    regex = backend.regex([(i, r[3:]) for i, r in enumerate(rules) if r.startswith("re:")])
    suffix = backend.dotted_suffix([(i, r) for i, r in enumerate(rules) if not r.startswith("re:")])
    listed = backend.exact(list(enumerate(rules)))

    def test(p: str) -> int | None:
        return first_hit(regex.first(p), suffix.first(p), failures=[regex.failure])

    def reading(path: str) -> Verdict:
        proj = path[path.rfind(".") + 1:]
        if proj in fused and listed.first(path) is None:
            shards = shard_paths_replace(path, proj, fused[proj])
            return agree_on_shards(path, shards, [test(s) for s in shards], rules)
        hit = test(path)
        if hit is not None:
            return KEEP, hit, f"rule {rules[hit]!r} matches the path (regex start, equal or dotted suffix)"
        return QUANTIZE, None, "no rule matches"

    return reading


def modelopt_excluded(rules: Sequence[str], backend: Backend):
    """``is_layer_excluded``: ``.`` escaped, ``*``→``.*``, full match on the path (and without a
    leading ``language_model.``) and on each single component; a substring test on the last
    component for the MLA fused tails."""
    # a rule with no regex metacharacter but '.' converts to a literal: it fully matches only itself
    # (the indexed form looks those up; the reference form tries every conversion as a regex)
    literal = list(map(is_dot_wildcard_literal, rules)) if backend.indexed else [False] * len(rules)
    exact = backend.exact([(i, r) for i, r, lit in zip(range(len(rules)), rules, literal) if lit])
    converted = [(i, r.replace(".", r"\.").replace("*", ".*")) for i, r, lit in zip(range(len(rules)), rules, literal)
                 if not lit]
    regex = backend.regex(converted, full=True)
    tails = backend.substring([(i, r.rsplit(".", 1)[-1]) for i, r in enumerate(rules)
                               if r.rsplit(".", 1)[-1] in MODELOPT_FUSED_TAILS])
    literal_only = regex.matches_nothing and regex.failure is None

    def full(s: str) -> int | None:
        """The smallest rule whose conversion fully matches ``s``."""
        if literal_only:
            return exact.first(s)
        return _min(exact.first(s), regex.first(s))

    def excluded(path: str) -> int | None:
        variants = [path]
        if path.startswith("language_model."):
            variants.append(path[len("language_model."):])
        hits = []
        for v in variants:
            hits.append(full(v))
            hits.extend(full(part) for part in v.split("."))
            hits.append(tails.first(v.rsplit(".", 1)[-1]))
        return first_hit(*hits, failures=[regex.failure])

    return excluded


def build_sglang_modelopt(rules, fused, backend) -> PathReading:
    """ModelOpt configs: Linear skipped if ``is_layer_skipped`` (0.5.23) or ``is_layer_excluded``;
    a FusedMoE (``…experts``) consults ``is_layer_excluded`` only."""
    skipped = _fp8_skipped(rules, fused, backend, "dot")
    excluded = modelopt_excluded(rules, backend)

    def reading(path: str) -> Verdict:
        if path.split(".")[-1] != "experts":
            verdict = skipped(path)
            if verdict[0] == KEEP:
                return verdict
        hit = excluded(path)
        if hit is not None:
            return KEEP, hit, (f"is_layer_excluded: rule {rules[hit]!r} (as a regex with '*'→'.*') fully "
                               "matches the path, one of its components or an MLA fused tail")
        return QUANTIZE, None, "no rule matches"

    return reading


__all__ = [
    "EngineRaised",
    "build_sglang",
    "build_sglang_23467",
    "build_sglang_compressed_tensors",
    "build_sglang_fp8config",
    "build_sglang_legacy",
    "build_sglang_modelopt",
    "fp8config_entries",
    "modelopt_excluded",
]
