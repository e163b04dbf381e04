"""Helpers for the converter tests: read outputs with the real safetensors library, check atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from mxmix.checkpoint.safetensors_header import read_header


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, read with the safetensors library (not our reader)."""
    out: dict[str, torch.Tensor] = {}
    files = sorted(directory.glob("*.safetensors"))
    assert files, f"no safetensors in {directory}"
    for f in files:
        read_header(f)  # and our strict reader accepts it too
        with safe_open(str(f), "pt") as h:
            for k in h.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                assert k not in out, f"{k} in two shards"
                out[k] = h.get_tensor(k)
    return out


def config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def assert_nothing_written(dst: Path) -> None:
    """No destination and no temporary sibling left behind."""
    assert not dst.exists(), f"{dst} was created"
    leftovers = [p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
