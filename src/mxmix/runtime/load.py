"""Load a mixed MXFP8/BF16 checkpoint as a transformers model (work in progress)."""

from __future__ import annotations

from torch import nn


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (e.g. model.layers.0.mlp.up_proj)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)
