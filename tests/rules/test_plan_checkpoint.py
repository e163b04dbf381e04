"""plan_checkpoint: each engine's reading of a checkpoint's own config, against the stored tensors."""

from __future__ import annotations

import pytest

from mxmix.checkpoint.layout import Checkpoint
from mxmix.errors import MxmixError
from mxmix.rules.plan import compact_groups, plan_checkpoint, runtime_path_map

LAST = "model.layers.2"
KEEP_LAST = {f"{LAST}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")} | \
            {f"{LAST}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")} | {"lm_head"}


def sglang_qc(ignored, mtnc=None):
    qc = {"quant_method": "mxfp8", "fmt": "e4m3", "weight_block_size": [1, 32], "ignored_layers": ignored}
    if mtnc is not None:
        qc["modules_to_not_convert"] = mtnc
    return qc


def test_well_written_checkpoint_agrees_everywhere_relevant(make_mixed):
    listed = sorted(KEEP_LAST)
    ckpt = make_mixed(keep=KEEP_LAST, quantization_config=sglang_qc(listed, listed))
    plan = plan_checkpoint(Checkpoint.open(ckpt), ["canonical", "sglang", "sglang-fp8config", "vllm", "transformers"])
    assert plan.dialect == "sglang" and plan.quant_method == "mxfp8"
    assert plan.disagreements() == dict.fromkeys(plan.engines, 0)
    row = next(r for r in plan.rows if r.module.path == f"{LAST}.self_attn.q_proj")
    assert row.stored == "bf16" and row.runs_as("sglang") == "bf16"
    # sglang asks about the fused runtime module, transformers about the checkpoint name
    assert row.decisions["sglang"].path == f"{LAST}.self_attn.qkv_proj"
    assert row.decisions["transformers"].path == f"{LAST}.self_attn.q_proj"
    q0 = next(r for r in plan.rows if r.module.path == "model.layers.0.self_attn.q_proj")
    assert q0.stored == "mxfp8" and q0.runs_as("vllm") == "mxfp8"


def test_trailing_dot_prefix_disagreements(make_mixed):
    ckpt = make_mixed(keep=KEEP_LAST - {"lm_head"}, quantization_config=sglang_qc([f"{LAST}."], [f"{LAST}."]))
    plan = plan_checkpoint(ckpt, ["canonical", "sglang", "sglang-23467", "vllm", "transformers"])
    d = plan.disagreements()
    assert d["canonical"] == 0 and d["sglang"] == 0
    assert d["sglang-23467"] == 7          # the regression quantizes layer 2
    assert d["vllm"] == 8                  # exact: layer 2 quantized, and the LM head kept by Fp8Config
    assert d["transformers"] == 0


def test_empty_ignored_layers_hides_modules_to_not_convert(make_mixed):
    listed = sorted(KEEP_LAST)
    ckpt = make_mixed(keep=KEEP_LAST, quantization_config=sglang_qc([], listed))
    plan = plan_checkpoint(ckpt, ["sglang", "transformers"])
    assert plan.skip_lists["sglang"] == [] and plan.skip_lists["transformers"] == listed
    assert plan.disagreements() == {"sglang": len(KEEP_LAST), "transformers": 0}


def test_partial_shards_are_errors(make_mixed):
    keep = {f"{LAST}.self_attn.q_proj"}
    ckpt = make_mixed(keep=keep, quantization_config=sglang_qc(sorted(keep)))
    plan = plan_checkpoint(ckpt, ["sglang", "canonical"])
    rows = [r for r in plan.rows if r.module.path.startswith(f"{LAST}.self_attn.") and "o_proj" not in r.module.path]
    assert {r.runs_as("sglang") for r in rows} == {"error"}
    assert {r.runs_as("canonical") for r in rows if r.module.path.endswith("q_proj")} == {"bf16"}


def test_stacked_moe_and_default_engines(make_mixed):
    ckpt = make_mixed(keep={"lm_head"}, moe="stacked",
                      quantization_config=sglang_qc(["lm_head"], ["lm_head"]))
    plan = plan_checkpoint(ckpt)
    assert "vllm-modelopt" not in plan.engines and "sglang" in plan.engines
    moe = [r for r in plan.rows if r.module.stacked]
    assert len(moe) == 6 and all(r.stored == "mxfp8" for r in moe)
    assert all(not r.disagrees("sglang") for r in moe)
    data = plan.to_dict()
    assert data["modules"][0]["engines"]["sglang"]["runs_as"] in ("bf16", "mxfp8", "error")


def test_modelopt_dialect_reads_nested_exclude(make_mixed):
    ckpt = make_mixed(keep={"lm_head"}, scale_suffix="weight_scale",
                      quantization_config={"quant_method": "modelopt", "quant_algo": "MXFP8", "ignore": ["lm_head"]},
                      hf_quant_config={"quantization": {"quant_algo": "MXFP8", "exclude_modules": ["lm_head"]}})
    plan = plan_checkpoint(ckpt)
    assert set(plan.engines) == {"canonical", "sglang-modelopt", "vllm-modelopt"}
    assert plan.disagreements() == dict.fromkeys(plan.engines, 0)


def test_plain_checkpoint_is_loaded_unquantized(make_synthetic):
    plan = plan_checkpoint(make_synthetic(layers=2))
    assert plan.dialect == "plain" and len(plan.engines) == 15
    assert all(not r.disagrees(e) for r in plan.rows for e in plan.engines)
    assert plan.notes


def test_compact_groups_collapse_identical_layers(make_mixed):
    ckpt = make_mixed(keep=KEEP_LAST, layers=3, quantization_config=sglang_qc(sorted(KEEP_LAST)))
    plan = plan_checkpoint(ckpt, ["sglang"])
    labels = [label for label, _ in compact_groups(plan)]
    assert labels == ["lm_head", "layers 0-1", "layer 2"]


def test_runtime_path_map():
    paths = ["m.l.0.self_attn.q_proj", "m.l.0.self_attn.k_proj", "m.l.0.self_attn.v_proj",
             "m.l.1.self_attn.q_proj", "m.l.0.mlp.experts.3.down_proj", "m.l.0.mlp.gate_proj"]
    rt = runtime_path_map(paths)
    assert rt["m.l.0.self_attn.k_proj"] == "m.l.0.self_attn.qkv_proj"
    assert rt["m.l.1.self_attn.q_proj"] == "m.l.1.self_attn.q_proj"   # siblings absent: not fused
    assert rt["m.l.0.mlp.experts.3.down_proj"] == "m.l.0.mlp.experts"
    assert rt["m.l.0.mlp.gate_proj"] == "m.l.0.mlp.gate_proj"


def test_unknown_engine(make_synthetic):
    with pytest.raises(MxmixError, match="unknown engine"):
        plan_checkpoint(make_synthetic(layers=1), ["nope"])


def test_invalid_canonical_regex_in_config_is_an_error_column(make_mixed):
    ckpt = make_mixed(keep={"lm_head"}, quantization_config=sglang_qc(["lm_head", "re:("]))
    plan = plan_checkpoint(ckpt, ["canonical", "sglang"])
    assert {r.runs_as("canonical") for r in plan.rows} == {"error"}
    assert plan.disagreements()["sglang"] == 0
    assert any("canonical" in n for n in plan.notes)
