"""The canonical reading: component boundaries, rule kinds, fused shards, FusedMoE, invalid rules."""

from __future__ import annotations

import pytest

from mxmix.errors import MxmixError
from mxmix.rules import compile_rules, decide
from mxmix.rules.canonical import ancestors, classify


def keeps(path: str, *rules: str, fused=None) -> bool:
    d = decide(path, list(rules), fused=fused)
    assert compile_rules(list(rules), fused=fused).decide(path) == d
    return d.decision == "keep"


def test_trailing_dot_layer_prefix_is_exact_about_the_layer():
    assert keeps("model.layers.34.mlp.experts.0.down_proj", "model.layers.34.")
    assert not keeps("model.layers.340.mlp.experts.0.down_proj", "model.layers.34.")
    assert not keeps("model.layers.340.mlp.down_proj", "model.layers.34")


def test_mlp_gate_is_not_gate_up_or_gate_proj():
    assert keeps("model.layers.0.mlp.gate", "mlp.gate")
    assert not keeps("model.layers.0.mlp.gate_up_proj", "mlp.gate")
    assert not keeps("model.layers.0.mlp.gate_proj", "mlp.gate")


def test_layer_3_never_keeps_layer_34():
    assert not keeps("model.layers.34.mlp.down_proj", "model.layers.3")
    assert keeps("model.layers.3.mlp.down_proj", "model.layers.3")
    assert keeps("model.layers.3", "model.layers.3")


def test_components_match_anywhere_in_the_path():
    assert keeps("model.layers.3.self_attn.o_proj", "self_attn.o_proj")
    assert keeps("model.layers.3.self_attn.o_proj", "layers.3")
    assert not keeps("model.layers.3.self_attn.o_proj", "attn.o_proj")
    assert not keeps("model.layers.3.self_attn.o_proj", "layers.3.o_proj")


def test_normalisation_of_dots_and_whitespace():
    assert keeps("model.layers.3.mlp.down_proj", ".mlp.down_proj")
    assert keeps("model.layers.3.mlp.down_proj", "  model.layers.3.  ")
    assert keeps("model.layers.3.mlp.down_proj", "..layers.3..")


@pytest.mark.parametrize("rule", ["", ".", "..", "  ", " . "])
def test_empty_rules_are_invalid_and_match_nothing(rule):
    assert classify(rule).kind == "invalid"
    d = decide("model.layers.0.mlp.down_proj", [rule])
    assert d.decision == "quantize" and d.rule is None


def test_regex_rules_are_start_anchored_only():
    assert keeps("model.layers.3.mlp.down_proj", r"re:model\.layers\.3\.")
    assert not keeps("model.layers.3.mlp.down_proj", r"re:layers\.3\.")
    assert keeps("model.layers.3.mlp.down_proj", r"re:.*layers\.3\.")
    assert keeps("model.layers.34.mlp.down_proj", r"re:model\.layers\.3")   # no boundary in a regex
    assert not keeps("model.layers.34.mlp.down_proj", r"re:model\.layers\.3$")


def test_invalid_regex_is_bad_input():
    with pytest.raises(MxmixError, match="not a valid regex"):
        decide("model.layers.0.mlp.down_proj", ["re:(unclosed"])
    with pytest.raises(MxmixError):
        compile_rules(["lm_head", "re:[a-"])


def test_globs_match_path_or_dotted_ancestor():
    assert keeps("model.layers.7.mlp.down_proj", "model.layers.*.mlp")
    assert keeps("model.layers.7.mlp.down_proj", "*.down_proj")
    assert keeps("model.layers.7.mlp.down_proj", "model.layers.[0-7]")
    assert not keeps("model.layers.8.mlp.down_proj", "model.layers.[0-7]")
    assert not keeps("model.layers.7.mlp.down_proj", "model.layers.?.attn")
    assert keeps("model.layers.1.mlp.up_proj", "model.layers.?.mlp.up_proj")
    # a glob names whole ancestors: model.layers.1* reaches layers 1 and 10-19 (fnmatch crosses dots)
    assert keeps("model.layers.12.mlp.up_proj", "model.layers.1*")


def test_ancestors():
    assert ancestors("a.b.c") == ["a.b.c", "a.b", "a"]


def test_fused_module_kept_when_named_or_all_shards_kept():
    qkv = "model.layers.0.self_attn.qkv_proj"
    assert keeps(qkv, qkv)
    assert keeps(qkv, *(f"model.layers.0.self_attn.{s}" for s in ("q_proj", "k_proj", "v_proj")))
    assert keeps(qkv, "model.layers.0")
    assert not keeps(qkv, "model.layers.1")


def test_partial_shards_are_an_error_naming_them():
    d = decide("model.layers.0.mlp.gate_up_proj", ["model.layers.0.mlp.gate_proj"])
    assert d.decision == "error"
    assert "model.layers.0.mlp.gate_proj" in d.reason and "model.layers.0.mlp.up_proj" in d.reason


def test_fused_mapping_is_overridable():
    fused = {"wqkv": ["wq", "wk", "wv"]}
    path = "model.layers.0.attn.wqkv"
    assert keeps(path, "attn.wq", "attn.wk", "attn.wv", fused=fused)
    assert decide(path, ["attn.wq"], fused=fused).decision == "error"
    # the default mapping is replaced, not merged, when a mapping is given
    assert decide("model.layers.0.self_attn.qkv_proj", ["self_attn.q_proj"], fused=fused).decision == "quantize"


def test_bad_fused_mapping_is_bad_input():
    with pytest.raises(MxmixError):
        decide("x.y", [], fused={"a.b": ["c"]})
    with pytest.raises(MxmixError):
        decide("x.y", [], fused={"qkv": "q"})


def test_fused_moe_kept_by_itself_or_ancestor():
    moe = "model.layers.5.mlp.experts"
    assert keeps(moe, moe)
    assert keeps(moe, "model.layers.5")
    assert keeps(moe, "model.layers.5.")
    assert keeps(moe, r"re:model\.layers\.5\.mlp$")     # an ancestor matched by a regex
    assert not keeps(moe, "model.layers.6")


@pytest.mark.parametrize("rule", ["model.layers.5.mlp.experts.7.down_proj", "model.layers.5.mlp.experts.7",
                                  "mlp.experts.0", "experts.gate_up_proj", "7.down_proj",
                                  r"re:model\.layers\.5\.mlp\.experts\.3\.", "model.layers.5.mlp.experts.1?"])
def test_partial_experts_are_an_error(rule):
    d = decide("model.layers.5.mlp.experts", [rule])
    assert d.decision == "error" and d.rule == rule
    assert compile_rules([rule]).decide("model.layers.5.mlp.experts") == d


def test_other_layers_experts_are_not_partial():
    assert decide("model.layers.6.mlp.experts", ["model.layers.5.mlp.experts.7.down_proj"]).decision == "quantize"


def test_first_rule_in_list_order_decides():
    rules = ["zzz", "mlp", "model.layers.0"]
    d = decide("model.layers.0.mlp.down_proj", rules)
    assert d.rule == "mlp"
    assert compile_rules(rules).decide("model.layers.0.mlp.down_proj").rule == "mlp"


def test_decision_to_dict_shape():
    d = decide("lm_head", ["lm_head"]).to_dict()
    assert set(d) == {"path", "engine", "decision", "rule", "reason"}
    assert d["engine"] == "canonical" and d["decision"] == "keep" and d["rule"] == "lm_head"


def test_unknown_engine_and_bad_rules():
    with pytest.raises(MxmixError, match="unknown engine"):
        decide("lm_head", [], "tensorrt")
    with pytest.raises(MxmixError):
        decide("lm_head", "lm_head")  # type: ignore[arg-type]
