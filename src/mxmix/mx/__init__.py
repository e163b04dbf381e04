"""MXFP8 codec: float tensors ↔ (float8_e4m3fn elements, E8M0 uint8 scale bytes per 32-element block).

``quantize(x, block_size=32, scale_mode="rceil") -> (q, scale)`` and
``dequantize(q, scale, dtype=torch.bfloat16, block_size=32)``; CUDA tensors use a Triton kernel,
CPU tensors a vectorised torch path, both equal bit for bit to ``mxmix.mx.reference``.
"""

from __future__ import annotations

from mxmix.mx.api import BACKENDS, MxCodecError, dequantize, quantize, triton_available
from mxmix.mx.formats import DEFAULT_BLOCK_SIZE, E4M3_MAX, E8M0_BIAS, E8M0_NAN, SCALE_MODES

__all__ = [
    "BACKENDS",
    "DEFAULT_BLOCK_SIZE",
    "E4M3_MAX",
    "E8M0_BIAS",
    "E8M0_NAN",
    "SCALE_MODES",
    "MxCodecError",
    "dequantize",
    "quantize",
    "triton_available",
]
