"""The speed paths of plan/audit against their plain forms: memoised (shared) rule indexes, the
per-parent and per-last-component indexes on realistic module paths, and lint fed the plan's columns."""

from __future__ import annotations

import random
import re

import pytest

from mxmix.errors import MxmixError
from mxmix.rules import ENGINES, compile_rules, reference_rules
from mxmix.rules.lint import lint
from mxmix.rules.primitives import (
    DOT_BOUNDARY,
    Backend,
    DotWildcardIndex,
    EndsWithIndex,
    Loop,
    LoopPatterns,
    RegexIndex,
    ends_with,
)

LAYERS = ["0", "3", "34", "340", "4", "5", "7", "12"]
TAILS = ["mlp.down_proj", "mlp.gate", "mlp.gate_proj", "mlp.up_proj", "mlp.gate_up_proj", "mlp.experts",
         "mlp.experts.7.down_proj", "mlp.experts.17.gate_proj", "self_attn.q_proj", "self_attn.qkv_proj",
         "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "input_layernorm", ""]


def _path(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(["lm_head", "model.embed_tokens", "language_model.model.layers.3.mlp.gate",
                           "model.layers.3", "model.layers.34.", ".model.layers.3.mlp", "a.bxc", "abxc",
                           "model.layersx3.mlp", "model.layers.3\n.mlp"])
    return f"model.layers.{rng.choice(LAYERS)}.{rng.choice(TAILS)}".rstrip(".")


def _rule(rng: random.Random) -> str:
    base = _path(rng)
    kind = rng.random()
    if kind < 0.15:
        return base + "."                                           # trailing-dot prefix
    if kind < 0.25:
        return "." + base                                           # leading dot
    if kind < 0.35:
        cut = rng.randint(0, len(base))
        return base[:cut]                                           # a truncated name, maybe mid-component
    if kind < 0.45:
        return base.replace(rng.choice(LAYERS), rng.choice(LAYERS), 1)
    if kind < 0.5:
        return rng.choice(["", ".", "lm_head", "gate", "a.b.c", "ab.c", "x.y", "re:model\\.layers\\.3\\.",
                           "model.layers.*.mlp", "re:(", "model.layers.3?.mlp.gate"])
    if kind < 0.6:                                                  # a '.' facing a non-dot character
        i = rng.randrange(len(base)) if base else 0
        return base[:i] + "." + base[i + 1:]
    return base


@pytest.mark.parametrize("seed", range(4))
def test_ends_with_and_dot_wildcard_on_module_paths(seed):
    rng = random.Random(seed)
    for _ in range(200):
        rules = [_rule(rng) for _ in range(rng.randint(0, 40))]
        entries = list(enumerate(rules))
        ends, ref = EndsWithIndex(entries), Loop(entries, ends_with)
        plain = [(i, r) for i, r in entries if not (set(".^$*+?{}[]|()") - {"."}) & set(r) and "\\" not in r]
        wild = DotWildcardIndex(plain)
        paths = [_path(rng) for _ in range(40)] + [r for r in rules[:10]]
        for _ in range(2):   # second pass: answered from the memos
            for s in paths:
                assert ends.first(s) == ref.first(s), (rules, s)
                expected = next((i for i, r in plain if re.match(r + DOT_BOUNDARY, s)), None)
                assert wild.first(s) == expected, (plain, s)


def test_dot_wildcard_rule_dot_faces_a_character():
    # the rule's '.' matches any character: 'ab.c' matches 'abxc' (no dot in the subject there)
    wild = DotWildcardIndex([(0, "ab.c"), (1, "a.b.c")])
    for s, expected in [("abxc", 0), ("ab.c", 0), ("aXbYc", 1), ("a.b.c.d", 1), ("abxc.d", 0), ("abxcd", None)]:
        assert wild.first(s) == expected, s
        assert expected == next((i for i, r in [(0, "ab.c"), (1, "a.b.c")]
                                 if re.match(r + DOT_BOUNDARY, s)), None)


def _safe(fn):
    try:
        return fn()
    except MxmixError as exc:
        return ("MxmixError", str(exc))


@pytest.mark.parametrize("seed", range(3))
def test_shared_backend_gives_the_reference_decisions(seed):
    """One memoising backend across every reading and several lists (as a plan and its lint use it)
    answers exactly as each reading's reference form."""
    rng = random.Random(seed)
    for _ in range(12):
        backend = Backend.shared()
        lists = [[_rule(rng) for _ in range(rng.randint(0, 25))] for _ in range(2)]
        lists.append(list(lists[0]))                     # the same list again: answered from the memo
        paths = list(dict.fromkeys(_path(rng) for _ in range(60)))
        for rules in lists:
            for engine in ENGINES:
                fast = _safe(lambda e=engine, r=rules, b=backend: compile_rules(r, e, backend=b))
                slow = _safe(lambda e=engine, r=rules: reference_rules(r, e))
                if isinstance(fast, tuple) or isinstance(slow, tuple):
                    assert fast == slow
                    continue
                assert fast.decide_many(paths) == [slow.decide(p) for p in paths], (engine, rules)


def test_shared_backend_builds_each_index_once():
    backend = Backend.shared()
    entries = [(0, "model.layers.3"), (1, "lm_head")]
    assert backend.substring(entries) is backend.substring(list(entries))
    assert backend.substring(entries) is not backend.exact(entries)
    assert backend.patterns([(0, "a", "match")]) is backend.regex([(0, "a")])
    fresh = Backend(True)                                 # the default indexed backend keeps nothing
    assert fresh.substring(entries) is not fresh.substring(entries)
    for _ in range(Backend.MEMO_SIZE + 5):                # bounded: old entries are dropped
        backend.exact([(0, str(_))])
    assert len(backend._memo) == Backend.MEMO_SIZE


def test_matches_nothing_flag():
    assert RegexIndex([]).matches_nothing and LoopPatterns([]).matches_nothing
    assert RegexIndex([(0, "(", "match")]).matches_nothing        # invalid only: a failure, no match
    for entries in ([(0, "a", "match")], [(0, "a.*", "match")], [(0, "a*", "glob")]):
        assert not RegexIndex(entries).matches_nothing
        assert not LoopPatterns(entries).matches_nothing


@pytest.mark.parametrize("seed", range(3))
def test_lint_with_decided_columns_equals_lint_alone(seed):
    from mxmix.rules.plan import runtime_path_map

    rng = random.Random(seed)
    for _ in range(10):
        rules = list(dict.fromkeys(_rule(rng) for _ in range(rng.randint(1, 12))))
        modules = list(dict.fromkeys(_path(rng) for _ in range(30)))
        engines = ["sglang", "vllm", "transformers", "compressed-tensors"]
        alone = lint(rules, modules, engines)
        runtime = runtime_path_map(modules)
        backend = Backend.shared()
        columns = {}
        for e in engines:
            compiled = _safe(lambda e=e, r=rules, b=backend: compile_rules(r, e, backend=b))
            if not isinstance(compiled, tuple):
                asked = [runtime[m] for m in modules] if ENGINES[e].runtime_names else modules
                columns[e] = compiled.decide_many(asked)
        fed = lint(rules, modules, engines, decided_columns=columns, runtime=runtime, backend=backend)
        as_maps = lint(rules, modules, engines, decided={e: dict(zip(modules, c)) for e, c in columns.items()})
        assert fed == alone == as_maps


@pytest.mark.parametrize("seed", range(3))
def test_contained_in_memo_answers_repeated_subjects(seed, monkeypatch):
    """The experts branch's index remembers each subject's answer: a second pass (and a memo that
    was cleared when full) answers as the plain loop does."""
    from mxmix.rules.primitives import ContainedInIndex, contained_in

    rng = random.Random(seed)
    monkeypatch.setattr(ContainedInIndex, "MEMO_LIMIT", 7)
    for _ in range(100):
        rules = [_rule(rng) for _ in range(rng.randint(0, 25))] + ["a\0b"] * rng.randint(0, 1)
        entries = [(i, r) for i, r in enumerate(rules) if "experts" in r or rng.random() < 0.3]
        fast, ref = ContainedInIndex(entries), Loop(entries, contained_in)
        subjects = [_path(rng) for _ in range(20)] + [r[: rng.randint(0, len(r))] for r in rules[:5]] + ["\0", "b"]
        for _ in range(2):
            for s in subjects:
                assert fast.first(s) == ref.first(s), (entries, s)
