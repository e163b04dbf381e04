"""The batch paths of the bulk readings against the reference, path by path: the needle filter
(``NeedleFilter``) that lets ``decide_many`` skip paths no rule can touch, the radix trie built from
sorted keys, and the one-match literal test of ``regex_literal``."""

from __future__ import annotations

import random

import pytest

from mxmix.errors import MxmixError
from mxmix.rules import ENGINES, compile_rules, reference_rules
from mxmix.rules import reading as reading_module
from mxmix.rules.primitives import (
    _REGEX_META,
    Backend,
    NeedleFilter,
    _char_trie,
    _escaped_length,
    _first_table,
    _radix,
    _radix_sorted,
    regex_literal,
    regex_literal_prefix,
)

LAYERS = ["0", "3", "34", "340", "4", "5", "63", "6"]
TAILS = ["mlp.down_proj", "mlp.gate", "mlp.gate_proj", "mlp.up_proj", "mlp.gate_up_proj", "mlp.experts",
         "mlp.experts.7.down_proj", "mlp.experts.17.gate_proj", "mlp.experts.1.up_proj", "self_attn.q_proj",
         "self_attn.qkv_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
ODD = ["lm_head", "model.embed_tokens", "language_model.model.layers.3.mlp.gate", "model.layers.3",
       "model.layers.34.", ".model.layers.3.mlp", "a.bxc", "abxc", "model.layersx3.mlp", "", "x"]


def _path(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return rng.choice(ODD)
    return f"model.layers.{rng.choice(LAYERS)}.{rng.choice(TAILS)}"


def _rule(rng: random.Random) -> str:
    base = _path(rng)
    kind = rng.random()
    if kind < 0.1:
        return base + "."                                           # trailing dot
    if kind < 0.15:
        return "." + base
    if kind < 0.3:
        return base[:rng.randint(0, len(base))]                     # truncated, maybe mid-component
    if kind < 0.4:
        return base[rng.randint(0, len(base)):]                     # a tail
    if kind < 0.45:
        return rng.choice(["", ".", "gate", "proj", "a.b.c", "ab.c", "experts", "qkv_proj", "re:model\\.layers\\.3\\.",
                           "model.layers.*.mlp", "re:(", "model.layers.3?.mlp.gate", "mlp.gate", "x\ny"])
    if kind < 0.55:                                                 # a '.' facing another character
        i = rng.randrange(len(base)) if base else 0
        return base[:i] + "." + base[i + 1:]
    return base


@pytest.fixture
def always_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading_module, "BATCH_MIN", 0)


@pytest.mark.parametrize("seed", range(6))
def test_decide_many_batch_equals_reference(seed: int, always_batch: None) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        rules = [_rule(rng) for _ in range(rng.choice([0, 1, 3, 8, 30]))]
        if rng.random() < 0.5:   # no pattern rules: the filtered paths of canonical / compressed-tensors
            rules = [r for r in rules if not r.startswith("re:") and not set("*?[") & set(r)]
        paths = [_path(rng) for _ in range(rng.choice([1, 40, 300]))]
        if rng.random() < 0.1:
            paths.append("model.layers.3\n.mlp")                     # a newline: the filter gives up
        backend = Backend.shared()
        for engine in ENGINES:
            try:
                bulk = compile_rules(rules, engine, backend=backend)
            except MxmixError:   # an invalid re: rule in the canonical reading: refused alike
                with pytest.raises(MxmixError):
                    reference_rules(rules, engine)
                continue
            ref = reference_rules(rules, engine)
            assert bulk.decide_many(paths) == [ref.decide(p) for p in paths], (engine, rules)


def test_decide_many_filter_is_used(always_batch: None) -> None:
    """On a list of full names the filter narrows the exact work to the named paths."""
    rules = ["model.layers.3.mlp.gate", "model.layers.63.mlp.experts.1.up_proj", "lm_head"]
    paths = [f"model.layers.{layer}.mlp.experts.{e}.up_proj" for layer in range(70) for e in range(4)]
    for engine in ("canonical", "transformers", "transformers-4"):
        compiled = compile_rules(rules, engine)
        found = compiled.reading.candidates(paths)
        assert found == {paths.index("model.layers.63.mlp.experts.1.up_proj")}, engine
        assert compiled.decide_many(paths) == [reference_rules(rules, engine).decide(p) for p in paths]


def _contains(needle: str, subject: str, dots: bool) -> bool:
    if not dots:
        return needle in subject
    n = len(needle)
    return any(all((c == "." and s != "\n") or c == s for c, s in zip(needle, subject[i:i + n]))
               for i in range(len(subject) - n + 1))


def _starts(needle: str, subject: str, dots: bool) -> bool:
    return len(subject) >= len(needle) and _contains(needle, subject[:len(needle)], dots)


@pytest.mark.parametrize("anchored", [False, True])
@pytest.mark.parametrize("dots", [False, True])
def test_needle_filter_never_misses(dots: bool, anchored: bool) -> None:
    rng = random.Random(7)
    alphabet = "ab.c3\n"
    test = _starts if anchored else _contains
    for _ in range(3000):
        needles = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 5))]
        subjects = ["".join(rng.choice(alphabet[:-1]) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 12))]
        found = NeedleFilter(needles, dots=dots, anchored=anchored).candidates(subjects)
        if found is None:
            assert "" in needles or any("\n" in n for n in needles)
            continue
        truth = {i for i, s in enumerate(subjects) if any(test(n, s, dots) for n in needles)}
        assert truth <= found
        # and it does filter: a reported subject holds (anchored: starts with) some needle's first character
        assert found <= {i for i, s in enumerate(subjects) if any(test(n[:1], s, dots) for n in needles)}


def test_anchored_needle_filter_reports_only_line_starts() -> None:
    subjects = ["model.layers.3.mlp", "x.model.layers.3.mlp", "model.layers.34.mlp", "", "model.layers"]
    assert NeedleFilter(["model.layers.3."]).candidates(subjects) == {0, 1}
    assert NeedleFilter(["model.layers.3."], dots=True).candidates(subjects) == {0, 1, 2}
    assert NeedleFilter(["model.layers.3."], anchored=True).candidates(subjects) == {0}
    assert NeedleFilter(["model.layers.3."], dots=True, anchored=True).candidates(subjects) == {0, 2}
    assert NeedleFilter(["model"], anchored=True).candidates(["model"] * 3 + ["amodel"]) == {0, 1, 2}


def test_needle_filter_small_budget_still_sound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads cut short to fit the budget: fewer exclusions, never a missed subject."""
    monkeypatch.setattr(NeedleFilter, "BUDGET", 12)
    needles = [f"model.layers.{i}.mlp" for i in range(40)]
    subjects = [f"model.layers.{i}.mlp.x" for i in range(80)] + ["other", "model.layerz"]
    found = NeedleFilter(needles).candidates(subjects)
    assert found is not None and set(range(40)) <= found and len(subjects) - 1 not in found


def test_radix_from_sorted_keys_equals_char_trie() -> None:
    def plain(d):
        return {ch: (label, [plain(edges), hit]) for ch, (label, (edges, hit)) in d.items()}

    rng = random.Random(3)
    alphabet = "ab.c\x00\U0010ffffé"
    for _ in range(5000):
        entries = [(rng.randrange(20), "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))))
                   for _ in range(rng.randint(0, 12))]
        table = _first_table(entries)
        table.pop("", None)
        assert plain(_radix_sorted(table)) == plain(_radix(_char_trie(entries)[0]))


def test_regex_literal_fast_path_equals_prefix_scan() -> None:
    def scan(pattern: str) -> str | None:
        if "\\" not in pattern:
            return None if _REGEX_META & set(pattern) else pattern
        prefix = regex_literal_prefix(pattern)
        return prefix if _escaped_length(pattern, prefix) == len(pattern) else None

    rng = random.Random(11)
    alphabet = list("ab._\\\\*?[]()|^${}+-0 \n\té9Z/:\u00a0\u2003\u0663")
    for _ in range(100_000):
        p = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        assert regex_literal(p) == scan(p), p
    assert regex_literal(r"model\.layers\.3\.mlp") == "model.layers.3.mlp"
    assert regex_literal(r"a\\\.b") == "a\\.b"
