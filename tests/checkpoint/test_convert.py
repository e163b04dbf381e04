"""The converter on small synthetic checkpoints: what is quantized, bytes, names, configs, shards, styles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from convert_util import config, load_tensors

import mxmix.mx as mx
from mxmix.checkpoint.convert import quantize_checkpoint, read_keep_file
from mxmix.example.synthetic import SyntheticSpec, synthetic_tensors


def _source(**spec) -> dict[str, torch.Tensor]:
    return synthetic_tensors(SyntheticSpec(**spec))


def _check_quantized(out: dict[str, torch.Tensor], src: dict[str, torch.Tensor], weight: str, scale: str,
                     mode: str = "rceil") -> None:
    q, s = mx.quantize(src[weight], 32, mode)
    assert out[weight].dtype == torch.float8_e4m3fn and out[scale].dtype == torch.uint8
    assert torch.equal(out[weight].view(torch.uint8), q.view(torch.uint8)), weight
    assert torch.equal(out[scale], s), scale


def test_dense_default_policy(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("dense", layers=3)
    src = _source(layers=3)
    summary = quantize_checkpoint(src_dir, tmp_path / "out")
    out = load_tensors(tmp_path / "out")
    quantized = {m.weight for m in summary.quantized}
    linears = {n for n in src if n.endswith("_proj.weight")}
    assert quantized == linears  # every projection; not lm_head, embeddings or norms
    for name in linears:
        _check_quantized(out, src, name, name.replace(".weight", ".weight_scale_inv"))
    for name in src:
        if name not in linears:  # copied byte for byte, dtype kept
            assert out[name].dtype == src[name].dtype and torch.equal(out[name], src[name]), name
    assert set(out) == set(src) | {n.replace(".weight", ".weight_scale_inv") for n in linears}
    qc = config(tmp_path / "out")["quantization_config"]
    assert qc["quant_method"] == "mxfp8" and qc["weight_block_size"] == [1, 32] and qc["scale_fmt"] == "ue8m0"
    assert qc["fmt"] == "e4m3" and qc["activation_scheme"] == "dynamic"
    assert qc["ignored_layers"] == qc["modules_to_not_convert"] == ["lm_head"]
    assert [m.reason for m in summary.kept] == ["lm-head"]
    d = summary.to_dict()
    assert d["counts"] == {"modules": 22, "quantized": 21, "kept": 1, "by_reason": {"quantize": 21, "lm-head": 1}}
    assert d["bytes_after"] == sum(t.numel() * t.element_size() for t in out.values())
    assert d["bytes_before"] == sum(t.numel() * t.element_size() for t in src.values())
    json.dumps(d)
    assert "21 MXFP8, 1 kept" in summary.format_text()


def test_quantize_lm_head_and_router_flags(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("moe", layers=2, moe="experts", experts=4)
    s = quantize_checkpoint(src_dir, tmp_path / "a")
    kept = {m.path: m.reason for m in s.kept}
    assert kept == {"lm_head": "lm-head", "model.layers.0.mlp.gate": "router", "model.layers.1.mlp.gate": "router"}
    s2 = quantize_checkpoint(src_dir, tmp_path / "b", quantize_lm_head=True, quantize_router=True)
    assert s2.kept == [] and {"lm_head.weight_scale_inv", "model.layers.1.mlp.gate.weight_scale_inv"} <= set(
        load_tensors(tmp_path / "b"))


def test_stacked_experts(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("stacked", layers=2, moe="stacked", experts=4)
    src = _source(layers=2, moe="stacked", experts=4)
    quantize_checkpoint(src_dir, tmp_path / "out", keep_last=1)
    out = load_tensors(tmp_path / "out")
    name = "model.layers.0.mlp.experts.gate_up_proj"
    _check_quantized(out, src, name, name + "_scale_inv")
    assert out[name + "_scale_inv"].shape == (4, 256, 2)
    assert out["model.layers.1.mlp.experts.down_proj"].dtype == torch.bfloat16
    skip = config(tmp_path / "out")["quantization_config"]["ignored_layers"]
    # the fused MoE module, and every expert's unfused projections, of the kept layer
    assert "model.layers.1.mlp.experts" in skip
    for e in range(4):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.1.mlp.experts.{e}.{proj}" in skip
    assert "model.layers.0.mlp.gate" in skip and not any(s.startswith("model.layers.0.mlp.experts") for s in skip)


def test_experts_all_or_none_and_fused_shards(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("moe", layers=2, moe="experts", experts=4)
    s = quantize_checkpoint(src_dir, tmp_path / "out", keep=("model.layers.1.mlp.experts.2.down_proj",
                                                             "model.layers.0.self_attn.q_proj"))
    reasons = {m.path: m.reason for m in s.kept}
    for e in range(4):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            path = f"model.layers.1.mlp.experts.{e}.{proj}"
            assert reasons[path] == ("keep-rule" if (e, proj) == (2, "down_proj") else "moe-all-or-none")
    assert reasons["model.layers.0.self_attn.q_proj"] == "keep-rule"
    assert reasons["model.layers.0.self_attn.k_proj"] == reasons["model.layers.0.self_attn.v_proj"] == "fused-shards"
    assert "model.layers.0.self_attn.o_proj" not in reasons
    assert "model.layers.0.mlp.experts.0.down_proj" not in reasons
    skip = config(tmp_path / "out")["quantization_config"]["ignored_layers"]
    assert "model.layers.1.mlp.experts" in skip and "model.layers.1.mlp.experts.3.up_proj" in skip
    assert any("kept all 12 expert weights" in n for n in s.notes)


def test_k_not_multiple_of_32_stays_bf16(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("odd", layers=2, hidden=64, intermediate=72)
    s = quantize_checkpoint(src_dir, tmp_path / "out")
    odd = {m.path for m in s.kept if m.reason == "k-not-multiple-of-32"}
    assert odd == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    out = load_tensors(tmp_path / "out")
    assert out["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert out["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert "model.layers.0.mlp.down_proj" in config(tmp_path / "out")["quantization_config"]["ignored_layers"]
    assert "K=72" in json.dumps(s.to_dict())


def test_keep_first_last_and_file(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("dense", layers=5)
    rules = tmp_path / "keep.txt"
    rules.write_text("# sensitive modules\nmodel.layers.2.mlp.down_proj   # worst KL\n\n")
    s = quantize_checkpoint(src_dir, tmp_path / "out", keep_first=1, keep_last=2, keep_from_file=rules)
    by_layer: dict[int, set[str]] = {}
    for m in s.kept:
        if m.layer is not None:
            by_layer.setdefault(m.layer, set()).add(m.reason)
    assert by_layer == {0: {"keep-first"}, 2: {"keep-rule"}, 3: {"keep-last"}, 4: {"keep-last"}}
    assert len([m for m in s.kept if m.layer == 2]) == 1
    assert s.num_layers == 5
    text = s.format_text()
    assert "keep-last: layers 3-4 (all 7)" in text and "keep-rule: layer 2: mlp.down_proj" in text


def test_keep_file_formats(tmp_path: Path) -> None:
    j = tmp_path / "k.json"
    j.write_text(json.dumps(["model.layers.1.mlp", "re:.*down_proj$"]))
    assert read_keep_file(j) == ["model.layers.1.mlp", "re:.*down_proj$"]
    j.write_text(json.dumps({"keep": ["lm_head"]}))
    assert read_keep_file(j) == ["lm_head"]
    t = tmp_path / "k.txt"
    t.write_text("  model.layers.3.  \n# comment\nmodel.layers.4.mlp # why\n")
    assert read_keep_file(t) == ["model.layers.3.", "model.layers.4.mlp"]


@pytest.mark.parametrize("mode", ["rceil", "floor"])
def test_scale_modes(make_synthetic, tmp_path: Path, mode: str) -> None:
    src_dir = make_synthetic("dense", layers=1, seed=3)
    src = _source(layers=1, seed=3)
    quantize_checkpoint(src_dir, tmp_path / "out", scale_mode=mode)
    out = load_tensors(tmp_path / "out")
    name = "model.layers.0.mlp.up_proj.weight"
    _check_quantized(out, src, name, name + "_scale_inv", mode)
    other = mx.quantize(src[name], 32, "floor" if mode == "rceil" else "rceil")[1]
    assert not torch.equal(out[name + "_scale_inv"], other)  # the mode really reached the codec


def test_sharded_input_and_output(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("sharded", layers=4, shards=3, hidden=128, intermediate=256)
    src = _source(layers=4, hidden=128, intermediate=256)
    limit = 200_000
    s = quantize_checkpoint(src_dir, tmp_path / "out", max_shard_size=limit)
    dst = tmp_path / "out"
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in dst.glob("*.safetensors"))
    assert len(files) == len(s.shards) > 1 and files == sorted(set(index["weight_map"].values()))
    out = load_tensors(dst)
    assert set(index["weight_map"]) == set(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    from mxmix.checkpoint.safetensors_header import read_header

    for f in files:
        h = read_header(dst / f)
        size = sum(t.nbytes for t in h.tensors.values())
        assert size <= limit or len(h.tensors) <= 2, f  # only a lone oversized weight (+scale) may exceed
        for t in h.tensors.values():
            if t.name.endswith("_scale_inv"):  # a weight and its scales share a shard
                assert t.name.replace("_scale_inv", "") in h.tensors
            assert t.begin % {"F8_E4M3": 1, "U8": 1, "BF16": 2, "F32": 4}[t.dtype] == 0
    _check_quantized(out, src, "model.layers.3.self_attn.o_proj.weight",
                     "model.layers.3.self_attn.o_proj.weight_scale_inv")


def test_dialect_modelopt(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("dense", layers=2)
    quantize_checkpoint(src_dir, tmp_path / "out", dialect="modelopt", keep_last=1)
    dst = tmp_path / "out"
    out = load_tensors(dst)
    assert "model.layers.0.self_attn.q_proj.weight_scale" in out
    assert not any(k.endswith("_scale_inv") for k in out)
    qc = config(dst)["quantization_config"]
    hf = json.loads((dst / "hf_quant_config.json").read_text())
    assert qc["quant_method"] == "modelopt" and qc["quant_algo"] == "MXFP8"
    q = hf["quantization"]
    assert q["quant_algo"] == "MXFP8" and "kv_cache_quant_algo" in q
    assert q["exclude_modules"] == qc["ignore"]
    assert "model.layers.1.mlp.down_proj" in qc["ignore"] and "lm_head" in qc["ignore"]


def test_dialect_compressed_tensors(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("dense", layers=2)
    src = _source(layers=2)
    quantize_checkpoint(src_dir, tmp_path / "out", dialect="compressed-tensors")
    out = load_tensors(tmp_path / "out")
    _check_quantized(out, src, "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight_scale")
    qc = config(tmp_path / "out")["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mxfp8-quantized"
    w = qc["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["type"], w["strategy"], w["group_size"], w["symmetric"], w["scale_dtype"]) == (
        8, "float", "group", 32, True, "torch.uint8")
    assert qc["ignore"] == ["lm_head"]


def test_skip_list_prefix_style(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("dense", layers=4)
    s = quantize_checkpoint(src_dir, tmp_path / "out", keep_last=2, keep=("model.layers.0.mlp.down_proj",),
                            skip_list_style="prefix")
    assert s.skip_list == ["lm_head", "model.layers.0.mlp.down_proj", "model.layers.2.", "model.layers.3."]
    full = quantize_checkpoint(src_dir, tmp_path / "full", keep_last=2, keep=("model.layers.0.mlp.down_proj",))
    assert len(full.skip_list) == 1 + 2 * 7 + 1
    assert load_tensors(tmp_path / "out").keys() == load_tensors(tmp_path / "full").keys()


def test_tied_embeddings_list_lm_head(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("tied", layers=1, tie_embeddings=True)
    s = quantize_checkpoint(src_dir, tmp_path / "out")
    assert s.skip_list == ["lm_head"] and all(m.quantize for m in s.modules)


def test_side_files_copied_pickles_not(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("dense", layers=1)
    (src_dir / "tokenizer.json").write_text('{"x": 1}')
    (src_dir / "generation_config.json").write_text('{"do_sample": false}')
    (src_dir / "chat_template.jinja").write_text("{{ messages }}")
    (src_dir / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (src_dir / "original").mkdir()
    s = quantize_checkpoint(src_dir, tmp_path / "out")
    dst = tmp_path / "out"
    assert sorted(s.copied_files) == ["chat_template.jinja", "generation_config.json", "tokenizer.json"]
    assert (dst / "tokenizer.json").read_text() == '{"x": 1}'
    assert not (dst / "pytorch_model.bin").exists() and not (dst / "original").exists()
    assert any("pytorch_model.bin" in f for f in s.skipped_files)
    mask = os.umask(0o022)
    os.umask(mask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~mask  # an ordinary directory, not mkdtemp's 0700


def test_allow_nonfinite_encodes_nan_blocks(make_synthetic, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src_dir = make_synthetic("nan", layers=1)
    tensors = load_file(str(src_dir / "model.safetensors"))
    name = "model.layers.0.mlp.gate_proj.weight"
    tensors[name][5, 40] = float("nan")
    tensors[name][7, 0] = float("inf")
    save_file(tensors, str(src_dir / "model.safetensors"))
    s = quantize_checkpoint(src_dir, tmp_path / "out", allow_nonfinite=True)
    assert s.nonfinite_blocks == {name: 2}
    out = load_tensors(tmp_path / "out")
    scale = out[name.replace(".weight", ".weight_scale_inv")]
    assert scale[5, 1] == 255 and scale[7, 0] == 255 and int((scale == 255).sum()) == 2
    assert torch.all(out[name][5, 32:64].view(torch.uint8) == 0x7F)


def test_rule_notes_and_lint(make_synthetic, tmp_path: Path) -> None:
    from mxmix.errors import MxmixError

    src_dir = make_synthetic("dense", layers=2, tie_embeddings=True)
    s = quantize_checkpoint(src_dir, tmp_path / "out", keep=("model.layers.7.mlp", "gate_proj"),
                            quantize_lm_head=True)
    text = "\n".join(s.notes)
    assert "'model.layers.7.mlp' matched no Linear module" in text
    assert "bare one-component name 'gate_proj'" in text  # a lint warning, passed on
    assert "tied to the embedding" in text
    assert {m.path for m in s.kept} == {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                                        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"}
    with pytest.raises(MxmixError, match="--keep rule ''"):
        quantize_checkpoint(src_dir, tmp_path / "bad", keep=("",))
    with pytest.raises(MxmixError, match="not a valid regex"):
        quantize_checkpoint(src_dir, tmp_path / "bad", keep=("re:(",))
    assert not (tmp_path / "bad").exists()


@pytest.mark.gpu
def test_cuda_device_writes_the_same_bytes(make_synthetic, tmp_path: Path) -> None:
    src_dir = make_synthetic("moe", layers=2, moe="stacked", experts=4, hidden=96, intermediate=160)
    quantize_checkpoint(src_dir, tmp_path / "cpu")
    s = quantize_checkpoint(src_dir, tmp_path / "gpu", device="cuda")
    assert s.device == "cuda"
    cpu, gpu = (tmp_path / "cpu" / "model.safetensors").read_bytes(), (tmp_path / "gpu" / "model.safetensors").read_bytes()
    assert cpu == gpu


def test_fp32_and_fp16_sources(make_synthetic, tmp_path: Path) -> None:
    """F32/F16 weights are quantized from their own values; F32 tensors kept as F32, 4-byte aligned."""
    from safetensors.torch import load_file, save_file

    from mxmix.checkpoint.safetensors_header import read_header

    src_dir = make_synthetic("mixed", layers=1)
    t = load_file(str(src_dir / "model.safetensors"))
    t["model.layers.0.self_attn.q_proj.weight"] = torch.randn(64, 64, dtype=torch.float32) * 3
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"].half()
    t["model.layers.0.input_layernorm.weight"] = torch.rand(64, dtype=torch.float32) + 0.5
    t["model.norm.weight"] = torch.rand(64, dtype=torch.float32)
    save_file(t, str(src_dir / "model.safetensors"))
    quantize_checkpoint(src_dir, tmp_path / "out")
    out = load_tensors(tmp_path / "out")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        _check_quantized(out, t, name, name + "_scale_inv")
    assert out["model.norm.weight"].dtype == torch.float32 and torch.equal(out["model.norm.weight"], t["model.norm.weight"])
    for info in read_header(tmp_path / "out" / "model.safetensors").tensors.values():
        assert info.begin % {"F32": 4, "BF16": 2}.get(info.dtype, 1) == 0, info.name


def test_k_major_stacked_experts_stay_bf16(make_synthetic, tmp_path: Path) -> None:
    """GPT-OSS-style [E, K, N] expert tensors would be blocked along the wrong axis: kept and reported."""
    from safetensors.torch import load_file, save_file

    src_dir = make_synthetic("kmajor", layers=1, moe="stacked", experts=2)
    t = load_file(str(src_dir / "model.safetensors"))
    for proj in ("gate_up_proj", "down_proj"):
        name = f"model.layers.0.mlp.experts.{proj}"
        t[name] = t[name].transpose(1, 2).contiguous()
    save_file(t, str(src_dir / "model.safetensors"))
    s = quantize_checkpoint(src_dir, tmp_path / "out")
    reasons = {m.weight: m.reason for m in s.modules if m.stacked}
    assert reasons == dict.fromkeys(("model.layers.0.mlp.experts.down_proj",
                                     "model.layers.0.mlp.experts.gate_up_proj"), "experts-k-major")
    assert "model.layers.0.mlp.experts" in s.skip_list
