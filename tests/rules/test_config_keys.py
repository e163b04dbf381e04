"""skip_list_for: each consumer's key precedence (engine-semantics.md §1)."""

from __future__ import annotations

import pytest

from mxmix.errors import MxmixError
from mxmix.rules import engines_for_dialect, skip_list_for

BOTH = {"quant_method": "mxfp8", "ignored_layers": ["a"], "modules_to_not_convert": ["b"]}


def test_sglang_first_present_key_wins_even_when_empty():
    assert skip_list_for(BOTH, "sglang") == ["a"]
    assert skip_list_for({**BOTH, "ignored_layers": []}, "sglang") == []
    assert skip_list_for({"quant_method": "fp8", "modules_to_not_convert": ["b"]}, "sglang") == ["b"]
    assert skip_list_for({**BOTH, "ignored_layers": None}, "sglang") == ["b"]
    assert skip_list_for({**BOTH, "ignored_layers": None}, "sglang-fp8config") == ["b", "model.b"]


def test_sglang_env_entries_are_appended_stripped():
    got = skip_list_for(BOTH, "sglang", environ={"SGLANG_FP8_IGNORED_LAYERS": " x , y,,"})
    assert got == ["a", "x", "y"]


def test_vllm_fp8_falls_back_when_empty_but_flat_mxfp8_reads_only_ignored_layers():
    assert skip_list_for({"quant_method": "fp8", "ignored_layers": [], "modules_to_not_convert": ["b"]},
                         "vllm") == ["b"]
    assert skip_list_for({"quant_method": "mxfp8", "modules_to_not_convert": ["b"]}, "vllm") == []
    assert skip_list_for(BOTH, "vllm-substring") == ["a"]
    # the older vLLM's online mxfp8 fell back to modules_to_not_convert
    assert skip_list_for({"quant_method": "mxfp8", "modules_to_not_convert": ["b"]}, "vllm-substring") == ["b"]


def test_transformers_prefers_modules_to_not_convert_with_alias():
    assert skip_list_for(BOTH, "transformers") == ["b"]
    assert skip_list_for({"quant_method": "mxfp8", "ignored_layers": ["a"]}, "transformers") == ["a"]
    assert skip_list_for({"quant_method": "fp8"}, "transformers") == ["lm_head"]
    assert skip_list_for({"quant_method": "fp8"}, "transformers-4") == ["lm_head"]
    assert skip_list_for({"quant_method": "fp8", "ignored_layers": ["a"]}, "transformers-4") == ["lm_head"]


def test_modelopt_nested_exclude_modules_wins():
    qc = {"quant_method": "modelopt", "quant_algo": "MXFP8", "ignore": ["flat"]}
    hf = {"quantization": {"quant_algo": "MXFP8", "exclude_modules": ["nested"]}}
    for engine in ("sglang-modelopt", "vllm-modelopt"):
        assert skip_list_for(qc, engine, hf) == ["nested"]
        assert skip_list_for(qc, engine) == ["flat"]
    assert skip_list_for({"quant_method": "modelopt", "exclude_modules": ["e"]}, "vllm-modelopt") == ["e"]
    assert skip_list_for({"quant_method": "modelopt_fp4", "modules_to_not_convert": ["m"]},
                         "sglang-modelopt") == ["m"]


def test_compressed_tensors_ignore_and_quark_exclude():
    qc = {"quant_method": "compressed-tensors", "ignore": ["lm_head"], "modules_to_not_convert": ["x"]}
    for engine in ("compressed-tensors", "vllm-compressed-tensors", "sglang-compressed-tensors", "transformers"):
        assert skip_list_for(qc, engine) == ["lm_head"]
    assert skip_list_for({"quant_method": "quark", "exclude": ["q"]}, "vllm") == ["q"]
    assert skip_list_for({"quant_method": "w8a8_fp8", "ignored_layers": ["a"]}, "sglang") == []


def test_canonical_merges_every_key_in_order():
    qc = {**BOTH, "ignore": ["a", "c"]}
    assert skip_list_for(qc, "canonical") == ["a", "b", "c"]
    assert skip_list_for(None, "canonical") == []


def test_malformed_lists_are_bad_input():
    with pytest.raises(MxmixError, match="list of strings"):
        skip_list_for({"quant_method": "mxfp8", "ignored_layers": "lm_head"}, "sglang")
    with pytest.raises(MxmixError, match="list of strings"):
        skip_list_for({"quant_method": "mxfp8", "ignored_layers": [1]}, "sglang")
    with pytest.raises(MxmixError, match="unknown engine"):
        skip_list_for(BOTH, "nope")


def test_engines_for_dialect():
    sg = engines_for_dialect("sglang")
    assert {"canonical", "sglang", "sglang-fp8config", "vllm", "transformers"} <= set(sg)
    assert "vllm-modelopt" not in sg
    assert set(engines_for_dialect("modelopt")) == {"canonical", "sglang-modelopt", "vllm-modelopt"}
    assert "compressed-tensors" in engines_for_dialect("compressed-tensors")
    assert len(engines_for_dialect("plain")) == 15


def test_engines_for_quant_method():
    from mxmix.rules import engines_for_quant_method

    mx = engines_for_quant_method("mxfp8")
    assert {"canonical", "sglang", "vllm", "transformers"} <= set(mx) and "transformers-4" not in mx
    assert engines_for_quant_method("nope") == ["canonical"]


def test_fp8config_list_is_normalised():
    qc = {"quant_method": "mxfp8", "ignored_layers": ["model.layers.0.mlp.down_proj", "lm_head", ""]}
    got = skip_list_for(qc, "sglang-fp8config")
    assert got == ["layers.0.mlp.down_proj", "model.layers.0.mlp.down_proj", "lm_head", "model.lm_head", "",
                   "model."]
    assert skip_list_for(qc, "sglang") == qc["ignored_layers"]
