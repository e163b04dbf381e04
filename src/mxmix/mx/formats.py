"""Constants of the MXFP8 format: E4M3 elements, E8M0 scale bytes, 32-element blocks.

Kept in one place so the reference, the vectorised CPU path and the Triton kernel cannot drift apart.
"""

from __future__ import annotations

E4M3_MAX = 448.0
"""Largest finite float8_e4m3fn magnitude (S.1111.110); quantized elements saturate here."""

E4M3_MAX_POW2 = 8
"""floor(log2(E4M3_MAX)): the FLOOR scale mode puts a block's amax exponent this far above the scale."""

E4M3_NAN_BYTE = 0x7F
"""The element byte written for every element of a block that holds NaN or ±Inf."""

E8M0_BIAS = 127
"""Scale byte b decodes to 2^(b - 127)."""

E8M0_MAX_FINITE = 254
"""Largest scale byte that encodes a number; the codec clamps scale bytes to 0..254."""

E8M0_NAN = 255
"""Scale byte meaning NaN: written for blocks that contain NaN or ±Inf."""

DEFAULT_BLOCK_SIZE = 32
"""The MX block: 32 consecutive elements along the last (reduction) dimension."""

SCALE_MODES = ("rceil", "floor")
"""rceil: 2^ceil(log2(amax/448)) (cuBLAS, Transformer Engine, ModelOpt); floor: 2^(floor(log2 amax) - 8) (OCP)."""
