"""Lint's fast paths against their plain definitions: engine divergences grouped by the paths each
row asks (against the per-row loop over Decisions), and dead rules on lists of full module names
(where every rule is some module's path and the walk is skipped) against deciding rule by rule."""

from __future__ import annotations

import random

import pytest

from mxmix.errors import MxmixError
from mxmix.rules import ENGINES, compile_rules, reference_rules
from mxmix.rules.decision import ERROR, KEEP
from mxmix.rules.lint import INFO, MAX_EXAMPLES, WARNING, LintFinding, _dead_rules, lint
from mxmix.rules.plan import runtime_path_map
from mxmix.rules.primitives import Backend

COMPONENTS = ["model", "layers", "0", "1", "34", "340", "mlp", "experts", "3", "gate_proj", "up_proj", "down_proj",
              "q_proj", "k_proj", "v_proj", "o_proj", "gate", "self_attn", "lm_head", "w1"]


def _modules(rng: random.Random) -> list[str]:
    out = []
    for _ in range(rng.randint(1, 40)):
        layer = rng.choice(["0", "1", "34", "340"])
        tail = rng.choice(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "mlp.gate",
                           f"mlp.experts.{rng.randint(0, 3)}.{rng.choice(['gate_proj', 'up_proj', 'down_proj'])}"])
        out.append(f"model.layers.{layer}.{tail}")
    if rng.random() < 0.3:
        out.append(".".join(rng.choice(COMPONENTS) for _ in range(rng.randint(1, 5))))
    out += ["lm_head"] * rng.randint(0, 1)
    return list(dict.fromkeys(out))


def _rules(rng: random.Random, modules: list[str]) -> list[str]:
    rules = rng.sample(modules, rng.randint(0, len(modules)))          # full names: the usual list
    for _ in range(rng.choice([0, 0, 1, 3])):
        rules.append(rng.choice([
            "model.layers.34.", "model.layers.3", "mlp.gate", "gate", "re:model\\.layers\\.1\\.", "re:(",
            "model.layers.*.mlp.gate", " lm_head", "", ".", "model.layers.0.self_attn.qkv_proj",
            "model.layers.1.mlp.experts", "model.layers.0.mlp.experts.1", "experts.2.up_proj",
            rng.choice(modules) + ".", "." + rng.choice(modules), rng.choice(modules)[:-2]]))
    return list(dict.fromkeys(rules))


def _word(decision: str) -> str:
    return {KEEP: "kept", ERROR: "error"}.get(decision, "quantized")


def divergences_reference(rules: list[str], modules: list[str], engines: list[str]) -> list[LintFinding]:
    """The engine-divergence / engine-default findings by the per-row loop over reference Decisions."""
    runtime = runtime_path_map(modules)

    def decisions(engine: str):
        try:
            ref = reference_rules(rules, engine)
        except MxmixError:
            return None
        asked = [runtime[m] for m in modules] if ENGINES[engine].runtime_names else modules
        return [ref.decide(p) for p in asked]

    base, others = engines[0], engines[1:]
    base_list = decisions(base)
    if base_list is None:
        return []
    diffs: dict = {}
    for e in others:
        elist = decisions(e)
        if elist is None:
            continue
        for m, b, d in zip(modules, base_list, elist):
            if b.decision != d.decision:
                culprit = d.rule if d.rule is not None else b.rule
                diffs.setdefault(culprit, {}).setdefault(e, []).append((m, _word(b.decision), _word(d.decision)))
    out = []
    for culprit, per_engine in diffs.items():
        parts = []
        for e, items in per_engine.items():
            examples = ", ".join(f"{m} ({b} in {base}, {o} in {e})" for m, b, o in items[:MAX_EXAMPLES])
            parts.append(f"{e}: {len(items)} module(s), e.g. {examples}")
        if culprit is None:
            out.append(LintFinding(INFO, "engine-default", None, "engines differ on modules no rule decides "
                                   "(engine defaults or shard errors) — " + "; ".join(parts)))
        else:
            out.append(LintFinding(WARNING, "engine-divergence", culprit,
                                   f"means something different in {len(per_engine)} engine(s) than in {base} on "
                                   "this checkpoint — " + "; ".join(parts)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_divergences_equal_the_per_row_definition(seed: int) -> None:
    rng = random.Random(seed)
    names = list(ENGINES)
    nonempty = 0
    for _ in range(25):
        modules = _modules(rng)
        rules = _rules(rng, modules)
        engines = rng.sample(names, rng.randint(2, len(names)))
        expected = divergences_reference(rules, modules, engines)
        found = [f for f in lint(rules, modules, engines) if f.code in ("engine-divergence", "engine-default")]
        assert found == expected, (rules, modules, engines)
        # fed the plan's columns (asked paths shared by many rows), the same findings
        runtime = runtime_path_map(modules)
        backend = Backend.shared()
        columns = {}
        for e in engines:
            try:
                compiled = compile_rules(rules, e, backend=backend)
            except MxmixError:
                continue
            columns[e] = (compiled.decide_column([runtime[m] for m in modules]) if ENGINES[e].runtime_names
                          else compiled.decide_column(modules, modules))
        fed = lint(rules, modules, engines, decided_columns=columns, runtime=runtime, backend=backend)
        assert [f for f in fed if f.code in ("engine-divergence", "engine-default")] == expected
        nonempty += bool(expected)
    assert nonempty > 5


def _dead_reference(rules: list[str], modules: list[str]) -> list[str]:
    out = []
    for rule in rules:
        try:
            compiled = compile_rules([rule], "canonical")
        except MxmixError:
            continue
        if rule.strip().strip(".") == "":
            continue
        if not any(compiled.decide(m).decision in (KEEP, ERROR) for m in modules):
            out.append(rule)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_dead_rules_on_full_name_lists(seed: int) -> None:
    rng = random.Random(100 + seed)
    shortcut = 0
    for _ in range(60):
        modules = _modules(rng)
        rules = _rules(rng, modules)
        if rng.random() < 0.4:
            rules = rng.sample(modules, rng.randint(1, len(modules)))      # every rule a whole path
            shortcut += 1
        assert _dead_rules(rules, modules, runtime_path_map(modules)) == _dead_reference(rules, modules)
    assert shortcut > 10


def test_plainly_clean_rules_have_no_form_findings() -> None:
    """The shortcut for clean rules is sufficient: no rule it passes has a form finding, for any engines."""
    from mxmix.rules.lint import _form_findings, _plainly_clean

    rng = random.Random(5)
    alphabet = ["model", "layers", "3", ".", ".", "mlp", "gate", "qkv_proj", "gate_up_proj", "lm_head", " ", "*",
                "?", "[", "re:", "$", "(", "\\", "|", "^", "+", "{", "x", "\t", "experts"]
    names = list(ENGINES)
    passed = 0
    for _ in range(6000):
        rule = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        if rng.random() < 0.3:
            rule = rng.choice(["lm_head", "output", "score", "gate", "model.layers.3.mlp.gate", "a.qkv_proj",
                               "model.layers.3.", ".model", "re:model", "model.layers.*", " a.b", "a.b"])
        if _plainly_clean(rule):
            passed += 1
            for engines in ([], rng.sample(names, rng.randint(1, len(names)))):
                assert _form_findings(rule, engines) == [], rule
    assert passed > 500
