"""The converter on the real SmolLM2-135M-Instruct, read back by a real consumer: transformers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from convert_util import config, load_tensors

import mxmix.mx as mx
from mxmix.cli.main import main
from mxmix.rules.plan import plan_checkpoint

pytestmark = pytest.mark.slow
LAYERS = 30
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_mixed_checkpoint_layout(smollm2_bf16: Path, smollm2_mixed: Path) -> None:
    out = load_tensors(smollm2_mixed)
    src = load_tensors(smollm2_bf16)
    for layer in range(LAYERS):
        for proj in PROJ:
            module = f"model.layers.{layer}.{'self_attn' if proj[0] in 'qkvo' else 'mlp'}.{proj}"
            w = out[f"{module}.weight"]
            if layer >= LAYERS - 6:
                assert w.dtype == torch.bfloat16 and torch.equal(w, src[f"{module}.weight"]), module
                assert f"{module}.weight_scale_inv" not in out
            else:
                s = out[f"{module}.weight_scale_inv"]
                assert w.dtype == torch.float8_e4m3fn and s.shape == (w.shape[0], w.shape[1] // 32), module
    assert out["model.embed_tokens.weight"].dtype == torch.bfloat16 and "lm_head.weight" not in out
    qc = config(smollm2_mixed)["quantization_config"]
    assert qc["ignored_layers"] == qc["modules_to_not_convert"]
    assert len(qc["ignored_layers"]) == 6 * 7 + 1 and qc["ignored_layers"][0] == "lm_head"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (smollm2_mixed / name).read_bytes() == (smollm2_bf16 / name).read_bytes()
    plan = plan_checkpoint(smollm2_mixed)
    assert plan.disagreements() == dict.fromkeys(plan.engines, 0)


@pytest.fixture(scope="module")
def expected_logits(smollm2_bf16: Path, smollm2_mixed: Path) -> dict[str, torch.Tensor]:
    """Token ids, and logits of the BF16 model before and after substituting mxmix's dequantized weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    stored = load_tensors(smollm2_mixed)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_bf16, dtype=torch.bfloat16).eval()
    substituted = {name[: -len("_scale_inv")]: mx.dequantize(stored[name[: -len("_scale_inv")]], stored[name])
                   for name in stored if name.endswith(".weight_scale_inv")}
    assert len(substituted) == (LAYERS - 6) * 7
    ids = torch.randint(0, reference.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = reference(ids).logits.float()
        _, unexpected = reference.load_state_dict(substituted, strict=False)
        assert not unexpected
        return {"ids": ids, "bf16": before, "mxmix": reference(ids).logits.float()}


def _check_consumer_logits(model, expected: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        got = model(expected["ids"]).logits.float()
    torch.testing.assert_close(got, expected["mxmix"], atol=1e-5, rtol=0)
    assert (got - expected["bf16"]).abs().max().item() > 1e-2  # the weights really were quantized ...
    agree = (got.argmax(-1) == expected["bf16"].argmax(-1)).float().mean().item()
    assert agree > 0.75, agree  # ... and MXFP8 stays close to BF16


def test_transformers_reads_the_mxfp8_checkpoint(smollm2_mixed: Path, expected_logits) -> None:
    """transformers' own `mxfp8` loader (FineGrainedFP8, dequantizing on CPU) gives the same logits as the
    BF16 model with mxmix's dequantized weights substituted."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(smollm2_mixed, dtype=torch.bfloat16).eval()
    assert loaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16  # dequantized on CPU
    _check_consumer_logits(loaded, expected_logits)


def test_compressed_tensors_reads_its_dialect(smollm2_bf16: Path, smollm2_mixed: Path, tmp_path: Path,
                                              expected_logits) -> None:
    """The compressed-tensors library (through transformers) runs our `compressed-tensors` output with the
    MXFP8 weights still compressed, and matches mxmix's dequantization."""
    pytest.importorskip("compressed_tensors", reason="pip install compressed-tensors (mxmix[test])")
    from transformers import AutoModelForCausalLM

    from mxmix.checkpoint.convert import quantize_checkpoint

    dst = tmp_path / "ct"
    quantize_checkpoint(smollm2_bf16, dst, keep_last=6, dialect="compressed-tensors")
    ct, sg = load_tensors(dst), load_tensors(smollm2_mixed)
    renamed = {k.replace(".weight_scale", ".weight_scale_inv"): v for k, v in ct.items()}
    assert renamed.keys() == sg.keys()  # same bytes, other names
    assert all(torch.equal(renamed[k].view(torch.uint8) if renamed[k].dtype == torch.float8_e4m3fn else renamed[k],
                           sg[k].view(torch.uint8) if sg[k].dtype == torch.float8_e4m3fn else sg[k]) for k in sg)
    loaded = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16).eval()
    q = loaded.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale.dtype == torch.uint8  # run compressed
    assert loaded.model.layers[29].self_attn.q_proj.weight.dtype == torch.bfloat16  # `ignore` was honoured
    _check_consumer_logits(loaded, expected_logits)


def test_cli_on_real_model_other_dialect_and_shards(smollm2_bf16: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "ct"
    code = main(["quantize", str(smollm2_bf16), str(dst), "--keep-last", "6", "--keep", "model.layers.0.mlp",
                 "--dialect", "compressed-tensors", "--max-shard-size", "60MB", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"modules": 210, "quantized": 165, "kept": 45,
                                 "by_reason": {"quantize": 165, "keep-rule": 3, "keep-last": 42}}
    assert len(summary["shards"]) >= 3 and summary["bytes_after"] < 0.75 * summary["bytes_before"]
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(summary["shards"])
    out = load_tensors(dst)
    assert "model.layers.1.mlp.up_proj.weight_scale" in out and "model.layers.0.mlp.up_proj.weight_scale" not in out
    plan = plan_checkpoint(dst)
    assert plan.dialect == "compressed-tensors" and plan.disagreements() == dict.fromkeys(plan.engines, 0)
