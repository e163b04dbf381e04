"""Triton kernels for MXFP8 weight-only matmuls on NVIDIA GPUs, and the M-based dispatch between them.

Importing this package needs Triton and is only done on the CUDA path of `MXFP8Linear`.
"""

from __future__ import annotations

import torch

from mxmix.runtime.kernels.triton_decode import DecodeConfig, default_decode_config, mxfp8_decode_matmul
from mxmix.runtime.kernels.triton_prefill import (
    PrefillConfig,
    dequantize_cuda,
    dequantize_to,
    mxfp8_prefill_cublas,
    mxfp8_prefill_fused,
)

__all__ = [
    "DECODE_MAX_M",
    "FUSED_MAX_M",
    "DecodeConfig",
    "PrefillConfig",
    "choose_path",
    "default_decode_config",
    "dequantize_cuda",
    "dequantize_to",
    "kernel_path",
    "mxfp8_decode_matmul",
    "mxfp8_matmul",
    "mxfp8_prefill_cublas",
    "mxfp8_prefill_fused",
]

# Dispatch thresholds on M (rows of the flattened activation), from benchmarks/bench_kernels.py on H100/H200.
DECODE_MAX_M = 16
FUSED_MAX_M = 256


def choose_path(m: int, swab: bool = False) -> str:
    """Which kernel serves M rows: 'decode' (weight streaming), 'fused' (dequant in the MMA loop), 'cublas'.

    ``swab``: the operand-A Gluon decode kernel can serve this call (`kernel_path`); it then also takes
    M up to `triton_decode.SWAB_MAX_M`, where it streams the weight once for all rows.
    """
    from mxmix.runtime.kernels.triton_decode import SWAB_MAX_M

    if m <= DECODE_MAX_M or (swab and m <= SWAB_MAX_M):
        return "decode"
    if m <= FUSED_MAX_M:
        return "fused"
    return "cublas"


def kernel_path(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> str:
    """The path `mxfp8_matmul` takes for these operands."""
    from mxmix.runtime.kernels import triton_decode as td

    m = x.shape[0]
    swab = DECODE_MAX_M < m <= td.SWAB_MAX_M and td.SWAB and td.swab_runs(x, weight, scale, 128)
    return choose_path(m, swab)


def mxfp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ dequant(weight, scale)^T (+ bias) for x [M, K] on CUDA; output dtype = x.dtype."""
    path = kernel_path(x, weight, scale)
    if path == "decode":
        return mxfp8_decode_matmul(x, weight, scale, bias)
    if path == "fused":
        return mxfp8_prefill_fused(x, weight, scale, bias)
    return mxfp8_prefill_cublas(x, weight, scale, bias)
