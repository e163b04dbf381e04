"""Vectorised torch codec (CPU, or any device torch runs on): equal to the reference bit for bit.

Blocks are contiguous runs of ``block_size`` elements once the tensor is viewed as [rows, K] with K a
multiple of the block size, so the whole tensor is one stream of blocks. It is processed in chunks of
about 256K elements with reused scratch buffers, so every intermediate stays in cache and no pass goes
to memory except reading the input and writing the output:

  |x| bits (and 0x7FFF / 0x7FFFFFFF) → block max of the integer bits (same order as the magnitudes)
  → scale byte and inverse power of two (table lookup for bf16, integer ops for fp32)
  → x * 2^-s (exact: power-of-two scaling; only results below 2^-126 round, and those are 0 in e4m3)
  → clamp to ±448 (FLOOR only; RCEIL never exceeds 448) → torch's float8_e4m3fn cast (RNE).

bfloat16 input is scaled in bfloat16 (exact), float16 input is widened to float32 first (its range
cannot hold the scales), float32 stays float32. Blocks holding NaN/Inf are rewritten to 0x7F at the end.
"""

from __future__ import annotations

import torch

from mxmix.mx.e8m0 import bf16_tables, inverse_scale_from_bytes, scale_bytes_from_abs_bits, scale_from_bytes
from mxmix.mx.formats import E4M3_MAX, E4M3_NAN_BYTE, E8M0_NAN

CHUNK_ELEMENTS = 1 << 18
"""Elements per chunk on CPU: 256K bf16 (512 KB) plus scratch fits the per-core L2 + shared L3."""


def _as_blocks(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, int]:
    """x viewed as a contiguous [rows, K_padded] tensor (zero-padded copy only when K % block_size)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    padded = -(-k // block_size) * block_size
    if padded != k:
        x2 = torch.nn.functional.pad(x2, (0, padded - k))  # zeros never change a block's amax
    return x2.contiguous(), padded


def _chunk_elements(device: torch.device, total: int, block_size: int) -> int:
    """Elements per chunk: a whole number of blocks, at most ``total`` (a multiple of ``block_size``)."""
    if device.type != "cpu":
        return total  # one pass on accelerators: launches, not caches, are the cost there
    return min(total, max(block_size, CHUNK_ELEMENTS // block_size * block_size))


def quantize(x: torch.Tensor, block_size: int = 32, scale_mode: str = "rceil") -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8-quantize ``x`` (validated by the caller) with torch ops; blocks along the last dim."""
    k = x.shape[-1]
    n_blocks_row = -(-k // block_size)
    x2, padded = _as_blocks(x, block_size)
    flat = x2.view(-1)
    total = flat.numel()
    q = torch.empty(total, dtype=torch.float8_e4m3fn, device=x.device)
    sbytes = torch.empty(total // block_size, dtype=torch.uint8, device=x.device)

    chunk = _chunk_elements(x.device, total, block_size)
    is_bf16 = x.dtype == torch.bfloat16
    work_dtype = torch.bfloat16 if is_bf16 else torch.float32
    bits_dtype = torch.int16 if is_bf16 else torch.int32
    abs_mask = 0x7FFF if is_bf16 else 0x7FFFFFFF
    abs_bits = torch.empty(chunk, dtype=bits_dtype, device=x.device)
    block_max = torch.empty(chunk // block_size, dtype=bits_dtype, device=x.device)
    scaled = torch.empty(chunk, dtype=work_dtype, device=x.device)
    widened = torch.empty(chunk, dtype=torch.float32, device=x.device) if x.dtype == torch.float16 else None
    if is_bf16:
        byte_table, inv_table = (t.to(x.device) for t in bf16_tables(scale_mode))
        index = torch.empty(chunk // block_size, dtype=torch.int32, device=x.device)

    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        nb = n // block_size
        src = flat[start:start + n]
        if widened is not None:
            src = widened[:n].copy_(src)
        torch.bitwise_and(src.view(bits_dtype), abs_mask, out=abs_bits[:n])
        torch.amax(abs_bits[:n].view(nb, block_size), dim=1, out=block_max[:nb])
        b0 = start // block_size
        if is_bf16:
            idx = index[:nb].copy_(block_max[:nb])
            torch.index_select(byte_table, 0, idx, out=sbytes[b0:b0 + nb])
            inv = torch.index_select(inv_table, 0, idx)
        else:
            chunk_bytes = scale_bytes_from_abs_bits(block_max[:nb], scale_mode)
            sbytes[b0:b0 + nb].copy_(chunk_bytes)
            inv = inverse_scale_from_bytes(chunk_bytes)
        out = scaled[:n].view(nb, block_size)
        torch.mul(src.view(nb, block_size), inv.unsqueeze(1), out=out)
        if scale_mode == "floor":
            out.clamp_(-E4M3_MAX, E4M3_MAX)  # FLOOR puts amax in [256, 512)·scale: saturate
        q[start:start + n].copy_(scaled[:n])

    bad = sbytes == E8M0_NAN
    if bool(bad.any()):
        q.view(torch.uint8).view(-1, block_size)[bad] = E4M3_NAN_BYTE
    q = q.view(-1, padded)
    if padded != k:
        q = q[:, :k].contiguous()
    return q.reshape(x.shape), sbytes.view(*x.shape[:-1], n_blocks_row)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
               block_size: int = 32) -> torch.Tensor:
    """e4m3(q) * 2^(b - 127), exact in float32 (and in bfloat16 for bf16 output), rounded once to
    ``dtype``; byte 255 → NaN."""
    k = q.shape[-1]
    n_blocks = scale.shape[-1]
    padded = n_blocks * block_size
    q2 = q.reshape(-1, k)
    if padded != k:
        q2 = torch.nn.functional.pad(q2.view(torch.uint8), (0, padded - k)).view(torch.float8_e4m3fn)
    qb = q2.contiguous().view(-1, block_size)
    factor = scale_from_bytes(scale.reshape(-1))
    # bf16: e4m3 values and the powers of two are exact in bf16, so the bf16 product is the exact
    # product rounded once; fp16 cannot hold the scales, so it goes through float32.
    work = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    out = torch.empty(qb.shape, dtype=work, device=q.device)
    factor = factor.to(work).unsqueeze(1)
    chunk_blocks = _chunk_elements(q.device, qb.numel(), block_size) // block_size
    for b0 in range(0, qb.shape[0], chunk_blocks):
        b1 = b0 + chunk_blocks
        o = out[b0:b1]
        o.copy_(qb[b0:b1])
        o.mul_(factor[b0:b1])
    out = out.view(-1, padded)[:, :k].to(dtype)
    return out.reshape(q.shape)
