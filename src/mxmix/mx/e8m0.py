"""E8M0 scale bytes from block maxima, by integer arithmetic on the float bit pattern.

log2 in floating point can round across an integer boundary; reading the exponent and mantissa fields
cannot. With amax = m * 2^e (m in [1, 2)):
  floor: s = e - 8
  rceil: s = e - 8 if m <= 1.75 else e - 7   (448 = 1.75 * 2^8, so amax <= 448 * 2^s exactly then)
Biased byte = s + 127 clamped to 0..254; amax NaN/Inf → 255. Subnormal and zero amax give byte 0.
The same formula serves float32 bits (23 mantissa bits) and bfloat16 bits (7).
"""

from __future__ import annotations

import functools

import torch

from mxmix.mx.formats import E4M3_MAX_POW2, E8M0_BIAS, E8M0_MAX_FINITE, E8M0_NAN

FP32_MANTISSA_BITS = 23
BF16_MANTISSA_BITS = 7


def scale_bytes_from_abs_bits(abs_bits: torch.Tensor, scale_mode: str,
                              mantissa_bits: int = FP32_MANTISSA_BITS) -> torch.Tensor:
    """E8M0 bytes (as abs_bits' int dtype, values 0..255) from the sign-cleared bits of block maxima.

    ``abs_bits`` are float32 (``mantissa_bits=23``) or bfloat16 (``mantissa_bits=7``) bit patterns of
    |amax|, with 8 exponent bits above the mantissa (NaN/Inf have exponent field 255).
    """
    exp_field = abs_bits >> mantissa_bits
    biased = exp_field - E4M3_MAX_POW2  # floor: (exp_field - 127) - 8 + 127
    if scale_mode == "rceil":
        above_1_75 = (abs_bits & ((1 << mantissa_bits) - 1)) > (3 << (mantissa_bits - 2))  # m > 1.75
        biased = biased + above_1_75.to(abs_bits.dtype)
    elif scale_mode != "floor":
        raise ValueError(f"unknown scale_mode {scale_mode!r}")
    biased = biased.clamp_(0, E8M0_MAX_FINITE)
    return biased.masked_fill_(exp_field == 0xFF, E8M0_NAN)


def scale_bytes_from_amax(amax: torch.Tensor, scale_mode: str) -> torch.Tensor:
    """E8M0 bytes (int32, 0..255) for float32 block maxima ``amax`` (>= 0, NaN or Inf)."""
    return scale_bytes_from_abs_bits(amax.view(torch.int32) & 0x7FFFFFFF, scale_mode)


def inverse_scale_from_bytes(scale_bytes: torch.Tensor) -> torch.Tensor:
    """float32 2^(127 - b): multiplying by it divides by the block scale exactly (b in 0..253).

    Bytes 254 and 255 give 2^-127 rounded up to the smallest normal 2^-126; the codec never produces
    254, and 255 (NaN) blocks are overwritten afterwards.
    """
    exp_field = (2 * E8M0_BIAS - scale_bytes.to(torch.int32)).clamp_(1, 254)
    return (exp_field << 23).view(torch.float32)


def scale_from_bytes(scale_bytes: torch.Tensor) -> torch.Tensor:
    """float32 2^(b - 127) for every byte; byte 255 → NaN, byte 0 → 2^-127 (a float32 subnormal)."""
    b = scale_bytes.to(torch.int32)
    bits = torch.where(b == 0, 0x00400000, b << 23)  # 2^-127 has no exponent field: mantissa bit 22
    bits = torch.where(b == E8M0_NAN, 0x7FC00000, bits)
    return bits.view(torch.float32)


@functools.cache
def bf16_tables(scale_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Lookup tables indexed by the 15-bit |amax| pattern of a bfloat16 block maximum:
    (scale byte uint8 [32768], inverse scale bfloat16 [32768]). The inverse scale is a power of two
    from 2^-126 to 2^127, exactly representable in bfloat16."""
    bits = torch.arange(1 << 15, dtype=torch.int32)
    sbytes = scale_bytes_from_abs_bits(bits, scale_mode, BF16_MANTISSA_BITS)
    inv = inverse_scale_from_bytes(sbytes).to(torch.bfloat16)
    return sbytes.to(torch.uint8), inv
