"""MXFP8 kernels for large M (prefill), where the work is compute-bound and tensor cores set the time.

Two ways, chosen by M (see ``dispatch.py``):

* ``fused``: a Triton tiled matmul that loads an E4M3 weight tile plus its scales, dequantizes it
  exactly into BF16 in registers and feeds BF16 tensor-core dots (fp32 accumulation). The weight is
  read from memory once per M tile, compressed.
* ``cublas``: dequantize the whole weight exactly into a BF16 workspace (the codec's kernel, one
  streaming pass, ~3 bytes per weight element of traffic) then cuBLAS BF16 GEMM. At M in the thousands the GEMM dominates and
  cuBLAS's tuned kernels win; the workspace is transient (the caching allocator reuses it across
  layers), so the resident weights stay compressed.

Dequantization is exact: e4m3 * 2^k is representable in BF16 for the scales real weights use, and the
product is computed in fp32 and rounded once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mxmix.mx.triton_codec import e8m0_to_f32
from mxmix.runtime import tiles


def dequantize_to(weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, tiled: bool = False,
                  **launch) -> torch.Tensor:
    """Exact MXFP8 -> ``out.dtype`` dequantization on the GPU into a caller-provided row-major [N, K] buffer
    (the codec's kernel, `mxmix.mx.triton_codec.dequantize`; ``launch``: its tile_elements/num_warps;
    ``tiled``: the input is in the tiled layout of `mxmix.runtime.tiles`)."""
    from mxmix.mx.triton_codec import dequantize

    return dequantize(weight, scale, out.dtype, out=out, tiles=(tiles.TILE_N, tiles.TILE_K) if tiled else None,
                      **launch)


def dequantize_cuda(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                    tiled: bool = False) -> torch.Tensor:
    out = torch.empty(weight.shape, device=weight.device, dtype=dtype)
    return dequantize_to(weight, scale, out, tiled)


@triton.jit
def _prefill_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    KB: tl.constexpr = BLOCK_K // 32
    KS = K // 32
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kb = tl.arange(0, KB)
    offs_e = tl.arange(0, 32)
    rows_m = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
    rows_n = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    x_ptrs = x_ptr + rows_m[:, None] * stride_xm + offs_k[None, :]                       # [BM, BK]
    koff3 = offs_kb[:, None, None] * 32 + offs_e[None, :, None]                           # [KB, 32, 1]
    w_ptrs = w_ptr + rows_n[None, None, :] * K + koff3                                    # [KB, 32, BN]
    s_ptrs = s_ptr + rows_n[None, :] * KS + offs_kb[:, None]                              # [KB, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
            sb = tl.load(s_ptrs)
        else:
            a = tl.load(x_ptrs, mask=(k0 + offs_k[None, :]) < K, other=0.0)
            w = tl.load(w_ptrs, mask=(k0 + koff3) < K, other=0.0)
            sb = tl.load(s_ptrs, mask=(k0 + offs_kb[:, None] * 32) < K, other=127)
        wf = w.to(tl.float32) * e8m0_to_f32(sb, False)[:, None, :]
        b = tl.reshape(wf, (BLOCK_K, BLOCK_N)).to(a.dtype)
        acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
        s_ptrs += KB
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += bias[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class PrefillConfig:
    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3

    def label(self) -> str:
        return (f"fused m{self.block_m} n{self.block_n} k{self.block_k} g{self.group_m} "
                f"w{self.num_warps} st{self.num_stages}")


def default_prefill_config(m: int, n: int, k: int) -> PrefillConfig:
    """Picked from benchmarks/bench_kernels.py --sweep-prefill on H100."""
    if m <= 32:
        return PrefillConfig(32, 128 if n > 8192 else 64, 128, 8, 4, 4)
    if m <= 128 and n <= 8192:
        return PrefillConfig(64, 64, 128, 8, 4, 4)
    return PrefillConfig(128, 128, 64, 8, 8, 3)


def mxfp8_prefill_fused(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                        bias: torch.Tensor | None = None, config: PrefillConfig | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ dequant(weight, scale)^T with the dequantization fused into the tensor-core loop."""
    m, k = x.shape
    n = weight.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or default_prefill_config(m, n, k)
    if out is None:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    has_bias = bias is not None
    _prefill_kernel[grid](x, weight, scale, bias if has_bias else out, out, m, n, k, x.stride(0), n,
                          HAS_BIAS=has_bias, EVEN_K=k % cfg.block_k == 0,
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def mxfp8_prefill_cublas(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                         bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
                         tiled: bool = False) -> torch.Tensor:
    """Dequantize into a transient row-major BF16 workspace (from either layout), then cuBLAS."""
    w = dequantize_cuda(weight, scale, x.dtype, tiled)
    if out is None:
        return torch.nn.functional.linear(x, w, bias)
    if bias is None:
        return torch.matmul(x, w.t(), out=out)
    return torch.addmm(bias, x, w.t(), out=out)
