"""transformers' readings of a skip list (engine-semantics.md §4).

5.24.0 mirrors ``should_convert_module`` in ``src/transformers/quantizers/quantizers_utils.py``:
each rule is a *regex* followed by a dot boundary, matched at the start of the full name, or a raw
suffix of it. 4.57.6 mirrors ``finegrained_fp8.py``: membership or substring. transformers has no
fused modules: the reading applies to whatever (unfused, checkpoint-named) path is asked.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxmix.rules.decision import KEEP, QUANTIZE
from mxmix.rules.primitives import DOT_BOUNDARY, is_dot_wildcard_literal
from mxmix.rules.reading import PathReading, Verdict, first_hit, quiet_unless

BOUNDARY = DOT_BOUNDARY


def build_transformers(rules, fused, backend) -> PathReading:
    """5.24: ``re.match("(?:rule)" + boundary, name)`` or ``name.endswith(rule)``; a bad pattern raises."""
    literal = list(map(is_dot_wildcard_literal, rules))
    simple = [(i, r) for i, r, lit in zip(range(len(rules)), rules, literal) if lit]
    wild = backend.dot_wildcard(simple)
    # transformers groups the key, so the boundary applies to every alternative of a '|' rule
    regex = backend.regex([(i, f"(?:{r}){BOUNDARY}") for i, r, lit in zip(range(len(rules)), rules, literal)
                           if not lit])
    ends = backend.ends_with(list(enumerate(rules)))
    # every rule a plain name (the usual list): the regex side answers None everywhere and raises nowhere
    plain_only = regex.matches_nothing and regex.failure is None

    def reading(path: str) -> Verdict:
        if plain_only:
            r_hit = wild.first(path)
            e_hit = ends.first(path)
            hit = e_hit if r_hit is None or (e_hit is not None and e_hit < r_hit) else r_hit
        else:
            r_hit = first_hit(wild.first(path), regex.first(path))
            e_hit = ends.first(path)
            hit = first_hit(r_hit, e_hit, failures=[regex.failure])
        if hit is None:
            return QUANTIZE, None, "no rule matches"
        if hit == r_hit:
            return KEEP, hit, f"rule {rules[hit]!r}, read as a regex, matches the start of the name at a dot boundary"
        return KEEP, hit, f"the name ends with rule {rules[hit]!r}"

    if plain_only:
        # a dot-wildcard rule matches at the start of the name; a rule ending the name occurs in it
        wild_needles = backend.needles((r for _, r in simple), dots=True, anchored=True)
        end_needles = backend.needles(rules)

        def candidates(paths: Sequence[str]) -> set[int] | None:
            a = wild_needles.candidates(paths)
            b = end_needles.candidates(paths) if a is not None else None
            return None if b is None else a | b

        quiet_unless(reading, candidates, (QUANTIZE, None, "no rule matches"))
    return reading


def build_transformers_4(rules, fused, backend) -> PathReading:
    """4.57: the name is in the list or any rule is a substring of it."""
    sub = backend.substring(list(enumerate(rules)))

    def reading(path: str) -> Verdict:
        hit = sub.first(path)
        if hit is not None:
            return KEEP, hit, f"rule {rules[hit]!r} is a substring of the name"
        return QUANTIZE, None, "no rule matches"

    return quiet_unless(reading, backend.needles(rules).candidates, (QUANTIZE, None, "no rule matches"))
