"""The readings of consumers installed here, checked against their real matching code.

transformers 5.24 (``should_convert_module``) and compressed-tensors 0.20 (``match_name``, as
``is_match`` applies an ignore list) are pinned in scripts/constraints.txt; random rule lists and
paths must get the same answer from the real function and from our reading — including which
inputs make the real code raise.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxmix.rules import DEFAULT_FUSED, compile_rules, decide

COMPONENTS = ["model", "layers", "0", "1", "11", "3", "34", "mlp", "gate", "gate_proj", "up_proj", "gate_up_proj",
              "down_proj", "experts", "self_attn", "q_proj", "k_proj", "v_proj", "qkv_proj", "lm_head",
              "shared_expert_gate", "xqkv_proj"]
component = st.sampled_from(COMPONENTS)
path_st = st.lists(component, min_size=1, max_size=6).map(".".join)


@st.composite
def rule_st(draw):
    text = ".".join(draw(st.lists(component, min_size=1, max_size=4)))
    kind = draw(st.sampled_from(["plain", "plain", "dots", "regex", "glob", "odd"]))
    if kind == "dots":
        return draw(st.sampled_from(["", "."])) + text + draw(st.sampled_from(["", "."]))
    if kind == "regex":
        return "re:" + draw(st.sampled_from(["", ".*"])) + text.replace(".", draw(st.sampled_from([r"\.", "."]))) \
            + draw(st.sampled_from(["", "$", "|lm_head", r"(\.|$)"]))
    if kind == "glob":
        i = draw(st.integers(0, len(text)))
        return text[:i] + draw(st.sampled_from(["*", "?", "[0-3]", ".*"])) + text[i:]
    return draw(st.sampled_from(["", "*mlp", "(", "a|lm_head", "gate|up", "model.layers.1", "head", "re:(",
                                 "layers.[", "proj$"]))


RULES = st.lists(rule_st(), max_size=6)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(fn):
    try:
        return "keep" if fn() else "quantize"
    except re.error:
        return "error"


@SETTINGS
@given(rules=RULES, path=path_st)
def test_transformers_reading_equals_should_convert_module(rules, path):
    quantizers_utils = pytest.importorskip("transformers.quantizers.quantizers_utils")
    real = _outcome(lambda: not quantizers_utils.should_convert_module(path, rules))
    assert decide(path, rules, "transformers").decision == real, (rules, path)
    assert compile_rules(rules, "transformers").decide(path).decision == real


@SETTINGS
@given(rules=RULES, path=path_st)
def test_compressed_tensors_reading_equals_match_name(rules, path):
    match = pytest.importorskip("compressed_tensors.utils.match")
    fused = {k: list(v) for k, v in DEFAULT_FUSED.items()}
    real = _outcome(lambda: any(match.match_name(path, r, fused) for r in rules))
    assert decide(path, rules, "compressed-tensors").decision == real, (rules, path)
    assert compile_rules(rules, "compressed-tensors").decide(path).decision == real


@pytest.mark.parametrize("qc", [
    {"quant_method": "mxfp8", "ignored_layers": ["a"]},
    {"quant_method": "mxfp8", "modules_to_not_convert": ["b"], "ignored_layers": ["a"]},
    {"quant_method": "fp8", "modules_to_not_convert": None, "ignored_layers": ["a"]},
    {"quant_method": "mxfp8", "modules_to_not_convert": [], "ignored_layers": ["a"]},
    {"quant_method": "fp8", "modules_to_not_convert": ["b"]},
])
def test_transformers_key_precedence_equals_its_config_class(qc):
    from mxmix.rules import skip_list_for

    config = pytest.importorskip("transformers.utils.quantization_config")
    real = config.FineGrainedFP8Config.from_dict(dict(qc)).modules_to_not_convert
    assert skip_list_for(qc, "transformers") == real
