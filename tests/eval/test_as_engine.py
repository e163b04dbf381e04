"""--as-engine: each engine's reading of the skip list, applied online, on synthetic mixed checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.checkpoint.layout import Checkpoint
from mxmix.errors import MxmixError
from mxmix.eval.as_engine import engine_view, load_as_engine, quantizable_linears
from mxmix.eval.models import load_model

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def mixed_pair(make_synthetic, tmp_path):
    src = make_synthetic("bf16", layers=4, hidden=64, intermediate=128, vocab=128, seed=3)
    allq = tmp_path / "all"
    prefix = tmp_path / "last2-prefix"
    quantize_checkpoint(src, allq, progress=False)
    quantize_checkpoint(src, prefix, keep_last=2, skip_list_style="prefix", progress=False)
    return src, allq, prefix


def paths(layers):
    return sorted(f"model.layers.{n}.{'mlp' if k.endswith(('gate_proj', 'up_proj', 'down_proj')) else 'self_attn'}.{k}"
                  for n in layers for k in KINDS)


def test_engine_views_of_a_prefix_skip_list(mixed_pair) -> None:
    _, _, prefix = mixed_pair
    ckpt = Checkpoint.open(prefix)
    mods = paths(range(4))
    cur = engine_view(ckpt, mods, "sglang")
    assert sorted(cur.kept_bf16) == paths([2, 3]) and sorted(cur.stored_fp8) == paths([0, 1])
    assert cur.quantized_online == [] and cur.stored_fp8_engine_keeps == []
    old = engine_view(ckpt, mods, "sglang-23467")  # 'model.layers.N.' matches nothing in that state
    assert sorted(old.quantized_online) == paths([2, 3]) and old.kept_bf16 == []
    with pytest.raises(MxmixError, match="unknown engine"):
        engine_view(ckpt, mods, "sglang-9000")


def test_the_misreading_equals_quantizing_everything(mixed_pair) -> None:
    _, allq, prefix = mixed_pair
    x = torch.randint(0, 128, (1, 24))
    with torch.inference_mode():
        ref_all = load_model(allq).forward(x).logits
        as_old, view = load_as_engine(prefix, "sglang-23467")
        as_cur, _ = load_as_engine(prefix, "sglang")
        stored = load_model(prefix).forward(x).logits
        old = as_old(x).logits
        cur = as_cur(x).logits
    assert len(view.quantized_online) == 14
    # online MXFP8 of the stored BF16 = what the converter wrote for the all-MXFP8 checkpoint
    torch.testing.assert_close(old, ref_all, rtol=0, atol=0)
    torch.testing.assert_close(cur, stored, rtol=0, atol=0)
    assert (cur - old).abs().max() > 0
    names = [n for n, _ in quantizable_linears(as_cur)]
    assert "lm_head" not in names and len(names) == 28


def test_partial_shard_list_is_refused_like_the_engine(mixed_pair, tmp_path) -> None:
    import shutil

    _, _, prefix = mixed_pair
    broken = tmp_path / "broken"
    shutil.copytree(prefix, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["quantization_config"]["ignored_layers"] = ["model.layers.3.self_attn.q_proj"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MxmixError, match="would refuse to load"):
        engine_view(Checkpoint.open(broken), paths(range(4)), "sglang")
