"""`install_pointwise` off CUDA, and which modules it would even consider (the GPU file checks the kernels)."""

from __future__ import annotations

import torch
from torch import nn

from mxmix.runtime.pointwise import _is_norm_candidate, _norm_eps, install_pointwise, remove_pointwise


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_cpu_model_is_left_alone() -> None:
    model = _tiny_llama()
    from transformers.models.llama import modeling_llama

    rotary = modeling_llama.apply_rotary_pos_emb
    ids = torch.randint(0, 100, (1, 9))
    with torch.inference_mode():
        before = model(ids).logits
    report = install_pointwise(model)
    assert report.norms == 0 and report.rotary_modules == [] and report.refused == ["not on CUDA"]
    assert modeling_llama.apply_rotary_pos_emb is rotary
    assert not any("forward" in m.__dict__ for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, before)
    remove_pointwise(model)  # nothing to undo: still a no-op
    assert modeling_llama.apply_rotary_pos_emb is rotary


def test_norm_candidates_are_weighted_rmsnorms_with_a_float_eps() -> None:
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    llama = LlamaRMSNorm(32, eps=1e-5)
    assert _is_norm_candidate(llama) and _norm_eps(llama) == 1e-5
    assert _is_norm_candidate(GemmaRMSNorm(32, eps=1e-6))  # a candidate; the GPU probe refuses it
    assert not _is_norm_candidate(nn.LayerNorm(32))         # has a bias, and is not an RMSNorm
    assert not _is_norm_candidate(nn.Linear(32, 32))

    class RMSNormWithoutEps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))

    assert not _is_norm_candidate(RMSNormWithoutEps())
