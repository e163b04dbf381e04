"""`mxmix run` and the greedy decoder behind it (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from mxmix.cli.main import main


def test_greedy_generate_matches_transformers_generate() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from mxmix.runtime import MXFP8Linear
    from mxmix.runtime.generate import greedy_generate
    from mxmix.runtime.load import set_submodule

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, eos_token_id=None, bos_token_id=None)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval().requires_grad_(False)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear):
            set_submodule(model, name, MXFP8Linear.from_linear(mod))
    ids = torch.randint(0, 300, (1, 7), generator=torch.Generator().manual_seed(1))
    res = greedy_generate(model, ids, 9, stop_at_eos=False)
    want = model.generate(ids, max_new_tokens=9, do_sample=False, min_new_tokens=9)[0, 7:].tolist()
    assert res.tokens == want
    assert res.timed_tokens == 7 and res.mode == "eager"
    assert res.decode_tokens_per_s > 0


@pytest.mark.slow
def test_run_prints_json_generation(smollm2_mixed, capsys) -> None:
    code = main(["run", str(smollm2_mixed), "--prompt", "The capital of France is", "--max-new-tokens", "4",
                 "--device", "cpu", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert "Paris" in data["text"]
    assert 1 <= data["new_tokens"] <= 4
    assert data["decode_tokens_per_s"] is None or data["decode_tokens_per_s"] > 0
    assert data["model_mxfp8_modules"] > 0 and data["model_dialect"] == "sglang"


@pytest.mark.slow
def test_run_human_output(smollm2_mixed, capsys) -> None:
    assert main(["run", str(smollm2_mixed), "--prompt", "Hello", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Hello") and "tok/s" in out and "MXFP8" in out


def test_run_errors_are_one_line(tmp_path, make_synthetic, capsys) -> None:
    assert main(["run", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mxmix: error:") and err.count("\n") == 1
    ckpt = make_synthetic("notok", layers=1, hidden=64, intermediate=64, vocab=128)
    assert main(["run", str(ckpt), "--prompt", "x", "--device", "cpu"]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert main(["run", str(ckpt), "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
