"""The fast primitives and the near-linear lint against their plain reference forms, on random and
adversarial inputs (literal patterns, escaped dots, newlines, long rule lists, many lengths)."""

from __future__ import annotations

import random
import re

import pytest

from mxmix.errors import MxmixError
from mxmix.rules.lint import _dead_rules
from mxmix.rules.plan import runtime_path_map
from mxmix.rules.primitives import (
    DOT_BOUNDARY,
    FULL,
    GLOB,
    GLOB_ANCESTORS,
    MATCH,
    ContainedInIndex,
    DotWildcardIndex,
    EndsWithIndex,
    Loop,
    LoopPatterns,
    RegexIndex,
    SubstringIndex,
    contained_in,
    ends_with,
    regex_literal,
    substring,
)

PIECES = ["a", "b", ".", "\\.", "*", "ab", "0", "x.y", "\\-", "-", "?", "[ab]", "\n", "", "(", "|"]


def _text(rng: random.Random, k: int, alphabet: str = "ab.x0-\n") -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, k)))


@pytest.mark.parametrize("seed", range(3))
def test_regex_index_with_literal_patterns_matches_reference(seed):
    rng = random.Random(seed)
    for _ in range(400):
        entries = [(i, "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4))),
                    rng.choice([MATCH, FULL, GLOB, GLOB_ANCESTORS])) for i in range(rng.randint(0, 6))]
        fast, ref = RegexIndex(entries), LoopPatterns(entries)
        assert (fast.failure is None) == (ref.failure is None)
        if fast.failure is not None:
            assert fast.failure.index == ref.failure.index
        for _ in range(10):
            s = _text(rng, 8)
            assert fast.first(s) == ref.first(s), (entries, s)


def test_regex_literal():
    assert regex_literal("model\\.layers\\.3") == "model.layers.3"
    assert regex_literal("lm_head") == "lm_head"
    for pattern in ("model.layers", "a\\d", "a+", "(a)", "a|b", "a\\"):
        assert regex_literal(pattern) is None


@pytest.mark.parametrize("seed", range(3))
def test_string_indexes_match_reference(seed):
    rng = random.Random(seed)
    for _ in range(300):
        alphabet = rng.choice(["ab.x0", "abcdefghijklmnop.0"])
        # sometimes more distinct lengths than EndsWithIndex tabulates (trie path)
        entries = [(i, _text(rng, rng.choice([4, 40]), alphabet))
                   for i in sorted(rng.sample(range(200), rng.randint(0, rng.choice([6, 60]))))]
        pairs = [(SubstringIndex(entries), Loop(entries, substring)),
                 (EndsWithIndex(entries), Loop(entries, ends_with)),
                 (ContainedInIndex(entries), Loop(entries, contained_in))]
        wild = DotWildcardIndex(entries)
        subjects = [_text(rng, 20, alphabet + ("\n" if rng.random() < 0.1 else "")) for _ in range(10)]
        for s in subjects * 2:   # the second time from the indexes' memos
            for fast, ref in pairs:
                assert fast.first(s) == ref.first(s), (type(fast).__name__, entries, s)
            expected = next((i for i, r in entries if re.match(r + DOT_BOUNDARY, s)), None)
            assert wild.first(s) == expected, (entries, s)


def test_substring_index_long_nested_rules():
    entries = [(i, "a" * (i + 1)) for i in range(1500)]
    fast, ref = SubstringIndex(entries), Loop(entries, substring)
    for s in ("b" + "a" * 700, "a" * 2000, "b"):
        assert fast.first(s) == ref.first(s)


COMPONENTS = ["model", "layers", "0", "1", "mlp", "experts", "gate_proj", "up_proj", "q_proj", "k_proj",
              "v_proj", "qkv_proj", "gate_up_proj", "self_attn", "lm_head", "w1"]


@pytest.mark.parametrize("seed", range(3))
def test_dead_rules_match_one_rule_at_a_time(seed):
    """The trie-walk dead-rule test equals deciding every module with each rule alone (canonical)."""
    from mxmix.rules import compile_rules
    from mxmix.rules.decision import ERROR, KEEP

    rng = random.Random(seed)

    def path() -> str:
        return ".".join(rng.choice(COMPONENTS) for _ in range(rng.randint(1, 5)))

    for _ in range(150):
        modules = list(dict.fromkeys([path() for _ in range(rng.randint(1, 10))]
                                     + ["model.layers.0.mlp.experts"] * rng.randint(0, 1)
                                     + ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]))
        rules = list(dict.fromkeys(
            rng.choice([path(), path(), "re:model\\.layers\\.1", "model.layers.*.mlp", "", " lm_head",
                        "0.gate_proj", "experts.1.w1", "model.layers.1."]) for _ in range(rng.randint(1, 6))))
        expected = []
        for rule in rules:
            try:
                compiled = compile_rules([rule], "canonical")
            except MxmixError:  # an invalid regex is never reported dead
                continue
            if rule.strip().strip(".") == "":
                continue
            if not any(compiled.decide(m).decision in (KEEP, ERROR) for m in modules):
                expected.append(rule)
        assert _dead_rules(rules, modules, runtime_path_map(modules)) == expected, (rules, modules)


def test_dot_wildcard_literal_test_equals_its_definition():
    from mxmix.rules.primitives import _REGEX_META, is_dot_wildcard_literal

    rng = random.Random(4)
    alphabet = list(".^$*+?{}[]|()\\ab0_")
    for _ in range(5000):
        rule = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        assert is_dot_wildcard_literal(rule) == (not (_REGEX_META - {"."}) & set(rule) and "\\" not in rule)
