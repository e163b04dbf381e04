"""linear_modules: Linear modules from safetensors headers alone."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.modules import layer_index, linear_modules, natural_key


def test_dense_llama(make_synthetic):
    mods = linear_modules(Checkpoint.open(make_synthetic(layers=2)))
    paths = [m.path for m in mods]
    assert "lm_head" in paths
    assert not any("embed" in p or "norm" in p for p in paths)
    assert len(paths) == 1 + 2 * 7
    q = next(m for m in mods if m.path == "model.layers.1.self_attn.q_proj")
    assert (q.kind, q.layer, q.expert, q.stacked, q.dtype, q.scale) == ("q_proj", 1, None, False, "BF16", None)
    assert q.weight == "model.layers.1.self_attn.q_proj.weight" and q.precision == "bf16"


def test_tied_embeddings_have_no_lm_head(make_synthetic):
    mods = linear_modules(Checkpoint.open(make_synthetic(layers=1, tie_embeddings=True)))
    assert "lm_head" not in [m.path for m in mods]


def test_natural_order_across_shards(make_synthetic):
    mods = linear_modules(Checkpoint.open(make_synthetic(layers=12, shards=3)))
    layers = [m.layer for m in mods if m.layer is not None]
    assert layers == sorted(layers)


def test_per_expert_moe(make_synthetic):
    mods = linear_modules(Checkpoint.open(make_synthetic(layers=2, moe="experts", experts=3)))
    ex = [m for m in mods if m.expert is not None]
    assert len(ex) == 2 * 3 * 3
    e = next(m for m in ex if m.path == "model.layers.1.mlp.experts.2.down_proj")
    assert (e.kind, e.layer, e.expert, e.stacked) == ("experts.down_proj", 1, 2, False)
    router = next(m for m in mods if m.path == "model.layers.0.mlp.gate")
    assert router.kind == "gate" and router.shape == (3, 64)


def test_stacked_experts(make_synthetic):
    mods = linear_modules(Checkpoint.open(make_synthetic(layers=2, moe="stacked", experts=4)))
    st = [m for m in mods if m.stacked]
    assert sorted((m.path, m.kind) for m in st) == [
        ("model.layers.0.mlp.experts", "experts.down_proj"), ("model.layers.0.mlp.experts", "experts.gate_up_proj"),
        ("model.layers.1.mlp.experts", "experts.down_proj"), ("model.layers.1.mlp.experts", "experts.gate_up_proj")]
    gu = next(m for m in st if m.kind == "experts.gate_up_proj" and m.layer == 0)
    assert gu.shape == (4, 256, 64) and gu.expert is None and gu.weight == "model.layers.0.mlp.experts.gate_up_proj"


def _fp8_checkpoint(root: Path) -> Path:
    root.mkdir()
    w = torch.zeros(64, 64).to(torch.float8_e4m3fn)
    save_file({
        "model.embed_tokens.weight": torch.zeros(16, 64, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": w,
        "model.layers.0.self_attn.q_proj.weight_scale_inv": torch.zeros(64, 2, dtype=torch.uint8),
        "model.layers.0.self_attn.o_proj.weight": w.clone(),
        "model.layers.0.self_attn.o_proj.weight_scale": torch.ones(1, dtype=torch.float32),
        "model.layers.0.self_attn.o_proj.bias": torch.zeros(64, dtype=torch.bfloat16),
        "model.layers.0.mlp.experts.down_proj": torch.zeros(2, 64, 64).to(torch.float8_e4m3fn),
        "model.layers.0.mlp.experts.down_proj_scale_inv": torch.zeros(2, 64, 2, dtype=torch.uint8),
        "model.layers.0.mlp.experts.down_proj_bias": torch.zeros(2, 64, dtype=torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.ones(64, dtype=torch.bfloat16),
        "transformer.wte.weight": torch.zeros(16, 64, dtype=torch.bfloat16),
        "transformer.h.3.attn.c_attn.weight": torch.zeros(64, 64, dtype=torch.float16),
    }, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"model_type": "x"}))
    return root


def test_fp8_companions_and_exclusions(tmp_path):
    mods = {(m.path, m.kind): m for m in linear_modules(Checkpoint.open(_fp8_checkpoint(tmp_path / "c")))}
    assert set(mods) == {("model.layers.0.self_attn.q_proj", "q_proj"), ("model.layers.0.self_attn.o_proj", "o_proj"),
                         ("model.layers.0.mlp.experts", "experts.down_proj"), ("transformer.h.3.attn.c_attn", "c_attn")}
    q = mods[("model.layers.0.self_attn.q_proj", "q_proj")]
    assert q.scale == "model.layers.0.self_attn.q_proj.weight_scale_inv" and q.precision == "mxfp8" and q.quantized
    o = mods[("model.layers.0.self_attn.o_proj", "o_proj")]
    assert o.scale == "model.layers.0.self_attn.o_proj.weight_scale" and o.precision == "fp8"
    ex = mods[("model.layers.0.mlp.experts", "experts.down_proj")]
    assert ex.stacked and ex.scale == "model.layers.0.mlp.experts.down_proj_scale_inv" and ex.precision == "mxfp8"
    assert mods[("transformer.h.3.attn.c_attn", "c_attn")].layer == 3
    assert mods[("transformer.h.3.attn.c_attn", "c_attn")].precision == "f16"


def test_headers_only(make_synthetic, monkeypatch):
    import mxmix.checkpoint.safetensors_header as sh

    def boom(*a, **k):
        raise AssertionError("tensor data read")

    monkeypatch.setattr(sh, "read_tensor", boom)
    assert linear_modules(Checkpoint.open(make_synthetic(layers=1)))


def test_helpers():
    assert layer_index(["model", "layers", "12", "mlp"]) == 12
    assert layer_index(["lm_head"]) is None
    assert natural_key("layers.2") < natural_key("layers.10")


def test_decoder_layer_agrees_with_layer_index() -> None:
    from mxmix.checkpoint.modules import decoder_layer, layer_index

    assert decoder_layer("model.layers.34.mlp.experts.0.down_proj") == ("model.layers.34", 34)
    assert decoder_layer("transformer.h.3.attn.c_attn") == ("transformer.h.3", 3)
    assert decoder_layer("lm_head") is None
    assert decoder_layer("model.layers.7") is None  # the layer itself, not a module inside it
    for path in ("model.layers.34.mlp.down_proj", "transformer.h.3.attn.c_attn", "model.layers.x.q_proj"):
        found = decoder_layer(path)
        assert (found[1] if found else None) == layer_index(path.split("."))


def test_linear_modules_and_views_are_computed_once_per_open(make_synthetic):
    """inspect and audit on one open share linear_modules / module_views: the same answers as a fresh
    open, as fresh lists; forget_derived recomputes after an in-place edit."""
    from mxmix.checkpoint.inspect import module_views

    path = make_synthetic(layers=2, moe="experts", experts=3)
    ckpt = Checkpoint.open(path)
    first, again = linear_modules(ckpt), linear_modules(ckpt)
    assert first == again == linear_modules(Checkpoint.open(path))
    assert first is not again and all(a is b for a, b in zip(first, again))
    views = module_views(ckpt)
    assert views == module_views(ckpt, first) == module_views(Checkpoint.open(path))
    assert module_views(ckpt, first[::-1]) == views[::-1]          # other module lists are not cached
    assert module_views(ckpt, first[:1]) == views[:1]
    first.clear()                                                   # callers own the list they get
    assert linear_modules(ckpt) == again
    victim = again[0].weight
    del ckpt.tensors[victim]
    ckpt.forget_derived()
    assert victim not in {m.weight for m in linear_modules(ckpt)}
