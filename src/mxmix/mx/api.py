"""Public MXFP8 codec entry points: validate once, then dispatch to a backend.

Backends: "reference" (pure Python, slow, the definition), "torch" (vectorised, CPU or any device),
"triton" (CUDA kernel). "auto" picks Triton for CUDA tensors when Triton imports, else "torch".
All backends produce identical bytes.
"""

from __future__ import annotations

import functools

import torch

from mxmix.errors import MxmixError
from mxmix.mx.formats import DEFAULT_BLOCK_SIZE, SCALE_MODES

FLOAT_INPUTS = (torch.bfloat16, torch.float16, torch.float32)
BACKENDS = ("auto", "reference", "torch", "triton")
MAX_BLOCK_SIZE = 1024


class MxCodecError(MxmixError, ValueError):
    """Bad input to the codec (a ValueError too, for callers that expect one)."""


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise MxCodecError(f"block_size must be an int, got {block_size!r}")
    if block_size < 1 or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise MxCodecError(f"block_size must be a power of two between 1 and {MAX_BLOCK_SIZE}, got {block_size}")
    return block_size


def _check_scale_mode(scale_mode: str) -> str:
    mode = scale_mode.lower() if isinstance(scale_mode, str) else scale_mode
    if mode not in SCALE_MODES:
        raise MxCodecError(f"unknown scale_mode {scale_mode!r}; choose one of {', '.join(SCALE_MODES)}")
    return mode


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise MxCodecError(f"unknown codec backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


@functools.cache
def triton_available() -> bool:
    """Whether the Triton kernel can be used (Triton imports and CUDA is present)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def _resolve(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton" and (device.type != "cuda" or not triton_available()):
        raise MxCodecError("backend 'triton' needs a CUDA tensor and an importable Triton")
    return backend


@torch.no_grad()
def quantize(x: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE, scale_mode: str = "rceil", *,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8-quantize ``x`` in blocks of ``block_size`` along its last dimension.

    Returns ``(q, scale)``: ``q`` float8_e4m3fn with ``x``'s shape, ``scale`` uint8 E8M0 bytes of shape
    ``[..., ceil(K / block_size)]``. A partial last block uses only its real elements. Blocks with NaN or
    ±Inf get scale byte 255 and elements 0x7F; all-zero blocks get scale byte 0.
    """
    if not isinstance(x, torch.Tensor):
        raise MxCodecError(f"quantize expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_INPUTS:
        raise MxCodecError(f"quantize accepts bfloat16, float16 or float32 tensors, got {x.dtype}")
    if x.ndim < 1:
        raise MxCodecError("quantize needs a tensor with at least one dimension (blocks run along the last)")
    block_size = _check_block_size(block_size)
    scale_mode = _check_scale_mode(scale_mode)
    chosen = _resolve(_check_backend(backend), x.device)
    if x.shape[-1] == 0 or x.numel() == 0:
        n_blocks = -(-x.shape[-1] // block_size)
        return (torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device),
                torch.empty(*x.shape[:-1], n_blocks, dtype=torch.uint8, device=x.device))
    if chosen == "reference":
        from mxmix.mx import reference

        q, s = reference.quantize(x, block_size, scale_mode)
        return q.to(x.device), s.to(x.device)
    if chosen == "triton":
        from mxmix.mx import triton_codec

        return triton_codec.quantize(x, block_size, scale_mode)
    from mxmix.mx import fast

    return fast.quantize(x, block_size, scale_mode)


@torch.no_grad()
def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
               block_size: int = DEFAULT_BLOCK_SIZE, *, backend: str = "auto") -> torch.Tensor:
    """Decode MXFP8: ``e4m3(q) * 2^(scale - 127)`` rounded once to ``dtype``; scale byte 255 → NaN."""
    if not isinstance(q, torch.Tensor) or not isinstance(scale, torch.Tensor):
        raise MxCodecError("dequantize expects torch tensors for q and scale")
    if q.dtype != torch.float8_e4m3fn:
        raise MxCodecError(f"dequantize expects q as float8_e4m3fn, got {q.dtype}")
    if scale.dtype != torch.uint8:
        raise MxCodecError(f"dequantize expects E8M0 scale bytes as uint8, got {scale.dtype}")
    if dtype not in FLOAT_INPUTS:
        raise MxCodecError(f"dequantize can produce bfloat16, float16 or float32, not {dtype}")
    if q.ndim < 1:
        raise MxCodecError("dequantize needs q with at least one dimension")
    block_size = _check_block_size(block_size)
    n_blocks = -(-q.shape[-1] // block_size)
    expected = (*q.shape[:-1], n_blocks)
    if tuple(scale.shape) != expected:
        raise MxCodecError(f"scale shape {tuple(scale.shape)} does not match q shape {tuple(q.shape)} "
                           f"with block size {block_size} (expected {expected})")
    if q.device != scale.device:
        raise MxCodecError(f"q is on {q.device} but scale is on {scale.device}")
    chosen = _resolve(_check_backend(backend), q.device)
    if q.numel() == 0:
        return torch.empty(q.shape, dtype=dtype, device=q.device)
    if chosen == "reference":
        from mxmix.mx import reference

        return reference.dequantize(q, scale, dtype, block_size).to(q.device)
    if chosen == "triton":
        from mxmix.mx import triton_codec

        return triton_codec.dequantize(q, scale, dtype, block_size)
    from mxmix.mx import fast

    return fast.dequantize(q, scale, dtype, block_size)
