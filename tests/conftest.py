"""Shared fixtures: synthetic checkpoints, the real SmolLM2 checkpoint (built once per session), GPU skip."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing entirely
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_synthetic(tmp_path: Path):
    """Factory: make_synthetic(name="ckpt", shards=1, extra_config=None, **SyntheticSpec fields) -> Path."""
    from mxmix.example.synthetic import SyntheticSpec, write_synthetic_checkpoint

    def make(name: str = "ckpt", *, shards: int = 1, extra_config: dict | None = None, **spec) -> Path:
        return write_synthetic_checkpoint(tmp_path / name, SyntheticSpec(**spec), shards=shards,
                                          extra_config=extra_config)

    return make


@pytest.fixture(scope="session")
def smollm2_bf16() -> Path:
    """The real SmolLM2-135M-Instruct as a BF16 HF checkpoint (cached across runs; read-only!)."""
    from mxmix.example.smollm2 import cached_smollm2_checkpoint

    return cached_smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2_mixed(smollm2_bf16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 quantized to MXFP8 with the last 6 decoder layers kept BF16 (sglang dialect; read-only!)."""
    from mxmix.checkpoint.convert import quantize_checkpoint

    dst = tmp_path_factory.mktemp("smollm2") / "mixed-last6"
    quantize_checkpoint(smollm2_bf16, dst, keep_last=6)
    return dst
