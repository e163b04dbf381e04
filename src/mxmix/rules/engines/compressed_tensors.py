"""The compressed-tensors library's own matching, 0.20.0 (engine-semantics.md §5).

Mirrors ``src/compressed_tensors/utils/match.py``: ``re:`` = start-anchored regex, otherwise exact
name. A fused name matches if *any* shard matches — unlike the serving engines' all-or-raise, so
a producer relying on it can write checkpoints vLLM and SGLang refuse.
"""

from __future__ import annotations

from mxmix.rules.decision import KEEP, QUANTIZE
from mxmix.rules.reading import PathReading, Verdict, first_hit, shard_paths_replace


def build_compressed_tensors(rules, fused, backend) -> PathReading:
    regex = backend.regex([(i, r[3:]) for i, r in enumerate(rules) if r.startswith("re:")])
    exact = backend.exact([(i, r) for i, r in enumerate(rules) if not r.startswith("re:")])

    def test(p: str) -> int | None:
        return first_hit(regex.first(p), exact.first(p), failures=[regex.failure])

    def reading(path: str) -> Verdict:
        hit = test(path)
        if hit is not None:
            return KEEP, hit, f"rule {rules[hit]!r} matches the name (regex start or exact)"
        proj = path.split(".")[-1]
        if proj in fused:
            for shard in shard_paths_replace(path, proj, fused[proj]):
                hit = test(shard)
                if hit is not None:
                    return KEEP, hit, f"fused name matches because its shard {shard} matches rule {rules[hit]!r}"
        return QUANTIZE, None, "no rule matches"

    return reading
