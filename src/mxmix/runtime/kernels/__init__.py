"""Triton kernels for MXFP8 weight-only matmuls on NVIDIA GPUs, and the M-based dispatch between them.

Importing this package needs Triton and is only done on the CUDA path of `MXFP8Linear`.
"""

from __future__ import annotations

import torch

from mxmix.runtime import tiles
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
    "gluon_max_m",
    "kernel_path",
    "mxfp8_decode_matmul",
    "mxfp8_matmul",
    "mxfp8_prefill_cublas",
    "mxfp8_prefill_fused",
    "tiled_layout_pays",
]

# Dispatch thresholds on M (rows of the flattened activation), from benchmarks/bench_kernels.py on H100/H200.
DECODE_MAX_M = 16
FUSED_MAX_M = 256


def choose_path(m: int, gluon_max_m: int = 0) -> str:
    """Which kernel serves M rows: 'decode' (weight streaming), 'fused' (dequant in the MMA loop), 'cublas'.

    ``gluon_max_m``: the largest M the Gluon kernels take for this call (`gluon_max_m`); they stream the
    weight once for all rows, so they also serve M above DECODE_MAX_M up to it.
    """
    if m <= max(DECODE_MAX_M, gluon_max_m):
        return "decode"
    if m <= FUSED_MAX_M:
        return "fused"
    return "cublas"


def gluon_max_m(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> int:
    """The largest M the Gluon kernels serve for these operands by default: `triton_decode.WGMMA_MAX_M`
    where the wgmma kernel runs (Hopper), `triton_decode.SWAB_MAX_M` where the mma.sync one does, else 0."""
    from mxmix.runtime.kernels import triton_decode as td

    if not td.SWAB:
        return 0
    if td.WGMMA and x.shape[0] <= td.WGMMA_MAX_M and td.wgmma_runs(x, weight, scale, 128):
        return td.WGMMA_MAX_M
    if x.shape[0] <= td.SWAB_MAX_M and td.swab_runs(x, weight, scale, 128):
        return td.SWAB_MAX_M
    return 0


def kernel_path(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> str:
    """The path `mxfp8_matmul` takes for these operands."""
    m = x.shape[0]
    return choose_path(m, gluon_max_m(x, weight, scale) if m > DECODE_MAX_M else 0)


def mxfp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None, tiled: bool = False) -> torch.Tensor:
    """y = x @ dequant(weight, scale)^T (+ bias) for x [M, K] on CUDA; output dtype = x.dtype.

    ``tiled``: weight and scale are in the tiled layout (`mxmix.runtime.tiles`, see `tiled_layout_pays`)."""
    path = kernel_path(x, weight, scale)
    if path == "decode":
        return mxfp8_decode_matmul(x, weight, scale, bias, tiled=tiled)
    if path == "fused":
        if tiled:  # the fused Triton kernel reads row-major weights (it serves GPUs without wgmma)
            weight, scale = tiles.untile(weight, scale)
        return mxfp8_prefill_fused(x, weight, scale, bias)
    return mxfp8_prefill_cublas(x, weight, scale, bias, tiled=tiled)


def tiled_layout_pays(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether to keep this MXFP8 weight in the tiled layout: the ``wgmma`` kernel serves its decode calls
    here (Hopper, Gluon kernels on, ``dtype`` bf16, scales in the fold range) and the shape tiles."""
    from mxmix.runtime.kernels import gluon_decode, gluon_wgmma, triton_decode

    return (weight.is_cuda and dtype == torch.bfloat16 and triton_decode.SWAB and triton_decode.WGMMA
            and gluon_wgmma.supports(1, weight.shape[1], 128, weight.device)
            and tiles.can_tile(*weight.shape) and gluon_decode.fold_exact(scale))
