"""The compressed-tensors library's own matching, 0.20.0 (engine-semantics.md §5).

Mirrors ``match_name`` in ``src/compressed_tensors/utils/match.py`` as ``is_match`` applies it to
an ``ignore`` list: ``re:`` = start-anchored regex, otherwise exact name. A name that *ends with* a
fused suffix (``qkv_proj``, ``gate_up_proj``) is never tested itself: it matches if *any* of its
shards does — unlike the serving engines' all-or-raise, so a producer relying on it can write
checkpoints vLLM and SGLang refuse.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxmix.rules.decision import KEEP, QUANTIZE
from mxmix.rules.reading import PathReading, Verdict, first_hit, quiet_unless


def build_compressed_tensors(rules, fused, backend) -> PathReading:
    regex = backend.regex([(i, r[3:]) for i, r in enumerate(rules) if r.startswith("re:")])
    exact = backend.exact([(i, r) for i, r in enumerate(rules) if not r.startswith("re:")])

    suffixes = tuple(fused)
    # no usable re: rule (the usual list): the regex side answers None everywhere and raises nowhere
    plain_only = regex.matches_nothing and regex.failure is None

    def hit_of(p: str) -> int | None:
        return first_hit(regex.first(p), exact.first(p))

    def reading(path: str) -> Verdict:
        if not path.endswith(suffixes):
            hit = exact.first(path) if plain_only else first_hit(hit_of(path), failures=[regex.failure])
            if hit is not None:
                return KEEP, hit, f"rule {rules[hit]!r} matches the name (regex start or exact)"
            return QUANTIZE, None, "no rule matches"
        for suffix, shards in fused.items():
            if path.endswith(suffix):
                stem = path[: len(path) - len(suffix)]
                hits = [(hit_of(stem + s), stem + s) for s in shards]
                found = [(h, s) for h, s in hits if h is not None]
                best = min(found)[0] if found else None
                best = first_hit(best, failures=[regex.failure])
                if best is None:
                    return QUANTIZE, None, "fused name: no rule matches any of its shards"
                shard = min(found)[1]
                return KEEP, best, f"fused name matches because its shard {shard} matches rule {rules[best]!r}"
        hit = first_hit(hit_of(path), failures=[regex.failure])
        if hit is not None:
            return KEEP, hit, f"rule {rules[hit]!r} matches the name (regex start or exact)"
        return QUANTIZE, None, "no rule matches"

    if plain_only:
        needles = backend.needles(r for r in rules if not r.startswith("re:"))

        def candidates(paths: Sequence[str]) -> set[int] | None:
            found = needles.candidates(paths)
            return None if found is None else found | backend.ends_component(paths, suffixes)

        quiet_unless(reading, candidates, (QUANTIZE, None, "no rule matches"))
    return reading
