"""The tiled weight layout the Hopper decode kernel streams fastest.

Row-major, one decode program reads 64 rows x 256 bytes per K step, each row from a different part of
memory, and 8 scale bytes per row (a quarter of a 32-byte sector, the rest belonging to the program
of the next K range). Tiled, the same step is one contiguous 16 KiB run of weight bytes and one 512-byte
run of scale bytes. On an H200 that made the ``wgmma`` decode kernel 3-7 % faster on the three large
issue shapes (BENCHMARKS.md, round 6).

The layout keeps the tensors' shapes and dtypes: weight [N, K] holds the bytes of
[N / TILE_N, K / TILE_K, TILE_N, TILE_K] row-major, scale [N, K / 32] those of
[N / TILE_N, K / TILE_K, TILE_N, TILE_K / 32]. A tile's scale bytes pair with its weight bytes exactly as
in the row-major layout, so an elementwise decode of the flat bytes is unchanged (`untile_index`).
"""

from __future__ import annotations

import torch

TILE_N = 64    # rows per tile: one wgmma warpgroup's 64 rows
TILE_K = 256   # K per tile: the kernel's longest K step (shorter steps read part of a tile)
BLOCK = 32     # elements per E8M0 scale


def can_tile(n: int, k: int) -> bool:
    """Whether a weight of N rows and K columns has the tiled layout (whole tiles only)."""
    return n > 0 and k > 0 and n % TILE_N == 0 and k % TILE_K == 0


def tile(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major MXFP8 weight [N, K] and scales [N, K/32] -> the same in the tiled layout (new tensors)."""
    _check(weight, scale)
    return to_tiles(weight, TILE_K), to_tiles(scale, TILE_K // BLOCK)


def untile(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `tile`: row-major weight and scales (new tensors)."""
    _check(weight, scale)
    return from_tiles(weight, TILE_K), from_tiles(scale, TILE_K // BLOCK)


def to_tiles(t: torch.Tensor, cols: int) -> torch.Tensor:
    """A row-major [N, C] tensor as [N/TILE_N, C/cols, TILE_N, cols] tiles, viewed as [N, C] (a copy)."""
    n, c = t.shape
    return t.reshape(n // TILE_N, TILE_N, c // cols, cols).transpose(1, 2).contiguous().view(n, c)


def from_tiles(t: torch.Tensor, cols: int) -> torch.Tensor:
    """The inverse of `to_tiles` (a copy)."""
    n, c = t.shape
    return t.reshape(n // TILE_N, c // cols, TILE_N, cols).transpose(1, 2).contiguous().view(n, c)


def untile_index(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Row-major flat index of each tiled flat element index (what a decode kernel writing a row-major
    output from tiled input computes; `triton_codec.dequantize` does it inline)."""
    tile_id, within = flat // (TILE_N * TILE_K), flat % (TILE_N * TILE_K)
    tiles_k = k // TILE_K
    row = (tile_id // tiles_k) * TILE_N + within // TILE_K
    return row * k + (tile_id % tiles_k) * TILE_K + within % TILE_K


def _check(weight: torch.Tensor, scale: torch.Tensor) -> tuple[int, int]:
    if weight.ndim != 2:
        raise ValueError(f"tiled layout: weight must be 2-D, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if not can_tile(n, k):
        raise ValueError(f"tiled layout: weight shape ({n}, {k}) is not a whole number of "
                         f"{TILE_N}x{TILE_K} tiles")
    if tuple(scale.shape) != (n, k // BLOCK):
        raise ValueError(f"tiled layout: scale shape {tuple(scale.shape)} does not match weight ({n}, {k})")
    return n, k
