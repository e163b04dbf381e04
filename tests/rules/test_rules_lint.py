"""Lint findings: forms, dead rules, engine divergence on a checkpoint."""

from __future__ import annotations

import pytest

from mxmix.errors import MxmixError
from mxmix.rules import lint
from mxmix.rules.lint import has_errors

MODULES = [f"model.layers.{n}.{m}" for n in range(40) for m in
           ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]


def codes(findings, rule=None):
    return {f.code for f in findings if rule is None or f.rule == rule}


@pytest.mark.parametrize(("rule", "code", "severity"), [
    ("", "empty", "error"), (".", "empty", "error"), (" lm_head", "whitespace", "error"),
    (".mlp.down_proj", "leading-dot", "error"), ("model.layers.3.", "trailing-dot", "warning"),
    ("gate", "bare-component", "warning"), ("head", "bare-component", "warning"),
    ("model.layers.(3|4)", "regex-metachar", "warning"), ("re:model\\.layers\\.3", "regex-unanchored", "warning"),
    ("re:model.layers.3$", "regex-unescaped-dot", "info"), ("re:(", "regex-invalid", "error"),
    ("model.layers.*.mlp", "glob-mid-star", "warning"), ("model.layers.0.self_attn.qkv_proj", "fused-name", "info"),
])
def test_form_findings(rule, code, severity):
    found = [f for f in lint([rule]) if f.code == code]
    assert found and found[0].severity == severity and found[0].rule == rule


def test_clean_rules_have_no_findings():
    rules = ["model.layers.3.mlp.down_proj", "lm_head", "re:model\\.layers\\.3\\.mlp\\.up_proj$"]
    assert lint(rules) == []
    assert not has_errors(lint(rules))


def test_globs_and_regex_against_chosen_engines():
    assert "glob-unsupported" in codes(lint(["model.layers.1*"], engines=["sglang"]))
    assert "glob-unsupported" not in codes(lint(["model.layers.1*"], engines=["vllm-modelopt"]))
    assert "regex-unsupported" in codes(lint(["re:lm_head$"], engines=["vllm"]))
    assert "regex-unsupported" not in codes(lint(["re:lm_head$"], engines=["vllm-compressed-tensors"]))
    with pytest.raises(MxmixError):
        lint(["lm_head"], engines=["nope"])


def test_duplicates():
    assert "duplicate" in codes(lint(["lm_head", "lm_head"]))


def test_dead_rules_on_a_checkpoint():
    f = lint(["model.layers.99.mlp.down_proj", "lm_head"], modules=MODULES, engines=["sglang"])
    assert "dead-rule" in codes(f, "model.layers.99.mlp.down_proj")
    assert "dead-rule" not in codes(f, "lm_head")


def test_divergence_between_engines():
    f = lint(["model.layers.3."], modules=MODULES, engines=["sglang", "sglang-23467", "transformers"])
    div = [x for x in f if x.code == "engine-divergence"]
    assert div and "sglang-23467" in div[0].message
    same = lint(["model.layers.3.mlp.down_proj"], modules=MODULES, engines=["sglang", "vllm", "transformers"])
    assert "engine-divergence" not in codes(same)
    # layer 3 vs 30-39: substring engines over-match
    f = lint(["model.layers.3"], modules=MODULES, engines=["sglang", "sglang-legacy"])
    msg = next(x.message for x in f if x.code == "engine-divergence")
    assert "model.layers.30" in msg


def test_divergence_default_compares_with_canonical():
    f = lint(["mlp.gate_proj", "mlp.up_proj"], modules=MODULES)
    # canonical keeps the shards; SGLang keeps the fused gate_up_proj (both shards listed): same modules
    assert not any(x.code == "engine-divergence" and "sglang:" in x.message for x in f)


def test_package_lint_is_the_function_even_after_submodule_import():
    import mxmix.rules
    import mxmix.rules.lint
    from mxmix.rules.lint import lint as submodule_lint

    assert mxmix.rules.lint is submodule_lint and callable(mxmix.rules.lint)
