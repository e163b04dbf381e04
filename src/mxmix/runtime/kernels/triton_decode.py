"""Weight-only MXFP8 kernels for small M (decode): y[M, N] = x[M, K] @ dequant(W[N, K], S[N, K/32])^T.

Where they can run (Gluon present, bf16 activations, scale bytes 3..134, K % 128 == 0, aligned operands) the
default is a Gluon kernel with the weight as tensor-core operand A: on Hopper the ``wgmma`` kernel of
`gluon_wgmma` (policy: `wgmma_config`, also for M up to 256), elsewhere the ``mma.sync`` kernel of
`gluon_decode` (policy: `swab_config`). This module owns the dispatch, the split-K buffers and the Triton
kernels below, which serve every other call.

Decode is memory-bound: the weight bytes (1 + 1/32 per element instead of 2 for BF16) set the time,
so the kernels do as little per-element work as possible (shared docs mxfp8-format.md §7):

* ``fma``: CUDA-core GEMV. Each weight element is converted from E4M3 once, multiplied by the
  activation and summed within its 32-element block; the block's scale 2^(b-127) is applied once per
  partial sum (decoded by shifting the byte into the fp32 exponent field). Used at M = 1, and at
  M = 2 for weights up to 8192x8192.
* ``mma``: tensor-core variant for the other M <= 16. One ``tl.dot`` per 32-wide K block gives an fp32
  partial [M, BLOCK_N] that is scaled by the block's scales and accumulated, so there is no per-element
  scale multiply, only the E4M3 -> BF16 conversion (exact). How that conversion is spelled matters on
  Hopper (``DecodeConfig.convert``, `CONVERTS`): Triton's direct E4M3 -> BF16 goes through a scalar
  F16 -> BF16 ``F2F`` per element, and even the packed E4M3 -> F32 -> BF16 route keeps two conversion
  instructions per pair, on a pipe that runs at a quarter of the integer rate. The default, ``prmt``,
  builds the bf16 bits with a byte permute, a shift and a mask and fixes the exponent bias with one
  exact packed multiply (`_e4m3_to_bf16_prmt`), so no conversion instruction is left.

Both split K across programs when N alone does not fill the GPU; partial sums go to an fp32
workspace and the last program of each N tile (an atomic per-tile counter) reduces them in a fixed
order with the bias, in the same launch, so results are deterministic and graph-capturable.
Scaling a partial sum by a power of two is exact, so the result equals the BF16 matmul on the exactly
dequantized weight up to fp32 summation order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from mxmix.mx.triton_codec import e8m0_to_f32
from mxmix.runtime import tiles as weight_tiles  # (module; "tiles" counts row tiles below)

# 0x87F00000 as a signed constant: sign bit + the 7 magnitude bits of an E4M3 byte, moved into the
# low exponent / high mantissa bits of an fp32 word
_F32_E4M3_MASK = tl.constexpr(0x87F00000 - (1 << 32))
_TWO_POW_120 = tl.constexpr(1.329227995784916e36)


@triton.jit
def _e4m3_bits_to_f32(wb):
    """Signed E4M3 bytes (int8) -> exact fp32 values with integer operations, no conversion instructions.

    Sign-extending the byte and shifting it left by 20 puts its sign in bit 31 and its exponent and
    mantissa bits in the low exponent / high mantissa bits of an fp32 word: that word is
    e4m3 * 2^-120 exactly, E4M3 subnormals becoming fp32 subnormals. The multiply by 2^120 is exact
    (Triton keeps fp32 subnormal operands; the bit-exact dequantization test checks it).
    """
    bits = (wb.to(tl.int32) << 20) & _F32_E4M3_MASK
    return bits.to(tl.float32, bitcast=True) * _TWO_POW_120


def e4m3_prmt_ptx(word: str) -> str:
    """PTX that spreads the 4 E4M3 bytes of 32-bit register ``word`` into two bf16x2 registers ``lo``
    (bytes 0, 1) and ``hi`` (bytes 2, 3) holding e4m3 * 2^-120 exactly (see `_e4m3_to_bf16_prmt`);
    shared by the Triton kernels here and the Gluon kernel (`gluon_decode`)."""
    return (f"prmt.b32 lo, {word}, 0, 0x9180;\nprmt.b32 hi, {word}, 0, 0xB3A2;\nshl.b32 lo, lo, 4;\n"
            "shl.b32 hi, hi, 4;\nand.b32 lo, lo, 0x87F087F0;\nand.b32 hi, hi, 0x87F087F0;\n")


# 2^120 as a packed pair of bf16 (exponent 247) and a pair of -0.0 (the fma's exact "add nothing")
_PRMT_ASM = tl.constexpr("""{
.reg .b32 lo, hi, k, z;
""" + e4m3_prmt_ptx("$2") + """mov.b32 k, 0x7B807B80;
mov.b32 z, 0x80008000;
fma.rn.bf16x2 $0, lo, k, z;
fma.rn.bf16x2 $1, hi, k, z;
}""")


@triton.jit
def _e4m3_to_bf16_prmt(wb):
    """E4M3 bytes (uint8) -> exact bf16, four at a time, with integer ops and one packed multiply per pair.

    ``prmt`` spreads two bytes into the low bytes of two 16-bit lanes and fills each lane's high byte
    with copies of the byte's sign bit; a shift by 4 and a mask leave the sign in bit 15 and the seven
    exponent/mantissa bits in the low exponent and high mantissa bits of a bf16: that bf16 is
    e4m3 * 2^-120 exactly (E4M3 subnormals become bf16 subnormals). A bf16x2 multiply by 2^120 is then
    exact. No F2F conversion is issued (Hopper runs those at a quarter of the integer rate).
    NaN bytes (0x7F, 0xFF) are not decoded as NaN: `check_quantized` refuses weights that hold them.
    """
    return tl.inline_asm_elementwise(_PRMT_ASM, "=r,=r,r", [wb], dtype=tl.bfloat16, is_pure=True, pack=4)


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
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       CONVERT: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    if CONVERT == 1:  # integer decode: read the bytes as int8
        w_ptr = w_ptr.to(tl.pointer_type(tl.int8))
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
        if CONVERT == 1:
            wf = _e4m3_bits_to_f32(w)
        elif CONVERT == 4:
            wf = _e4m3_to_bf16_prmt(w.to(tl.uint8, bitcast=True)).to(tl.float32)
        else:
            wf = w.to(tl.float32)
        scale = e8m0_to_f32(sb, False)                                    # [BN, KB]
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
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       CONVERT: tl.constexpr):
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
            if CONVERT == 3:
                # fold: exact fp32 w * 2^(s-127), one rounding to bf16 (= the bf16 dequantized weight),
                # accumulated by the dot itself (no zeroed partial, no per-block rescale of acc)
                wb = (w.to(tl.float32) * e8m0_to_f32(sb, False)[None, :]).to(tl.bfloat16)
                acc = tl.dot(x, wb, acc)
            else:
                if CONVERT == 4:
                    wb = _e4m3_to_bf16_prmt(w.to(tl.uint8, bitcast=True))
                elif CONVERT == 2:
                    wb = w.to(tl.float32).to(tl.bfloat16)  # E4M3->F16x2, F16->F32, packed F32->BF16x2
                else:
                    wb = w.to(tl.bfloat16)  # Triton 3.6 on sm_90: E4M3->F16x2 then scalar F2F.BF16.F16
                # fp16 activations: E4M3 values are exact in fp16 too (a no-op for bf16)
                part = tl.dot(x, wb.to(x.dtype))
                acc += part * e8m0_to_f32(sb, False)[None, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
        s_ptrs += KB
    _finish(acc, out_ptr, ws_ptr, cnt_ptr, b_ptr, offs_m, offs_n, M, N, stride_om, pid_n, pid_k, split,
            HAS_BIAS, SPLIT)


@dataclass(frozen=True)
class DecodeConfig:
    """One launch configuration of the decode kernels (the benchmark sweeps these)."""

    kind: str = "fma"        # "fma" | "mma" | "swab" / "swabcp" (`gluon_decode`: the weight as tensor-core
    #                          operand A; swab: num_stages 1 or 2, 2 = register prefetch of the next tile;
    #                          swabcp: a cp.async shared-memory ring num_stages deep) | "wgmma" (`gluon_wgmma`,
    #                          Hopper: a ring num_stages deep, num_warps = block_n // 16)
    block_n: int = 64
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    convert: str = "cvt"     # how E4M3 bytes become numbers: see CONVERTS

    def label(self) -> str:
        conv = "" if self.convert == "cvt" else f" {self.convert}"
        return (f"{self.kind}{conv} n{self.block_n} k{self.block_k} s{self.split_k} "
                f"w{self.num_warps} st{self.num_stages}")


# E4M3 -> number conversions (the CONVERT constexpr of the kernels) and the kinds that support each:
# cvt  - Triton's conversion (fma: E4M3->F16x2->F32; mma: E4M3->F16x2 then scalar F16->BF16)
# int  - fma only: integer bit placement and an exact multiply, no conversion instructions (`_e4m3_bits_to_f32`)
# f32  - mma only: E4M3->F32 then packed F32->BF16 (avoids the scalar F16->BF16 conversion)
# fold - mma only: like f32, with the block scale multiplied into the weight before the dot
# prmt - both: byte permute + shift/mask into bf16 and one exact packed multiply (`_e4m3_to_bf16_prmt`)
# swab's only conversion is "fold": the prmt decode whose packed multiply also applies the block scale
CONVERTS = {"cvt": 0, "int": 1, "f32": 2, "fold": 3, "prmt": 4}
_KIND_CONVERTS = {"fma": ("cvt", "int", "prmt"), "mma": ("cvt", "f32", "fold", "prmt"), "swab": ("fold",),
                  "swabcp": ("fold",), "wgmma": ("fold",)}
GLUON_KINDS = ("swab", "swabcp", "wgmma")  # the Gluon kernels: bf16, scales in the fold range, aligned operands


def _sm_count(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    count = _SM_COUNT.get(idx)
    if count is None:
        count = _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return count


_SM_COUNT: dict[int, int] = {}


def _split_for(tiles: int, k: int, block_k: int, target_programs: int, min_k: int) -> int:
    """Double the K split while the grid has fewer than ``target_programs`` and each split keeps >= min_k."""
    split = 1
    while tiles * split < target_programs and k // (split * 2) >= max(min_k, block_k):
        split *= 2
    return split


# E4M3 conversion used by the heuristic for each kernel kind (see CONVERTS); module-level so that
# benchmarks can compare variants end to end (bench_e2e.py --variants, bench_kernels.py --mma-convert).
FMA_CONVERT = "cvt"
MMA_CONVERT: str | None = None  # None: "prmt" (measured, BENCHMARKS.md)
FMA_MAX_M = 2      # largest M served by the CUDA-core kernel...
FMA_MULTI_ROW_MAX_ELEMS = 8192 * 8192  # ...but for M >= 2 only on weights up to this many elements
MMA_MAX_SPLIT = 4
# the Gluon kernels: on by default where they run (SWAB = False: the Triton kernels only). The mma.sync
# kernel (`gluon_decode`, `swab_config`) also serves 16 < M <= SWAB_MAX_M (`kernels.choose_path`)...
SWAB = True
SWAB_MAX_M = 32  # H200: 0.72-1.09x BF16 at M = 32 (fused kernel 0.49-0.97x); at 64 no better than fused
# ...and on Hopper the wgmma kernel (`gluon_wgmma`, `wgmma_config`) serves WGMMA_MIN_M <= M <= WGMMA_MAX_M
# instead (H200, 2026-11-28: faster than the mma.sync kernel at every M swept, 1 to 64; 0.26-0.67x BF16 at
# M = 256 against 0.24-0.43x for the fused Triton kernel)
WGMMA = True
WGMMA_MIN_M = 1
WGMMA_MAX_M = 256


def _fma_serves(m: int, n: int, k: int) -> bool:
    return m <= FMA_MAX_M and (m == 1 or n * k <= FMA_MULTI_ROW_MAX_ELEMS)


def swab_config(m: int, n: int, k: int, sm_count: int = 132) -> DecodeConfig:
    """Launch policy of the operand-A Gluon kernel, fitted to the H200 sweeps of 2026-11-28
    (`bench_kernels.py --sweep-swab --llama`: 14 kernel variants x 5 splits per shape and M; BENCHMARKS.md).

    * The cp.async shared-memory ring (``swabcp``), 3 tiles deep, 64-row tiles.
    * K steps of 256 at M <= 8 for long rows (K >= 8192) and vocabulary-sized N (>= 65536), else 128
      (at M > 8 x^T is two mma columns wide and the ring holds twice the x bytes).
    * K split (a power of two, at most 16, >= 512 per split) up to about 3 programs per SM at M <= 8 and
      4 above; when the N tiles alone exceed that (but not three times), up to four times it, so that
      the last wave is short. More splits than that cost more in partial sums and short loops than
      they gain (e.g. 4096 x 4096: 512 programs 13-20 % slower than 256).
    """
    wide = m > 8
    block_k = 256 if not wide and (k >= 8192 or n >= 65536) and k % 256 == 0 else 128
    tiles = triton.cdiv(n, 64)
    target = (4 if wide else 3) * sm_count

    def can_double(split: int) -> bool:
        return split < 16 and k // (split * 2) >= max(512, block_k)

    split = 1
    if tiles <= target:
        while can_double(split) and tiles * split * 2 <= target:
            split *= 2
    elif tiles < 3 * target:
        while can_double(split) and tiles * split < 4 * target:
            split *= 2
    return DecodeConfig("swabcp", 64, block_k, split, 4, 3, "fold")


def wgmma_config(m: int, n: int, k: int, sm_count: int = 132, tiled: bool = False) -> DecodeConfig:
    """Launch policy of the wgmma kernel, fitted to the H200 sweeps of 2026-11-28 (`bench_kernels.py
    --sweep-wgmma`: 25 variants per shape at M <= 64, 12 at M >= 128; BENCHMARKS.md).

    * M <= 128: 64-row tiles (one warpgroup); above, 128-row tiles (two warpgroups share the x tile).
    * K steps of 256 at M <= 8 and at 16 < M <= 32, else 128; a ring of 2 tiles at M <= 8 and from
      M = 128 (shared memory), else 3.
    * The K split (a power of two) fills up to about 4 programs per SM at M <= 16 (each split >= 512 of K
      at M <= 8, >= 1024 at M = 9..16), 2 per SM up to M = 128 and 1 above (>= 1024 and 2048 of K): at
      larger M each split re-reads the x tile and adds more partial sums.
    * ``tiled`` (the weight in `mxmix.runtime.tiles`' layout): whole-tile K steps of 256 and a ring of 2 up to
      M = 16 as well (H200 sweep, round 6: 9.8 vs 10.1, 22.8 vs 22.9, 60.4 vs 65.6 and 61.9 vs 65.6 us at
      M = 16 on the four issue shapes; on row-major weights these steps were slower), and for 32 < M <= 64 a
      ring of 2 with splits up to 4 programs per SM (round 6 sweep at M = 48 and 64: the best configuration
      on 8192^2, 28672x8192 and 8192x28672; 4096^2 prefers fewer splits and deeper rings).
    * From M = 65 on, a ring of 2 in either layout: 128-token x tiles in a ring of 3 leave one program per SM
      (round 6, M = 96 row-major: 254.0 us on 28672x8192 against 154.1 us at M = 128).
    """
    wide = m > 128
    whole_tiles = tiled and m <= 16
    block_n = 128 if wide else 64
    block_k = 256 if (m <= 8 or 16 < m <= 32 or whole_tiles) and k % 256 == 0 else 128
    stages = 2 if m <= 8 or m > 64 or whole_tiles or (tiled and m > 32) else 3
    tiles = triton.cdiv(n, block_n)
    target = (4 if m <= 16 or (tiled and 32 < m <= 64) else 1 if wide else 2) * sm_count
    min_k = 512 if m <= 8 else 2048 if wide else 1024
    split = 1
    while split < 16 and tiles * split * 2 <= target and k // (split * 2) >= max(min_k, block_k):
        split *= 2
    return DecodeConfig("wgmma", block_n, block_k, split, block_n // 16, stages, "fold")


def default_decode_config(m: int, n: int, k: int, sm_count: int = 132, swab: bool | None = None) -> DecodeConfig:
    """Heuristic launch configuration: split K until ~4 programs per SM (at most 4 ways for the mma kernel).

    ``swab`` (default: `SWAB`, when Gluon is present): the Gluon kernels for the M they serve - on Hopper the
    wgmma kernel (`gluon_wgmma`, `wgmma_config`) for WGMMA_MIN_M <= M <= WGMMA_MAX_M, else the operand-A
    ``mma.sync`` kernel (`gluon_decode`, `swab_config`); callers pass False where they cannot run (fp16
    activations, scales outside the fold range).
    Otherwise, fitted to graph-timed sweeps (BENCHMARKS.md): the GEMV at M = 1 (and at M = 2 on weights up
    to 8192x8192), the tensor-core kernel with the byte-permute E4M3 conversion above. In the H100 sweep of
    2026-11-28 (`bench_kernels.py --sweep-decode`, 72 tensor-core configurations at M = 2, 4, 16) a
    64-wide tile with 128-wide K steps split 4 ways was the best or within 2 % of it on every shape.
    """
    from mxmix.runtime.kernels import gluon_decode, gluon_wgmma

    gluon = SWAB if swab is None else swab
    if gluon and WGMMA and WGMMA_MIN_M <= m <= WGMMA_MAX_M and gluon_wgmma.supports(m, k, 128):
        return wgmma_config(m, n, k, sm_count)
    if gluon and gluon_decode.supports(m, k, 128):
        return swab_config(m, n, k, sm_count)
    if _fma_serves(m, n, k):
        block_k = 512 if m == 1 and n >= 14336 else 256
        tiles = triton.cdiv(n, 16)
        return DecodeConfig("fma", 16, block_k, _split_for(tiles, k, block_k, 4 * sm_count, 512), 4, 3,
                            FMA_CONVERT)
    tiles = triton.cdiv(n, 64)
    split = min(MMA_MAX_SPLIT, _split_for(tiles, k, 128, 4 * sm_count, 1024))
    return DecodeConfig("mma", 64, 128, split, 4, 3, MMA_CONVERT or "prmt")


def candidate_configs(m: int, n: int, k: int, sm_count: int = 132, wgmma: bool | None = None) -> list[DecodeConfig]:
    """What the autotuner tries for one (M bucket, N, K): the heuristic's pick and its neighbours.

    ``wgmma`` (default: whether the wgmma kernel runs here): include its variants (those that fit in shared
    memory and divide K).
    """
    cands = [default_decode_config(m, n, k, sm_count)]
    from mxmix.runtime.kernels import gluon_decode, gluon_wgmma

    if gluon_wgmma.supports(m, k, 128) if wgmma is None else wgmma:
        block_m = gluon_wgmma.block_m_for(m)
        cands += [DecodeConfig("wgmma", bn, bk, sp, bn // 16, st, "fold")
                  for bn, bk, st in ((64, 128, 2), (64, 128, 3), (64, 256, 2), (64, 256, 3), (128, 128, 2))
                  for sp in (1, 2, 4, 8, 16) if k % bk == 0 and gluon_wgmma.fits(bn, bk, block_m, st)]
    if gluon_decode.supports(m, k, 128):
        cands += [DecodeConfig(kind, bn, bk, sp, 4, st, "fold")
                  for kind, bn, bk, st in (("swabcp", 64, 128, 3), ("swabcp", 64, 256, 3), ("swabcp", 64, 128, 4),
                                           ("swab", 128, 256, 2))
                  for sp in (1, 2, 4, 8, 16) if k % bk == 0]
    if m <= 2:
        cands += [DecodeConfig("fma", 16, bk, sp, 4, 3) for bk in (256, 512) for sp in (1, 2, 4, 8)]
    if 2 <= m <= 16:  # the Triton tensor-core kernel holds all M rows in one tile
        cands += [DecodeConfig("mma", bn, 128, sp, w, 3) for bn, w in ((64, 4), (128, 8)) for sp in (1, 2, 4, 8)]
    seen: list[DecodeConfig] = []
    for c in cands:
        if c not in seen and (c.split_k == 1 or k // c.split_k >= c.block_k):
            seen.append(c)
    return seen


def m_bucket(m: int) -> int:
    return triton.next_power_of_2(m)


_TUNED: dict[tuple, DecodeConfig] = {}


def autotune_enabled() -> bool:
    """Opt-in (MXMIX_AUTOTUNE=1): in the one H100 table run with it on, it picked slow configurations
    for 4096x4096 at M = 1-2 that the heuristic avoids (see BENCHMARKS.md), so the heuristic is the default."""
    return os.environ.get("MXMIX_AUTOTUNE", "0") in ("1", "true", "yes")


def tuned_decode_config(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> DecodeConfig:
    """The fastest candidate for this (M bucket, N, K, device), measured once and cached.

    Timing uses triton.testing.do_bench (median, L2 flushed between calls). Unless MXMIX_AUTOTUNE=1, and
    inside a CUDA graph capture, the heuristic is used for shapes not yet measured.
    """
    m, k = x.shape
    n = weight.shape[0]
    sms = _sm_count(x.device)
    key = (x.device.index or 0, m_bucket(m), n, k, x.dtype)
    cfg = _TUNED.get(key)
    if cfg is not None:
        return cfg
    if not autotune_enabled() or torch.cuda.is_current_stream_capturing():
        return default_decode_config(m, n, k, sms)
    from triton.testing import do_bench

    xb = torch.randn((m_bucket(m), k), device=x.device, dtype=x.dtype)
    best: tuple[float, DecodeConfig] | None = None
    for cand in candidate_configs(m_bucket(m), n, k, sms):
        def fn(cand: DecodeConfig = cand) -> torch.Tensor:
            return mxfp8_decode_matmul(xb, weight, scale, config=cand)

        try:
            fn()  # compile first: do_bench sizes its loop from its first calls
            torch.cuda.synchronize(x.device)
            t = do_bench(fn, warmup=3, rep=15, return_mode="median")
        except Exception:  # a candidate that does not compile here is skipped
            continue
        if best is None or t < best[0]:
            best = (t, cand)
    cfg = best[1] if best else default_decode_config(m, n, k, sms)
    _TUNED[key] = cfg
    return cfg


def _reads_tiled(cfg: DecodeConfig, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether the ``wgmma`` kernel, the one reader of the tiled layout, serves this call with ``cfg``."""
    from mxmix.runtime.kernels import gluon_wgmma

    return (WGMMA and SWAB and cfg.kind == "wgmma" and weight_tiles.can_tile(*weight.shape)
            and gluon_wgmma.supports_tiled(cfg.block_n, cfg.block_k) and wgmma_runs(x, weight, scale, cfg.block_k))


def _split_buffers(x: torch.Tensor, out: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K workspace (fp32 partial sums) and tile counters; ``out`` twice when there is no split."""
    if split == 1:
        return out, out
    m, n = out.shape
    ws = (torch.full((split, m, n), float("nan"), device=x.device, dtype=torch.float32) if POISON_WORKSPACE
          else torch.empty((split, m, n), device=x.device, dtype=torch.float32))
    return ws, _tile_counters(x.device)


# Tests set this to fill split-K workspaces with NaN, so a partial sum that is never written shows up.
POISON_WORKSPACE = False
MAX_TILES = 1 << 16
_COUNTERS: dict[int, torch.Tensor] = {}


def _tile_counters(device: torch.device) -> torch.Tensor:
    """Zeroed int32 per-tile counters for the split-K reduction, one set per device.

    The kernels leave them zeroed. Launches run in stream order, so one set serves every stream that
    is not used concurrently with another. A set first needed inside a CUDA-graph capture belongs to
    that graph (its zero-fill is replayed with it) and is not cached.
    """
    idx = device.index if device.index is not None else torch.cuda.current_device()
    cnt = _COUNTERS.get(idx)
    if cnt is None:
        cnt = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
        if not torch.cuda.is_current_stream_capturing():
            _COUNTERS[idx] = cnt
    return cnt


def gluon_operands_ok(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether the Gluon kernels can take these operands exactly (bf16 activations, scale bytes in the fold
    range) and with their 16-byte copies (16-byte aligned tensors, x rows a multiple of 16 bytes apart)."""
    from mxmix.runtime.kernels import gluon_decode

    aligned = (x.data_ptr() % 16 == 0 and x.stride(0) % 8 == 0 and weight.data_ptr() % 16 == 0
               and scale.data_ptr() % 16 == 0 and weight.is_contiguous() and scale.is_contiguous())
    return x.dtype == torch.bfloat16 and aligned and gluon_decode.fold_exact(scale)


def swab_runs(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_k: int) -> bool:
    """Whether the operand-A ``mma.sync`` kernel (`gluon_decode`) can serve this call exactly."""
    from mxmix.runtime.kernels import gluon_decode

    return gluon_decode.supports(x.shape[0], x.shape[1], block_k) and gluon_operands_ok(x, weight, scale)


def wgmma_runs(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_k: int) -> bool:
    """Whether the ``wgmma`` kernel (`gluon_wgmma`, Hopper only) can serve this call exactly."""
    from mxmix.runtime.kernels import gluon_wgmma

    return (gluon_wgmma.supports(x.shape[0], x.shape[1], block_k, x.device)
            and gluon_operands_ok(x, weight, scale))


def mxfp8_decode_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                        bias: torch.Tensor | None = None, config: DecodeConfig | None = None,
                        out: torch.Tensor | None = None, tiled: bool = False) -> torch.Tensor:
    """x [M, K] (bf16/fp16, rows contiguous) @ dequant(weight [N, K] e4m3, scale [N, K/32] uint8)^T -> [M, N].

    ``tiled``: weight and scale are in the tiled layout (`mxmix.runtime.tiles`), which only the ``wgmma``
    kernel reads; any other case (another GPU, fp16 activations, scales outside the fold range, a Gluon
    failure) runs on a row-major copy made for the call: correct, but an extra pass over the weight.
    """
    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k or tuple(scale.shape) != (n, k // 32):
        raise ValueError(f"mxfp8_decode_matmul: x {tuple(x.shape)}, weight {tuple(weight.shape)} and scale "
                         f"{tuple(scale.shape)} do not match")
    if x.stride(1) != 1:
        x = x.contiguous()
    if tiled:
        cfg = config or wgmma_config(m, n, k, _sm_count(x.device), tiled=True)
        if not _reads_tiled(cfg, x, weight, scale):
            return mxfp8_decode_matmul(x, *weight_tiles.untile(weight, scale), bias, config, out)
    else:
        cfg = config or tuned_decode_config(x, weight, scale)
        runs = wgmma_runs if cfg.kind == "wgmma" else swab_runs
        if cfg.kind in GLUON_KINDS and not runs(x, weight, scale, cfg.block_k):
            cfg = default_decode_config(m, n, k, _sm_count(x.device), swab=False)
    if cfg.kind == "mma" and cfg.convert == "fold" and x.dtype != torch.bfloat16:
        cfg = replace(cfg, convert="prmt")  # a folded weight is exact in bf16, not in fp16
    block_m = max(16, triton.next_power_of_2(m)) if cfg.kind == "mma" else triton.next_power_of_2(m)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split = triton.cdiv(k, k_per_split)
    row_tiles = triton.cdiv(n, cfg.block_n)
    if split > 1 and row_tiles > MAX_TILES:
        split, k_per_split = 1, triton.cdiv(k, cfg.block_k) * cfg.block_k
    even_k = k % cfg.block_k == 0 and k_per_split * split == k
    if out is None:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    ws, cnt = _split_buffers(x, out, split)
    if cfg.convert not in _KIND_CONVERTS.get(cfg.kind, ()):
        raise ValueError(f"decode kernel {cfg.kind!r} has no conversion {cfg.convert!r}")
    if cfg.kind == "swab" and cfg.num_stages > 2:
        raise ValueError("decode kernel 'swab' prefetches at most one tile (num_stages 1 or 2)")
    if cfg.kind in GLUON_KINDS:
        from mxmix.runtime.kernels import gluon_decode, gluon_wgmma

        ring = cfg.num_stages if cfg.kind == "swabcp" else 0
        try:
            if cfg.kind == "wgmma":
                gluon_wgmma.launch(x, weight, scale, bias, out, ws, cnt, block_n=cfg.block_n, block_k=cfg.block_k,
                                   split=split, k_per_split=k_per_split, num_warps=cfg.num_warps,
                                   stages=cfg.num_stages, tiled=tiled)
            else:
                gluon_decode.launch_swab(x, weight, scale, bias, out, ws, cnt, block_n=cfg.block_n,
                                         block_k=cfg.block_k, split=split, k_per_split=k_per_split,
                                         num_warps=cfg.num_warps, prefetch=not ring and cfg.num_stages > 1,
                                         ring=ring)
        except Exception as exc:
            if config is not None:  # an explicit configuration is an explicit request
                raise
            # Gluon is experimental: a Triton whose Gluon differs from 3.6's must not break inference
            gluon_decode.disable(exc)
            if tiled:
                weight, scale = weight_tiles.untile(weight, scale)
            return mxfp8_decode_matmul(x, weight, scale, bias, out=out)
        return out
    kernel = _decode_fma_kernel if cfg.kind == "fma" else _decode_mma_kernel
    has_bias = bias is not None
    kernel[(row_tiles, split)](x, weight, scale, bias if has_bias else out, out, ws, cnt,
                           m, n, k, x.stride(0), out.stride(0), k_per_split, split,
                           HAS_BIAS=has_bias, SPLIT=split > 1, EVEN_K=even_k,
                           BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                           CONVERT=CONVERTS[cfg.convert], num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
