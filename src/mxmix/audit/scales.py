"""`--check-scales`: read only the E8M0 scale tensors, one at a time, and look for bytes no correct
writer produces.

Three tests per MXFP8 module:

* **NaN bytes** (0xFF): the block decodes to NaN (vLLM/SGLang decode it as +inf).
* **Range**: a byte b decodes to 2^(b-127); the block's elements q·2^(b-127) must be finite and exact in
  the dtype the model runs in (BF16: b in 10..246, i.e. SGLang's 2^-117..2^119 guard; F16: far narrower).
  Byte 0 is what an all-zero block gets, so it is counted, not flagged.
* **Swizzle**: files must hold row-major scales (mxfp8-format.md §5); Blackwell kernels swizzle them into
  128x4 tiles at load time, and a file that already holds the swizzled bytes keeps the ``[N, K/32]``
  shape but decodes to noise. Real weights have per-output-row and per-input-column magnitude
  structure, so row-major scale bytes are well described by ``row effect + column effect``; a
  swizzled tensor interleaves rows 32 apart and repeats 4-column groups, which destroys that fit.
  The statistic is the residual variance of the two-way additive fit of the bytes as stored, divided
  by the same for the bytes read back through the inverse swizzle: well below 1 for row-major data,
  well above 1 for swizzled data, and about 1 for structureless (i.i.d.) scales, which are therefore
  never flagged. One module decides at ratio >= 1.5; the whole checkpoint, pooling every testable
  module, at >= 1.15 (real SmolLM2 weights: row-major pooled 0.75, swizzled 1.33).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mxmix.audit.findings import Finding, add_finding

NAN_BYTE = 255
BIAS = 127
TILE_ROWS, TILE_COLS = 128, 4
# One module looks swizzled when the additive fit of its stored bytes leaves this many times the residual
# of the unswizzled reading; pooled over a checkpoint's testable modules a smaller margin suffices.
SWIZZLE_RATIO = 1.5
POOLED_SWIZZLE_RATIO = 1.15
POOLED_MIN_MODULES = 4
# ...and only when there is structure to tell the readings apart (residual variance in byte^2).
MIN_RESIDUAL_GAP = 0.02

# Inclusive scale-byte ranges whose decoded elements stay finite and exact in the run dtype:
# q in [2^-9, 448] times 2^(b-127) inside the dtype's normal range (BF16 guard from SGLang: 2^-117..2^119).
PLAUSIBLE_BYTES: dict[str, tuple[int, int]] = {
    "bfloat16": (10, 246),
    "float32": (10, 246),
    "float16": (127 - 5, 127 + 7),   # 2^-9·2^-5 = 2^-14 (F16 smallest normal); 448·2^7 = 57344 < 65504
}


def blackwell_swizzle(scales: np.ndarray) -> np.ndarray:
    """Row-major ``[R, C]`` scales → the flat 128x4-tiled layout cuBLAS/Blackwell kernels read
    (zero-padded to multiples of 128 rows and 4 columns).

    Inside a tile, row r and column c land at ``(r % 32) * 16 + (r // 32) * 4 + c``; tiles follow
    each other row-block-major.
    """
    rows, cols = scales.shape
    rb, cb = -(-rows // TILE_ROWS), -(-cols // TILE_COLS)
    padded = np.zeros((rb * TILE_ROWS, cb * TILE_COLS), dtype=scales.dtype)
    padded[:rows, :cols] = scales
    tiles = padded.reshape(rb, TILE_ROWS, cb, TILE_COLS).transpose(0, 2, 1, 3)      # rb, cb, 128, 4
    tiles = tiles.reshape(rb, cb, 4, 32, TILE_COLS).transpose(0, 1, 3, 2, 4)       # rb, cb, 32, 4, 4
    return np.ascontiguousarray(tiles).reshape(-1)


def blackwell_unswizzle(flat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Inverse of :func:`blackwell_swizzle`: the flat tiled bytes → row-major ``[rows, cols]``."""
    rb, cb = -(-rows // TILE_ROWS), -(-cols // TILE_COLS)
    tiles = flat.reshape(rb, cb, 32, 4, TILE_COLS).transpose(0, 1, 3, 2, 4)          # rb, cb, 4, 32, 4
    padded = tiles.reshape(rb, cb, TILE_ROWS, TILE_COLS).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(padded).reshape(rb * TILE_ROWS, cb * TILE_COLS)[:rows, :cols]


def additive_residual(s: np.ndarray) -> float:
    """Residual variance (byte^2) of ``s[r, c] ~ row_r + col_c``: how little of the bytes' variation is
    explained by per-row and per-column magnitude, the structure real weights have."""
    x = s.astype(np.float64)
    r = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    return float(np.mean(r * r))


@dataclass(frozen=True)
class SwizzleVerdict:
    tested: bool
    swizzled: bool
    stored_residual: float
    unswizzled_residual: float

    @property
    def ratio(self) -> float:
        return self.stored_residual / self.unswizzled_residual if self.unswizzled_residual else 0.0


def swizzle_test(scales: np.ndarray) -> SwizzleVerdict:
    """Does a stored ``[N, K/32]`` scale matrix look 128x4-swizzled? Testable only when the shape is
    tile-aligned (otherwise swizzled bytes, padded, would not fit in the tensor)."""
    if scales.ndim != 2 or scales.shape[0] % TILE_ROWS or scales.shape[1] % TILE_COLS or scales.size < 2 * 512:
        return SwizzleVerdict(False, False, 0.0, 0.0)
    stored = additive_residual(scales)
    unswizzled = additive_residual(blackwell_unswizzle(scales.reshape(-1), *scales.shape))
    swizzled = stored - unswizzled >= MIN_RESIDUAL_GAP and stored >= SWIZZLE_RATIO * unswizzled
    return SwizzleVerdict(True, swizzled, stored, unswizzled)


@dataclass
class ScaleStats:
    """Per-module result of reading one scale tensor."""

    module: str
    nan: int
    zero: int
    below: int
    above: int
    total: int
    swizzle: SwizzleVerdict

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "nan": self.nan, "zero": self.zero, "below": self.below,
                "above": self.above, "total": self.total, "swizzle_tested": self.swizzle.tested,
                "swizzled": self.swizzle.swizzled, "residual_stored": round(self.swizzle.stored_residual, 4),
                "residual_unswizzled": round(self.swizzle.unswizzled_residual, 4)}


def scale_stats(module: str, scales: np.ndarray, run_dtype: str = "bfloat16") -> ScaleStats:
    """All three tests on one module's scale bytes (``[..., N, K/32]``, uint8)."""
    lo, hi = PLAUSIBLE_BYTES.get(run_dtype, PLAUSIBLE_BYTES["bfloat16"])
    flat = scales.reshape(-1)
    counts = np.bincount(flat, minlength=256)
    nan = int(counts[NAN_BYTE])
    zero = int(counts[0])
    below = int(counts[1:lo].sum())
    above = int(counts[hi + 1:NAN_BYTE].sum())
    if scales.ndim == 3:    # stacked experts [E, N, K/32]: test each expert, report the majority
        verdicts = [swizzle_test(scales[e]) for e in range(scales.shape[0])]
        tested = [v for v in verdicts if v.tested]
        swz = sum(v.swizzled for v in tested) * 2 > len(tested) if tested else False
        verdict = SwizzleVerdict(bool(tested), swz, float(np.mean([v.stored_residual for v in tested] or [0])),
                                 float(np.mean([v.unswizzled_residual for v in tested] or [0])))
    else:
        verdict = swizzle_test(scales.reshape(-1, scales.shape[-1]) if scales.ndim else scales.reshape(1, 1))
    return ScaleStats(module, nan, zero, below, above, int(flat.size), verdict)


def check_scales(items: Iterable[tuple[str, Callable[[], np.ndarray]]], *, run_dtype: str = "bfloat16",
                 progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> tuple[list[Finding], list[ScaleStats]]:
    """Run the tests on (module, read_scales) pairs, reading one tensor at a time; grouped findings."""
    stats: list[ScaleStats] = []
    seq: Iterable[tuple[str, Callable[[], np.ndarray]]] = progress(items) if progress else items
    for module, read in seq:
        stats.append(scale_stats(module, read(), run_dtype))
    return scale_findings(stats, run_dtype), stats


def scale_findings(stats: Sequence[ScaleStats], run_dtype: str = "bfloat16") -> list[Finding]:
    lo, hi = PLAUSIBLE_BYTES.get(run_dtype, PLAUSIBLE_BYTES["bfloat16"])
    out: list[Finding] = []
    nan = [s for s in stats if s.nan]
    add_finding(
        out, "error", "scales", "scale-nan",
        f"{sum(s.nan for s in nan)} scale byte(s) are 0xFF (E8M0 NaN)",
        "Those blocks decode to NaN (or +inf in vLLM and SGLang), which propagates through every "
        "activation that touches them.",
        [s.module for s in nan], bytes={s.module: s.nan for s in nan})
    above = [s for s in stats if s.above]
    add_finding(
        out, "error", "scales", "scale-out-of-range",
        f"{sum(s.above for s in above)} scale byte(s) above {hi}: elements would overflow {run_dtype}",
        f"Blocks scaled by 2^(b-127) with b > {hi} decode to inf in {run_dtype}; no correct quantizer "
        f"of {run_dtype} weights writes them, so the scales are probably not E8M0 bytes.",
        [s.module for s in above], bytes={s.module: s.above for s in above})
    below = [s for s in stats if s.below]
    add_finding(
        out, "warning", "scales", "scale-implausibly-small",
        f"{sum(s.below for s in below)} scale byte(s) in 1..{lo - 1}: blocks below {run_dtype}'s exact range",
        f"Those blocks lose precision when decoded to {run_dtype} (and SGLang's exactness guard "
        "rejects them); real weights are almost never that small, so check the scale encoding.",
        [s.module for s in below], bytes={s.module: s.below for s in below})
    swz = [s for s in stats if s.swizzle.swizzled]
    tested = [s for s in stats if s.swizzle.tested]
    pooled_stored = sum(s.swizzle.stored_residual for s in tested)
    pooled_unswizzled = sum(s.swizzle.unswizzled_residual for s in tested)
    if (not swz and len(tested) >= POOLED_MIN_MODULES
            and pooled_stored - pooled_unswizzled >= MIN_RESIDUAL_GAP * len(tested)
            and pooled_stored >= POOLED_SWIZZLE_RATIO * pooled_unswizzled):
        out.append(Finding(
            "error", "scales", "scales-swizzled",
            f"pooled over {len(tested)} modules, the scale bytes fit the 128x4-swizzled reading better "
            f"than row-major (residual ratio {pooled_stored / pooled_unswizzled:.2f})",
            "Every reader expects row-major [N, K/32] scales and swizzles at load time, so these weights "
            "would decode to noise.",
            tuple(s.module for s in tested),
            details={"pooled_ratio": round(pooled_stored / pooled_unswizzled, 4)}))
    add_finding(
        out, "error", "scales", "scales-swizzled",
        "scale bytes look 128x4-swizzled (Blackwell layout) instead of row-major",
        "Every reader expects row-major [N, K/32] scales and swizzles at load time, so these weights "
        "would decode to noise.",
        [s.module for s in swz],
        residual={s.module: [round(s.swizzle.stored_residual, 3), round(s.swizzle.unswizzled_residual, 3)]
                  for s in swz})
    zero_heavy = [s for s in stats if s.total and s.zero * 2 > s.total]
    add_finding(
        out, "warning", "scales", "scales-mostly-zero",
        "more than half of the scale bytes are 0 (all-zero blocks)",
        "The weights are mostly zeros, or the scale tensor was never filled in; the module "
        "contributes (almost) nothing.",
        [s.module for s in zero_heavy])
    return out
