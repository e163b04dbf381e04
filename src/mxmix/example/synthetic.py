"""Small synthetic HF checkpoints with real layouts (dense Llama, per-expert MoE, stacked-expert MoE).

Used by the tests, the benchmarks and `mxmix plan` examples: a checkpoint the project can generate
anywhere, in milliseconds, with the module names real engines see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SyntheticSpec:
    layers: int = 4
    hidden: int = 64
    intermediate: int = 128
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 256
    moe: str | None = None      # None | "experts" (per-expert tensors) | "stacked" (3-D [E, N, K])
    experts: int = 4
    tie_embeddings: bool = False
    seed: int = 0


def synthetic_config(spec: SyntheticSpec) -> dict[str, Any]:
    head_dim = spec.hidden // spec.heads
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec.hidden, "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "head_dim": head_dim, "vocab_size": spec.vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": spec.tie_embeddings, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    if spec.moe:
        cfg.update({
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "num_experts": spec.experts, "num_experts_per_tok": 2, "moe_intermediate_size": spec.intermediate,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
            "attention_bias": False, "output_router_logits": False, "router_aux_loss_coef": 0.0,
        })
    return cfg


def synthetic_tensors(spec: SyntheticSpec) -> dict[str, Any]:
    """name -> bf16 tensor, in checkpoint order."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.05).to(torch.bfloat16)

    h, i, hd = spec.hidden, spec.intermediate, spec.hidden // spec.heads
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": w(spec.vocab, h)}
    for n in range(spec.layers):
        p = f"model.layers.{n}"
        out[f"{p}.input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        out[f"{p}.post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        out[f"{p}.self_attn.q_proj.weight"] = w(spec.heads * hd, h)
        out[f"{p}.self_attn.k_proj.weight"] = w(spec.kv_heads * hd, h)
        out[f"{p}.self_attn.v_proj.weight"] = w(spec.kv_heads * hd, h)
        out[f"{p}.self_attn.o_proj.weight"] = w(h, spec.heads * hd)
        if spec.moe:
            out[f"{p}.self_attn.q_norm.weight"] = torch.ones(hd, dtype=torch.bfloat16)
            out[f"{p}.self_attn.k_norm.weight"] = torch.ones(hd, dtype=torch.bfloat16)
        if spec.moe is None:
            out[f"{p}.mlp.gate_proj.weight"] = w(i, h)
            out[f"{p}.mlp.up_proj.weight"] = w(i, h)
            out[f"{p}.mlp.down_proj.weight"] = w(h, i)
        elif spec.moe == "experts":
            out[f"{p}.mlp.gate.weight"] = w(spec.experts, h)
            for e in range(spec.experts):
                out[f"{p}.mlp.experts.{e}.gate_proj.weight"] = w(i, h)
                out[f"{p}.mlp.experts.{e}.up_proj.weight"] = w(i, h)
                out[f"{p}.mlp.experts.{e}.down_proj.weight"] = w(h, i)
        elif spec.moe == "stacked":
            out[f"{p}.mlp.gate.weight"] = w(spec.experts, h)
            out[f"{p}.mlp.experts.gate_up_proj"] = w(spec.experts, 2 * i, h)
            out[f"{p}.mlp.experts.down_proj"] = w(spec.experts, h, i)
        else:
            raise ValueError(f"unknown moe style {spec.moe!r}")
    out["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    if not spec.tie_embeddings:
        out["lm_head.weight"] = w(spec.vocab, h)
    return out


def write_synthetic_checkpoint(dest: str | Path, spec: SyntheticSpec | None = None, *,
                               shards: int = 1, extra_config: dict[str, Any] | None = None) -> Path:
    """Write config.json + safetensors (sharded with an index when ``shards > 1``) into ``dest``."""
    from safetensors.torch import save_file

    spec = spec or SyntheticSpec()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_config(spec)
    cfg.update(extra_config or {})
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = synthetic_tensors(spec)
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
        return dest
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(dest / fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return dest
