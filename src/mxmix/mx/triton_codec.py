"""Triton CUDA kernels for MXFP8 quantize / dequantize, equal to the reference bit for bit.

One program handles ``GROUP`` consecutive blocks as a [GROUP, BLOCK] tile: load (bf16/fp16/fp32 → fp32,
exact), block max of the sign-cleared integer bits (same order as magnitudes, NaN/Inf on top), scale byte
from the exponent/mantissa fields (the integer rule of ``mxmix.mx.e8m0``), multiply by the exact inverse
power of two (``mul.rn.f32``: Triton does not flush fp32 subnormals for plain multiplies), saturate to
±448, round to e4m3 with the hardware RNE conversion, write bytes. Non-finite blocks get 0x7F / 255.

The kernel is memory-bound: per element it reads 2 bytes (bf16) and writes 1 + 1/32, so the tile is
sized to keep enough bytes in flight and the integer work per element is a handful of instructions.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from mxmix.mx.formats import E4M3_MAX

DEFAULT_TILE_ELEMENTS = 4096
DEFAULT_NUM_WARPS = 4


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, n_blocks, blocks_per_row, k,
                     BLOCK: tl.constexpr, GROUP: tl.constexpr, RCEIL: tl.constexpr,
                     EVEN_K: tl.constexpr, WIDE_INDEX: tl.constexpr):
    pid = tl.program_id(0)
    blk = pid * GROUP + tl.arange(0, GROUP)
    if WIDE_INDEX:
        blk = blk.to(tl.int64)
    j = tl.arange(0, BLOCK)
    blk_ok = blk < n_blocks
    if EVEN_K:
        offs = blk[:, None] * BLOCK + j[None, :]
        mask = blk_ok[:, None]
    else:
        row = blk // blocks_per_row
        col = (blk % blocks_per_row)[:, None] * BLOCK + j[None, :]
        offs = row[:, None] * k + col
        mask = blk_ok[:, None] & (col < k)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    abs_bits = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    amax_bits = tl.max(abs_bits, axis=1)
    exp_field = amax_bits >> 23
    biased = exp_field - 8
    if RCEIL:
        biased += ((amax_bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    biased = tl.minimum(tl.maximum(biased, 0), 254)
    nonfinite = exp_field == 255
    scale_byte = tl.where(nonfinite, 255, biased)
    inv = (tl.minimum(tl.maximum(254 - biased, 1), 254) << 23).to(tl.float32, bitcast=True)

    v = x * inv[:, None]
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    q = v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    q = tl.where(nonfinite[:, None], 0x7F, q)
    tl.store(q_ptr + offs, q, mask=mask)
    tl.store(s_ptr + blk, scale_byte.to(tl.uint8), mask=blk_ok)


@triton.jit
def e8m0_to_f32(sb, NAN_BYTE: tl.constexpr):
    """E8M0 bytes -> fp32 2^(b-127): the byte shifted into the exponent field; byte 0 is the subnormal
    2^-127 (mantissa bit 22). With ``NAN_BYTE``, byte 255 is NaN; the runtime's matmul kernels pass
    False (their weights were checked for 0xFF scales at load) and save the select in their inner loop.
    Shared by the codec and those kernels."""
    b = sb.to(tl.int32)
    bits = tl.where(b == 0, 0x00400000, b << 23)
    if NAN_BYTE:
        bits = tl.where(b == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dequantize_kernel(q_ptr, s_ptr, out_ptr, n_blocks, blocks_per_row, k,
                       BLOCK: tl.constexpr, GROUP: tl.constexpr, EVEN_K: tl.constexpr,
                       WIDE_INDEX: tl.constexpr, TILE_N: tl.constexpr = 0, TILE_K: tl.constexpr = 0):
    pid = tl.program_id(0)
    blk = pid * GROUP + tl.arange(0, GROUP)
    if WIDE_INDEX:
        blk = blk.to(tl.int64)
    j = tl.arange(0, BLOCK)
    blk_ok = blk < n_blocks
    if EVEN_K:
        offs = blk[:, None] * BLOCK + j[None, :]
        mask = blk_ok[:, None]
    else:
        row = blk // blocks_per_row
        col = (blk % blocks_per_row)[:, None] * BLOCK + j[None, :]
        offs = row[:, None] * k + col
        mask = blk_ok[:, None] & (col < k)
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    factor = e8m0_to_f32(tl.load(s_ptr + blk, mask=blk_ok, other=127), True)
    y = q * factor[:, None]
    if TILE_N:  # input in [N/TILE_N, K/TILE_K, TILE_N, TILE_K] tiles, output row-major (blocks never straddle)
        first = blk * BLOCK
        tile_id = first // (TILE_N * TILE_K)
        within = first % (TILE_N * TILE_K)
        tiles_k = k // TILE_K
        row = (tile_id // tiles_k) * TILE_N + within // TILE_K
        offs = (row * k + (tile_id % tiles_k) * TILE_K + within % TILE_K)[:, None] + j[None, :]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU (a no-op for CPU tensors under TRITON_INTERPRET=1)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _launch_shape(block_size: int, tile_elements: int) -> tuple[int, int]:
    group = max(1, tile_elements // block_size)
    return group, group * block_size


def quantize(x: torch.Tensor, block_size: int = 32, scale_mode: str = "rceil", *,
             tile_elements: int = DEFAULT_TILE_ELEMENTS,
             num_warps: int = DEFAULT_NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8-quantize a CUDA tensor (validated by the caller); blocks along the last dimension."""
    assert E4M3_MAX == 448.0
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    rows = x2.shape[0]
    blocks_per_row = -(-k // block_size)
    n_blocks = rows * blocks_per_row
    q = torch.empty((rows, k), dtype=torch.uint8, device=x.device)
    s = torch.empty((rows, blocks_per_row), dtype=torch.uint8, device=x.device)
    group, _ = _launch_shape(block_size, tile_elements)
    wide = max(x2.numel(), n_blocks * block_size) + group * block_size >= 2**31
    with _device_guard(x):
        _quantize_kernel[(triton.cdiv(n_blocks, group),)](
            x2, q, s, n_blocks, blocks_per_row, k,
            BLOCK=block_size, GROUP=group, RCEIL=scale_mode == "rceil", EVEN_K=k % block_size == 0,
            WIDE_INDEX=wide, num_warps=num_warps)
    return q.view(torch.float8_e4m3fn).reshape(x.shape), s.reshape(*x.shape[:-1], blocks_per_row)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
               block_size: int = 32, *, tile_elements: int = DEFAULT_TILE_ELEMENTS,
               num_warps: int = DEFAULT_NUM_WARPS, out: torch.Tensor | None = None,
               tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode MXFP8 on CUDA: e4m3(q) * 2^(b - 127) in fp32 (exact), one rounding to ``dtype``.

    ``out`` (contiguous, q's shape, dtype ``dtype``) receives the result instead of a new tensor: the
    runtime's prefill path decodes into a reused workspace. ``tiles`` (tile_n, tile_k): q [N, K] and its
    scales hold [N/tile_n, K/tile_k, tile_n, tile_k] tiles (`mxmix.runtime.tiles`); the output is row-major.
    """
    k = q.shape[-1]
    if tiles is not None and (q.ndim != 2 or q.shape[0] % tiles[0] or k % tiles[1] or tiles[1] % block_size):
        raise ValueError(f"dequantize: shape {tuple(q.shape)} is not a whole number of {tiles} tiles")
    q2 = q.reshape(-1, k).contiguous().view(torch.uint8)
    s2 = scale.reshape(q2.shape[0], -1).contiguous()
    rows = q2.shape[0]
    blocks_per_row = s2.shape[1]
    n_blocks = rows * blocks_per_row
    if out is None:
        out = torch.empty((rows, k), dtype=dtype, device=q.device)
    elif out.dtype != dtype or out.numel() != q2.numel() or not out.is_contiguous() or out.device != q.device:
        raise ValueError(f"out must be a contiguous {dtype} tensor of {q2.numel()} elements on {q.device}")
    group, _ = _launch_shape(block_size, tile_elements)
    wide = n_blocks * block_size + group * block_size >= 2**31
    with _device_guard(q):
        _dequantize_kernel[(triton.cdiv(n_blocks, group),)](
            q2, s2, out, n_blocks, blocks_per_row, k,
            BLOCK=block_size, GROUP=group, EVEN_K=k % block_size == 0, WIDE_INDEX=wide,
            TILE_N=tiles[0] if tiles else 0, TILE_K=tiles[1] if tiles else 0, num_warps=num_warps)
    return out.view(q.shape)
