"""Input generators shared by the codec tests (CPU and GPU): adversarial and magnitude-spread tensors."""

from __future__ import annotations

import torch

from mxmix.mx.reference import decode_e4m3


def all_bf16_patterns() -> torch.Tensor:
    """Every one of the 65536 bf16 bit patterns, in order, as a [2048, 32] tensor (one block per row)."""
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(-1, 32)


def shuffled_with_large(x: torch.Tensor, seed: int, per_block: int = 2) -> torch.Tensor:
    """Every value of ``x`` shuffled into blocks that also hold ``per_block`` large finite values.

    The large values set each block's scale, so the small ones land in e4m3 subnormals or underflow.
    """
    g = torch.Generator().manual_seed(seed)
    flat = x.reshape(-1).to(torch.float32)
    flat = flat[torch.randperm(flat.numel(), generator=g)]
    rows = -(-flat.numel() // (32 - per_block))
    padded = torch.zeros(rows * (32 - per_block))
    padded[: flat.numel()] = flat
    big = torch.ldexp(torch.rand(rows, per_block, generator=g) + 1.0,
                      torch.randint(-130, 128, (rows, 1), generator=g).expand(rows, per_block))
    big = big.masked_fill(~torch.isfinite(big), 1.0)
    return torch.cat([padded.view(rows, -1), big], dim=1).to(x.dtype)


def e4m3_grid() -> torch.Tensor:
    """All finite non-negative float8_e4m3fn values, ascending (float64)."""
    vals = sorted({decode_e4m3(b) for b in range(0x7F)})
    return torch.tensor(vals, dtype=torch.float64)


def ties_and_edges(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Blocks whose scaled elements sit exactly on, halfway between, and next to e4m3 grid points.

    Each row: element 0 fixes amax at 448·2^k (so RCEIL and FLOOR both pick scale 2^k), the rest are
    grid midpoints / grid points times 2^k, with random sign, plus their dtype neighbours (nextafter).
    """
    g = torch.Generator().manual_seed(seed)
    grid = e4m3_grid()
    mids = (grid[1:] + grid[:-1]) / 2  # ties in round-half-even
    cands = torch.cat([grid, mids])
    n_rows = 256
    lo, hi = (-14, 8) if dtype == torch.float16 else (-120, 110)
    k = torch.randint(lo, hi, (n_rows, 1), generator=g).to(torch.float64)
    picks = cands[torch.randint(0, cands.numel(), (n_rows, 31), generator=g)]
    sign = torch.where(torch.rand(n_rows, 31, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    body = picks * sign * torch.exp2(k)
    amax = 448.0 * torch.exp2(k)
    x = torch.cat([amax, body], dim=1).to(dtype)  # exact: grid points and midpoints have ≤ 5 bits
    up = torch.nextafter(x, torch.full_like(x, float("inf")))
    down = torch.nextafter(x, torch.full_like(x, float("-inf")))
    # neighbours of the amax element probe "just under / just over 448·2^k"
    return torch.cat([x, up, down], dim=0)


def mixed_magnitudes(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Gaussian data with per-row magnitudes from 2^-140 to 2^120, some zero rows, heavy outliers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    lo, hi = (-24, 15) if dtype == torch.float16 else (-140, 120)
    exps = torch.randint(lo, hi, (*shape[:-1], 1), generator=g).to(torch.float64)
    x = x * torch.exp2(exps)
    outliers = torch.rand(shape, generator=g) < 0.01
    x = torch.where(outliers, x * 64, x)
    x = x.to(dtype)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if x.ndim >= 2 and x.shape[-2] > 2:
        x.select(-2, 1).zero_()
    return x
