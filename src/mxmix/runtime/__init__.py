"""Run mixed MXFP8/BF16 checkpoints in PyTorch: `MXFP8Linear` and `load` (a transformers model).

Importing this package stays light: Triton kernels load only when a CUDA forward needs them.
"""

from __future__ import annotations

from typing import Any

from mxmix.runtime.mxfp8_linear import MXFP8Linear, reference_forward, set_cpu_weight_cache, tile_weights

__all__ = ["MXFP8Linear", "load", "reference_forward", "set_cpu_weight_cache", "tile_weights"]


def load(checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
    """See `mxmix.runtime.load.load`."""
    from mxmix.runtime.load import load as _load

    return _load(checkpoint, *args, **kwargs)
