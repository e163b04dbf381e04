"""Weight-only MXFP8 kernels for small M (decode): y[M, N] = x[M, K] @ dequant(W[N, K], S[N, K/32])^T.

Decode is memory-bound: the weight bytes (1 + 1/32 per element instead of 2 for BF16) set the time,
so the kernels do as little per-element work as possible (shared docs mxfp8-format.md §7):

* ``fma``: CUDA-core GEMV. Each weight element is converted from E4M3 once, multiplied by the
  activation and summed within its 32-element block; the block's scale 2^(b-127) is applied once per
  partial sum (decoded by shifting the byte into the fp32 exponent field). Best at M = 1..4.
* ``mma``: tensor-core variant for M up to ~16-64. One ``tl.dot`` per 32-wide K block gives an fp32
  partial [M, BLOCK_N] that is scaled by the block's scales and accumulated, so there is no per-element
  scale multiply, only the E4M3 -> BF16 conversion (exact).

Both split K across programs when N alone does not fill the GPU; partial sums go to an fp32
workspace reduced (with the bias, in fp32) by a second small kernel, so results are deterministic.
Scaling a partial sum by a power of two is exact, so the result equals the BF16 matmul on the exactly
dequantized weight up to fp32 summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# bits of 2^-127 (E8M0 byte 0) as an fp32 subnormal; the shift trick alone would give 0.0
_E8M0_ZERO_BITS = tl.constexpr(0x00400000)


@triton.jit
def _e8m0_to_f32(sb):
    """E8M0 bytes -> fp32 2^(b-127) by placing the byte in the exponent field (byte 0 -> 2^-127)."""
    bits = sb.to(tl.int32) << 23
    bits = tl.where(sb == 0, _E8M0_ZERO_BITS, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _finish(acc, out_ptr, ws_ptr, cnt_ptr, b_ptr, offs_m, offs_n, M, N, stride_om, pid_n, pid_k, split,
            HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    """Write the result; with SPLIT, park the partial sum and let the last program of the tile reduce.

    The last-arriving program (an acq_rel atomic on a per-tile counter) sums the fp32 partials in a
    fixed order, so the result does not depend on arrival order; it then resets the counter, which
    keeps the launch capturable in a CUDA graph.
    """
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT:
        tile = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k * M * N + tile, acc, mask=mask)
        tl.debug_barrier()
        count = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if count == split - 1:
            total = tl.zeros_like(acc)
            for s in range(0, split):
                total += tl.load(ws_ptr + s * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
                total = total + bias[None, :]
            ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
            tl.store(ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            acc = acc + bias[None, :]
        ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _decode_fma_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
                       M, N, K, stride_xm, stride_om, k_per_split, split,
                       HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    KB: tl.constexpr = BLOCK_K // 32
    KS = K // 32
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kb = tl.arange(0, KB)
    offs_e = tl.arange(0, 32)
    n_ok = offs_n < N
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    # weight tile [BLOCK_N, KB, 32], one activation row [KB, 32] at a time, scale tile [BLOCK_N, KB]
    koff = offs_kb[:, None] * 32 + offs_e[None, :]
    w_ptrs = w_ptr + rows[:, None, None] * K + k_begin + koff[None, :, :]
    x_ptrs = x_ptr + k_begin + koff
    s_ptrs = s_ptr + rows[:, None] * KS + k_begin // 32 + offs_kb[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs)
            sb = tl.load(s_ptrs)
        else:
            w = tl.load(w_ptrs, mask=(k0 + koff[None, :, :]) < k_end, other=0.0)
            sb = tl.load(s_ptrs, mask=(k0 + offs_kb[None, :] * 32) < k_end, other=127)
        wf = w.to(tl.float32)
        scale = _e8m0_to_f32(sb)                                           # [BN, KB]
        for m in tl.static_range(BLOCK_M):
            if EVEN_K:
                x = tl.load(x_ptrs + m * stride_xm, mask=m < M, other=0.0)
            else:
                x = tl.load(x_ptrs + m * stride_xm, mask=(m < M) & ((k0 + koff) < k_end), other=0.0)
            part = tl.sum(wf * x.to(tl.float32)[None, :, :], axis=2)       # [BN, KB]
            row = tl.sum(part * scale, axis=1)                             # [BN]
            if BLOCK_M == 1:
                acc += row[None, :]
            else:
                acc += tl.where(offs_m[:, None] == m, row[None, :], 0.0)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
        s_ptrs += KB
    _finish(acc, out_ptr, ws_ptr, cnt_ptr, b_ptr, offs_m, offs_n, M, N, stride_om, pid_n, pid_k, split,
            HAS_BIAS, SPLIT)


@triton.jit
def _decode_mma_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
                       M, N, K, stride_xm, stride_om, k_per_split, split,
                       HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    KB: tl.constexpr = BLOCK_K // 32
    KS = K // 32
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, 32)
    n_ok = offs_n < N
    m_ok = offs_m < M
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    w_ptrs = w_ptr + rows[None, :] * K + k_begin + offs_e[:, None]              # [32, BN]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + k_begin + offs_e[None, :]     # [BM, 32]
    s_ptrs = s_ptr + rows * KS + k_begin // 32                                   # [BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        for j in tl.static_range(KB):
            if EVEN_K:
                w = tl.load(w_ptrs + j * 32)
                x = tl.load(x_ptrs + j * 32, mask=m_ok[:, None], other=0.0)
                sb = tl.load(s_ptrs + j)
            else:
                kj = k0 + j * 32
                w = tl.load(w_ptrs + j * 32, mask=(kj + offs_e[:, None]) < k_end, other=0.0)
                x = tl.load(x_ptrs + j * 32, mask=m_ok[:, None] & ((kj + offs_e[None, :]) < k_end), other=0.0)
                sb = tl.load(s_ptrs + j, mask=(kj < k_end) & n_ok, other=127)
            # E4M3 -> FP16 is one exact hardware conversion per two elements (BF16 would need a second,
            # quarter-rate one). The activation block is moved exactly into FP16's range by a power of
            # two 2^k chosen from its own max (|x| * 2^k in [2^14, 2^15)); bf16 values more than 2^31
            # below that max lose bits, a contribution far below the fp32 accumulation error.
            xf = x.to(tl.float32)
            amax_bits = tl.max(tl.abs(xf), axis=1).to(tl.int32, bitcast=True)
            biased_k = tl.minimum(tl.maximum(268 - (amax_bits >> 23), 9), 253)       # k + 127
            up = (biased_k << 23).to(tl.float32, bitcast=True)                        # 2^k
            down = ((254 - biased_k) << 23).to(tl.float32, bitcast=True)              # 2^-k
            part = tl.dot((xf * up[:, None]).to(tl.float16), w.to(tl.float16))
            acc += part * down[:, None] * _e8m0_to_f32(sb)[None, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
        s_ptrs += KB
    _finish(acc, out_ptr, ws_ptr, cnt_ptr, b_ptr, offs_m, offs_n, M, N, stride_om, pid_n, pid_k, split,
            HAS_BIAS, SPLIT)


@dataclass(frozen=True)
class DecodeConfig:
    """One launch configuration of the decode kernels (the benchmark sweeps these)."""

    kind: str = "fma"        # "fma" | "mma"
    block_n: int = 64
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def label(self) -> str:
        return (f"{self.kind} n{self.block_n} k{self.block_k} s{self.split_k} "
                f"w{self.num_warps} st{self.num_stages}")


def _sm_count(device: torch.device) -> int:
    return _SM_COUNT.setdefault(device.index or 0, torch.cuda.get_device_properties(device).multi_processor_count)


_SM_COUNT: dict[int, int] = {}


def default_decode_config(m: int, n: int, k: int, sm_count: int = 132) -> DecodeConfig:
    """Heuristic launch configuration: K is split until the tiles cover about two waves of SMs."""
    if m == 1:
        kind, block_n, block_k, warps, waves = "fma", 16, 512 if k >= 4096 else 256, 4, 2
    else:
        kind, block_n, block_k, warps, waves = "mma", 64, 128, 4, 4
    tiles = triton.cdiv(n, block_n)
    split = 1
    while tiles * split < waves * sm_count and k // (split * 2) >= 2 * block_k:
        split *= 2
    return DecodeConfig(kind, block_n, block_k, split, warps, 3)


# Tests set this to fill split-K workspaces with NaN, so a partial sum that is never written shows up.
POISON_WORKSPACE = False
MAX_TILES = 1 << 16
_COUNTERS: dict[tuple[int, int], torch.Tensor] = {}


def _tile_counters(device: torch.device) -> torch.Tensor:
    """Per-(device, stream) zeroed int32 counters for the split-K reduction (kernels reset them)."""
    stream = torch.cuda.current_stream(device)
    key = (device.index or 0, stream.cuda_stream)
    cnt = _COUNTERS.get(key)
    if cnt is None:
        cnt = _COUNTERS[key] = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
    return cnt


def mxfp8_decode_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                        bias: torch.Tensor | None = None, config: DecodeConfig | None = None,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16, rows contiguous) @ dequant(weight [N, K] e4m3, scale [N, K/32] uint8)^T -> [M, N]."""
    m, k = x.shape
    n = weight.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or default_decode_config(m, n, k, _sm_count(x.device))
    block_m = max(16, triton.next_power_of_2(m)) if cfg.kind == "mma" else triton.next_power_of_2(m)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split = triton.cdiv(k, k_per_split)
    tiles = triton.cdiv(n, cfg.block_n)
    if split > 1 and tiles > MAX_TILES:
        split, k_per_split = 1, triton.cdiv(k, cfg.block_k) * cfg.block_k
    even_k = k % cfg.block_k == 0 and k_per_split * split == k
    if out is None:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if split == 1:
        ws, cnt = out, out
    else:
        fill = torch.full if POISON_WORKSPACE else None
        ws = (fill((split, m, n), float("nan"), device=x.device, dtype=torch.float32) if fill
              else torch.empty((split, m, n), device=x.device, dtype=torch.float32))
        cnt = _tile_counters(x.device)
    kernel = _decode_fma_kernel if cfg.kind == "fma" else _decode_mma_kernel
    has_bias = bias is not None
    kernel[(tiles, split)](x, weight, scale, bias if has_bias else out, out, ws, cnt,
                           m, n, k, x.stride(0), out.stride(0), k_per_split, split,
                           HAS_BIAS=has_bias, SPLIT=split > 1, EVEN_K=even_k,
                           BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                           num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
