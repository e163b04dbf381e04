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


def _substituted_logits(smollm2_bf16: Path, stored: dict[str, torch.Tensor], scale_suffix: str,
                        ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the BF16 model before and after substituting mxmix's dequantization of ``stored``."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(smollm2_bf16, dtype=torch.bfloat16).eval()
    scale_of = {name[: -len(scale_suffix)] + ".weight": name for name in stored if name.endswith(scale_suffix)}
    substituted = {w: mx.dequantize(stored[w], stored[s], torch.bfloat16) for w, s in scale_of.items()}
    assert len(substituted) == (LAYERS - 6) * 7
    with torch.no_grad():
        before = reference(ids).logits.float()
        _, unexpected = reference.load_state_dict(substituted, strict=False)
        assert not unexpected
        return before, reference(ids).logits.float()


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(1))


def _assert_real_quantization(got: torch.Tensor, bf16_logits: torch.Tensor) -> None:
    assert (got - bf16_logits).abs().max().item() > 1e-2  # the weights really were quantized ...
    agree = (got.argmax(-1) == bf16_logits.argmax(-1)).float().mean().item()
    assert agree > 0.75, agree  # ... and MXFP8 stays close to BF16


def test_transformers_reads_the_mxfp8_checkpoint(smollm2_bf16: Path, smollm2_mixed: Path) -> None:
    """transformers' own `mxfp8` loader (FineGrainedFP8, dequantizing on CPU) gives the same logits as the
    BF16 model with mxmix's dequantized weights substituted."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    loaded = AutoModelForCausalLM.from_pretrained(smollm2_mixed, dtype=torch.bfloat16).eval()
    assert loaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16  # dequantized on CPU
    ids = _ids(loaded.config.vocab_size)
    bf16_logits, want = _substituted_logits(smollm2_bf16, load_tensors(smollm2_mixed), ".weight_scale_inv", ids)
    with torch.no_grad():
        got = loaded(ids).logits.float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    _assert_real_quantization(got, bf16_logits)


def test_compressed_tensors_reads_its_dialect(smollm2_bf16: Path, tmp_path: Path) -> None:
    """The compressed-tensors library (through transformers) runs our `compressed-tensors` output with the
    MXFP8 weights still compressed, and matches mxmix's dequantization."""
    pytest.importorskip("compressed_tensors", reason="pip install compressed-tensors (mxmix[test])")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from mxmix.checkpoint.convert import quantize_checkpoint

    hf_logging.set_verbosity_error()
    dst = tmp_path / "ct"
    quantize_checkpoint(smollm2_bf16, dst, keep_last=6, dialect="compressed-tensors")
    loaded = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16).eval()
    q = loaded.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale.dtype == torch.uint8  # run compressed
    assert loaded.model.layers[29].self_attn.q_proj.weight.dtype == torch.bfloat16  # `ignore` was honoured
    ids = _ids(loaded.config.vocab_size)
    bf16_logits, want = _substituted_logits(smollm2_bf16, load_tensors(dst), ".weight_scale", ids)
    with torch.no_grad():
        got = loaded(ids).logits.float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    _assert_real_quantization(got, bf16_logits)


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
