"""The pure reference codec: one block at a time, exact arithmetic in Python floats and ints.

Deliberately slow and independent of torch's float8 conversion, so the fast paths can be checked
against it bit for bit. Every element of an fp32 / bf16 / fp16 tensor is exactly a Python float
(a double), and so is its product with a power of two in the range used here, so the only rounding
step is the explicit round-half-to-even below.
"""

from __future__ import annotations

import math

import torch

from mxmix.mx.formats import E4M3_MAX, E4M3_MAX_POW2, E4M3_NAN_BYTE, E8M0_BIAS, E8M0_MAX_FINITE, E8M0_NAN

_E4M3_MIN_NORMAL = 2.0**-6
_E4M3_SUBNORMAL_STEP = 2.0**-9


def scale_exponent(amax: float, scale_mode: str) -> int:
    """The unbiased, unclamped scale exponent s (scale = 2^s) for a finite amax > 0."""
    _mantissa, exponent = math.frexp(amax)  # amax = mantissa * 2^exponent, mantissa in [0.5, 1)
    e = exponent - 1  # amax = m * 2^e with m in [1, 2)
    if scale_mode == "floor":
        return e - E4M3_MAX_POW2
    if scale_mode == "rceil":
        # the smallest s with amax / 2^s <= 448, found by exact comparison (no log2 rounding)
        s = e - E4M3_MAX_POW2
        while amax > E4M3_MAX * 2.0**s:
            s += 1
        while amax <= E4M3_MAX * 2.0 ** (s - 1):
            s -= 1
        return s
    raise ValueError(f"unknown scale_mode {scale_mode!r}")


def scale_byte(values: list[float], scale_mode: str) -> int:
    """The E8M0 byte of one block: 255 if any value is NaN/Inf, 0 for an all-zero block."""
    if any(not math.isfinite(v) for v in values):
        return E8M0_NAN
    amax = max((abs(v) for v in values), default=0.0)
    if amax == 0.0:
        return 0
    return min(max(scale_exponent(amax, scale_mode) + E8M0_BIAS, 0), E8M0_MAX_FINITE)


def _round_half_even(n: float) -> int:
    """Round a double to the nearest integer, ties to even (Python's round() does exactly this)."""
    return round(n)


def encode_e4m3(v: float) -> int:
    """Round a finite value to float8_e4m3fn (round half to even, saturate to ±448); return the byte."""
    sign = 0x80 if math.copysign(1.0, v) < 0 else 0
    a = abs(v)
    if a >= E4M3_MAX:
        return sign | 0x7E
    if a < _E4M3_MIN_NORMAL:
        # subnormal grid k * 2^-9, k = 0..8 (k = 8 is the smallest normal 2^-6, byte 0x08)
        return sign | _round_half_even(a / _E4M3_SUBNORMAL_STEP)
    _, exponent = math.frexp(a)
    e = exponent - 1  # a in [2^e, 2^(e+1)), -6 <= e <= 8
    quantum = 2.0 ** (e - 3)  # three mantissa bits
    n = _round_half_even(a / quantum)  # 8..16: 16 means the next binade
    if n == 16:
        e, n = e + 1, 8
    if e > E4M3_MAX_POW2 or (e == E4M3_MAX_POW2 and n > 14):
        return sign | 0x7E  # rounding went past 448: saturate
    return sign | ((e + 7) << 3) | (n - 8)


def decode_e4m3(byte: int) -> float:
    """The value of a float8_e4m3fn byte (0x7F / 0xFF are NaN)."""
    sign = -1.0 if byte & 0x80 else 1.0
    exp_field = (byte >> 3) & 0xF
    mant = byte & 0x7
    if exp_field == 0xF and mant == 0x7:
        return math.nan
    if exp_field == 0:
        return sign * mant * _E4M3_SUBNORMAL_STEP
    return sign * (1.0 + mant / 8.0) * 2.0 ** (exp_field - 7)


def quantize_block(values: list[float], scale_mode: str) -> tuple[list[int], int]:
    """One block → (element bytes, scale byte)."""
    byte = scale_byte(values, scale_mode)
    if byte == E8M0_NAN:
        return [E4M3_NAN_BYTE] * len(values), byte
    scale = 2.0 ** (byte - E8M0_BIAS)
    return [encode_e4m3(v / scale) for v in values], byte


def quantize(x: torch.Tensor, block_size: int = 32, scale_mode: str = "rceil") -> tuple[torch.Tensor, torch.Tensor]:
    """Reference MXFP8 quantization of a float tensor (any shape with ndim >= 1), blocks along the last dim."""
    if scale_mode not in ("rceil", "floor"):
        raise ValueError(f"unknown scale_mode {scale_mode!r}")
    k = x.shape[-1]
    n_blocks = -(-k // block_size)
    rows = x.detach().cpu().reshape(-1, k).to(torch.float64).tolist()  # float64 holds every input exactly
    q_rows: list[list[int]] = []
    s_rows: list[list[int]] = []
    for row in rows:
        q_row: list[int] = []
        s_row: list[int] = []
        for start in range(0, k, block_size):
            q_block, s_byte = quantize_block(row[start:start + block_size], scale_mode)
            q_row.extend(q_block)
            s_row.append(s_byte)
        q_rows.append(q_row)
        s_rows.append(s_row)
    q = torch.tensor(q_rows, dtype=torch.uint8).reshape(x.shape).view(torch.float8_e4m3fn)
    scale = torch.tensor(s_rows, dtype=torch.uint8).reshape(*x.shape[:-1], n_blocks)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
               block_size: int = 32) -> torch.Tensor:
    """Reference decode: e4m3(q) * 2^(b - 127), byte 255 → NaN, rounded once to ``dtype``."""
    k = q.shape[-1]
    q_rows = q.detach().cpu().view(torch.uint8).reshape(-1, k).tolist()
    s_rows = scale.detach().cpu().reshape(len(q_rows), -1).tolist()
    out: list[list[float]] = []
    for q_row, s_row in zip(q_rows, s_rows):
        row: list[float] = []
        for i, byte in enumerate(q_row):
            b = s_row[i // block_size]
            row.append(math.nan if b == E8M0_NAN else decode_e4m3(byte) * 2.0 ** (b - E8M0_BIAS))
        out.append(row)
    # each value is exact in float64 (4 significant bits); one rounding to the target dtype
    return torch.tensor(out, dtype=torch.float64).reshape(q.shape).to(dtype)
