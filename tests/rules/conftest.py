"""Fixtures for the rule-engine tests: small mixed MXFP8/BF16 checkpoints written directly.

The converter has its own tests; these checkpoints are built here (cast + dummy scales) so the
plan/lint tests depend only on the header layout they exercise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def write_mixed(dest: Path, *, keep: set[str], quantization_config: dict[str, Any] | None,
                moe: str | None = None, layers: int = 3, hf_quant_config: dict[str, Any] | None = None,
                scale_suffix: str = "weight_scale_inv") -> Path:
    """A synthetic checkpoint where every Linear weight whose module path is not in ``keep`` is stored
    as E4M3 with a uint8 ``[N, K/32]`` companion scale."""
    import torch
    from safetensors.torch import save_file

    from mxmix.example.synthetic import SyntheticSpec, synthetic_config, synthetic_tensors

    spec = SyntheticSpec(layers=layers, moe=moe, experts=2)
    tensors = synthetic_tensors(spec)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        module = name.rsplit(".", 1)[0]
        linear = t.dim() == 2 and name.endswith(".weight") and "embed" not in name and "norm" not in name
        if linear and module not in keep:
            out[name] = t.to(torch.float8_e4m3fn)
            out[f"{module}.{scale_suffix}"] = torch.full((t.shape[0], t.shape[1] // 32), 127, dtype=torch.uint8)
        elif t.dim() == 3 and "experts" not in keep and not any(k in name for k in keep):
            out[name] = t.to(torch.float8_e4m3fn)
            out[f"{name}_{scale_suffix.removeprefix('weight_')}"] = torch.full(
                (t.shape[0], t.shape[1], t.shape[2] // 32), 127, dtype=torch.uint8)
        else:
            out[name] = t
    dest.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_config(spec)
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    (dest / "config.json").write_text(json.dumps(cfg))
    if hf_quant_config is not None:
        (dest / "hf_quant_config.json").write_text(json.dumps(hf_quant_config))
    save_file(out, str(dest / "model.safetensors"))
    return dest


@pytest.fixture
def make_mixed(tmp_path: Path):
    def make(name: str = "mixed", **kw: Any) -> Path:
        return write_mixed(tmp_path / name, **kw)

    return make
