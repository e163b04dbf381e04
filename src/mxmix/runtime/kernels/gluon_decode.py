"""Decode kernels (M <= 64) with the weight as the tensor-core A operand of ``mma.sync``, written in Gluon
(Triton's explicit-layout dialect, shipped with Triton >= 3.5). On Hopper the ``wgmma`` kernel of
`gluon_wgmma` is the default instead; this one serves the other GPUs and the sweeps.

Why a second decode kernel: the Triton ``mma`` kernel of `triton_decode` multiplies x [M, K] by the
weight as the B operand, so every dequantized weight tile makes a round trip through shared memory
to reach the ``mma`` operand layout, and its partial sums are rescaled per 32-wide block. Counted in
SASS (``bench_kernels.py --sass``) that is about 6.3 instructions per weight byte, and on an H200 an
SM cannot issue that fast enough to keep HBM busy (0.86-1.15x BF16 at M = 2..16).

Here the product is computed transposed, out^T [N, M] = W [N, K] @ x^T, with the weight as operand A
of ``mma.sync.m16n8k16``, whose fragments live in registers:

* each thread reads its fragment directly: with ``k_width=8`` a thread owns 8 consecutive K elements
  of a row (one 8-byte read; the K order inside an ``mma`` is permuted the same way for both operands,
  which changes only the fp32 summation order);
* E4M3 -> BF16 uses the byte-permute decode of `triton_decode` (no conversion instructions), and its
  final exact bf16x2 multiply applies the block scale too: the multiplier is 2^(s - 7) instead of
  2^120, so there is no per-block rescaling and the ``mma`` accumulates in place;
* the tokens (x^T) are operand B, 8..64 columns wide; the register kernel reads rows of x past M as
  row M - 1, so no load is masked, and the ring kernels do not fetch them; their results are never stored.

That is 3.6-4.0 instructions per weight byte. Two ways to keep enough bytes in flight:
`_swab_async_kernel` (default) stages each K tile through a shared-memory ring filled by ``cp.async``;
`_swab_kernel` holds the next tile in registers (fewer warps fit per SM; kept for the sweeps and the
autotuner; holding two tiles was no faster, BENCHMARKS.md).

The fold is exact when every product e4m3 * 2^(s-127) and the multiplier 2^(s-7) are normal-or-subnormal
BF16 values, i.e. for scale bytes 3 <= s <= 134 (real weights use about 100-127); `fold_exact` checks a
scale tensor once and callers use the Triton kernels otherwise. Split-K and the deterministic in-launch
reduction follow `triton_decode`.
"""

from __future__ import annotations

import functools
import warnings

import torch

from mxmix.runtime import tiles

try:  # Gluon ships with Triton >= 3.5; without it the Triton kernels serve every M
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

    from mxmix.runtime.kernels.triton_decode import e4m3_prmt_ptx

    AVAILABLE = True
except Exception:  # pragma: no cover - depends on the installed Triton
    AVAILABLE = False

def disable(reason: BaseException) -> None:
    """Stop using these kernels in this process (say why once); the Triton kernels serve every call."""
    global AVAILABLE
    if AVAILABLE:
        warnings.warn(f"mxmix: the Gluon decode kernel failed here ({type(reason).__name__}: "
                      f"{str(reason).splitlines()[0][:200] if str(reason) else ''}); using the Triton kernels",
                      RuntimeWarning, stacklevel=3)
    AVAILABLE = False


_TILE_N = gl.constexpr(tiles.TILE_N) if AVAILABLE else tiles.TILE_N  # rows per tile of the tiled layout

# scale bytes for which folding the block scale into the bf16 decode is exact (module docstring)
FOLD_MIN_SCALE = 3
FOLD_MAX_SCALE = 134


def fold_exact(scale: torch.Tensor) -> bool:
    """Whether every scale byte allows the folded decode; computed once per tensor (one reduction).

    The answer is kept on the tensor with its version counter, so an in-place edit is re-checked.
    Inside a CUDA-graph capture an unchecked tensor cannot be reduced (that would synchronise), so
    the answer is False there: callers then take the Triton kernel, which is exact for every scale.
    """
    try:
        version = scale._version
    except RuntimeError:  # inference tensors keep no version counter and cannot be edited in place
        version = -1
    cached = getattr(scale, "_mxmix_fold_exact", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    if scale.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    ok = bool(scale.numel() == 0 or ((scale >= FOLD_MIN_SCALE) & (scale <= FOLD_MAX_SCALE)).all())
    scale._mxmix_fold_exact = (version, ok)
    return ok


if AVAILABLE:
    # One 32-bit word = 4 E4M3 bytes -> 4 bf16 ($0..$3). prmt/shl/and place the E4M3 bits in a bf16
    # (value e4m3 * 2^-120, exact); the packed multiply by 2^(s-7) ($5, the block's multiplier) then gives
    # e4m3 * 2^(s-127) exactly. Words, not bytes, cross loop iterations (prefetch) without repacking.
    _WORD_ASM = gl.constexpr("""{
.reg .b32 lo, hi, m2, z;
""" + e4m3_prmt_ptx("$4") + """mov.b32 m2, {$5, $5};
mov.b32 z, 0x80008000;
fma.rn.bf16x2 lo, lo, m2, z;
fma.rn.bf16x2 hi, hi, m2, z;
mov.b32 {$0, $1}, lo;
mov.b32 {$2, $3}, hi;
}""")

    @gluon.jit
    def _program_origin(x_ptr, w_ptr, N, K, k_per_split, BLOCK_N: gl.constexpr, W_SHIFT: gl.constexpr = 2):
        """This program's rows and K range: 64-bit bases of its weight elements (2^W_SHIFT bytes each: words
        here, byte pairs in `gluon_wgmma`) and x columns (the loops add 32-bit offsets), weight elements per
        row, the last valid row relative to n0 (rows past N re-read row N - 1)."""
        pid_n = gl.program_id(0)
        pid_k = gl.program_id(1)
        KW = K >> W_SHIFT
        n0 = pid_n * BLOCK_N
        k_begin = pid_k * k_per_split
        k_len = gl.minimum(k_per_split, K - k_begin)
        w_blk = w_ptr + n0.to(gl.int64) * KW + (k_begin >> W_SHIFT)
        return pid_n, pid_k, n0, N - 1 - n0, k_len, KW, w_blk, x_ptr + k_begin

    @gluon.jit
    def _tile_mma(w, sb, xb, acc, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, A_L: gl.constexpr,
                  W_L: gl.constexpr, L3: gl.constexpr):
        """acc += dequant(w words [BN, BK/4], scale bytes sb [BN, BK/32]) @ xb [BK, BM]."""
        KB: gl.constexpr = BLOCK_K // 32
        S_L: gl.constexpr = gl.SliceLayout(2, L3)
        # 2^(s-7) as bf16 bits (exponent field s + 120), broadcast over the 8 words of each block
        mult = ((gl.convert_layout(sb, S_L, assert_trivial=True).to(gl.int16) + 120) << 7).to(gl.bfloat16,
                                                                                            bitcast=True)
        mult3 = gl.broadcast(gl.expand_dims(mult, 2), gl.full([BLOCK_N, KB, 8], 0, gl.bfloat16, layout=L3))[0]
        multw = gl.convert_layout(gl.reshape(mult3, [BLOCK_N, BLOCK_K // 4]), W_L, assert_trivial=True)
        b0, b1, b2, b3 = gl.inline_asm_elementwise(_WORD_ASM, "=h,=h,=h,=h,r,h", [w, multw],
                                                   dtype=(gl.bfloat16, gl.bfloat16, gl.bfloat16, gl.bfloat16),
                                                   is_pure=True, pack=1)
        # bytes 0..3 of each word are K offsets 0..3: join so that they become the fastest registers
        a = gl.reshape(gl.join(gl.join(b0, b2), gl.join(b1, b3)), [BLOCK_N, BLOCK_K])
        return mma_v2(gl.convert_layout(a, A_L, assert_trivial=True), xb, acc)

    @gluon.jit
    def _swab_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
                     M, N, K, KS, stride_xm, stride_om, k_per_split, kb_per_split, split,
                     HAS_BIAS: gl.constexpr, SPLIT: gl.constexpr, PREFETCH: gl.constexpr,
                     BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_M: gl.constexpr,
                     MMA: gl.constexpr, A_L: gl.constexpr, B_L: gl.constexpr, W_L: gl.constexpr,
                     L3: gl.constexpr, S_LD: gl.constexpr):
        KB: gl.constexpr = BLOCK_K // 32
        pid_n, pid_k, n0, last_row, k_len, KW, w_blk, x_blk = _program_origin(x_ptr, w_ptr, N, K, k_per_split,
                                                                               BLOCK_N)
        s_blk = s_ptr + n0.to(gl.int64) * KS + pid_k * kb_per_split
        r_w = gl.minimum(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, W_L)), last_row)
        w_offs = (gl.expand_dims(r_w * KW, 1)
                  + gl.expand_dims(gl.arange(0, BLOCK_K // 4, layout=gl.SliceLayout(0, W_L)), 0))
        r_s = gl.minimum(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, S_LD)), last_row)
        s_offs = gl.expand_dims(r_s * KS, 1) + gl.expand_dims(gl.arange(0, KB, layout=gl.SliceLayout(0, S_LD)), 0)
        tok = gl.minimum(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, B_L)), M - 1)
        x_offs = (gl.expand_dims(tok * stride_xm, 0)
                  + gl.expand_dims(gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, B_L)), 1))
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=MMA)
        steps = k_len // BLOCK_K
        if PREFETCH:  # registers hold the next tile's loads while this one is decoded
            w, sb, xb = _load_tile(w_blk, s_blk, x_blk, w_offs, s_offs, x_offs, 0, BLOCK_K)
            for i in range(0, steps):
                # the last step re-reads its own tile (unused)
                w_n, sb_n, xb_n = _load_tile(w_blk, s_blk, x_blk, w_offs, s_offs, x_offs,
                                             gl.minimum(i + 1, steps - 1), BLOCK_K)
                acc = _tile_mma(w, sb, xb, acc, BLOCK_N, BLOCK_K, A_L, W_L, L3)
                w, sb, xb = w_n, sb_n, xb_n
        else:
            for i in range(0, steps):
                w, sb, xb = _load_tile(w_blk, s_blk, x_blk, w_offs, s_offs, x_offs, i, BLOCK_K)
                acc = _tile_mma(w, sb, xb, acc, BLOCK_N, BLOCK_K, A_L, W_L, L3)
        _store_tile(acc, b_ptr, out_ptr, ws_ptr, cnt_ptr, n0, pid_n, pid_k, M, N, stride_om, split,
                    HAS_BIAS, SPLIT, BLOCK_N, BLOCK_M, MMA)

    @gluon.jit
    def _swab_async_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
                           M, N, K, KS, stride_xm, stride_om, k_per_split, kb_per_split, split,
                           HAS_BIAS: gl.constexpr, SPLIT: gl.constexpr, STAGES: gl.constexpr,
                           BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_M: gl.constexpr,
                           MMA: gl.constexpr, A_L: gl.constexpr, B_L: gl.constexpr, W_L: gl.constexpr,
                           L3: gl.constexpr, S_LD: gl.constexpr, CP_W: gl.constexpr, CP_S: gl.constexpr,
                           CP_X: gl.constexpr, SH_W: gl.constexpr, SH_S: gl.constexpr, SH_X: gl.constexpr):
        """The same computation with the tiles staged through a STAGES-deep shared-memory ring filled by
        cp.async: the bytes in flight no longer live in registers, so more warps fit on an SM."""
        KB: gl.constexpr = BLOCK_K // 32
        pid_n, pid_k, n0, last_row, k_len, KW, w_blk, x_blk = _program_origin(x_ptr, w_ptr, N, K, k_per_split,
                                                                               BLOCK_N)
        steps = k_len // BLOCK_K
        # K splits are whole K steps, so each row's scales start 4-byte aligned (cp.async copies >= 4 bytes)
        s_blk = s_ptr + n0.to(gl.int64) * KS + gl.multiple_of(pid_k * kb_per_split, 4)
        w_offs, s_offs, x_offs = _ring_offsets(last_row, KW, KS, M, stride_xm, BLOCK_N, BLOCK_K // 4, KB, BLOCK_K,
                                               BLOCK_M, CP_W, CP_S, CP_X)
        sm_w = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, BLOCK_K // 4], SH_W)
        sm_s = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, KB], SH_S)
        sm_x = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, BLOCK_K], SH_X)
        for p in gl.static_range(STAGES - 1):
            _issue_tile(sm_w.index(p), sm_s.index(p), sm_x.index(p), w_blk, s_blk, x_blk, w_offs, s_offs, x_offs,
                        p, steps, BLOCK_K // 4, BLOCK_K)
            async_copy.commit_group()
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=MMA)
        for i in range(0, steps):
            async_copy.wait_group(STAGES - 2)  # tile i has landed (this thread's copies)...
            gl.thread_barrier()  # ...and everyone's; everyone is also done reading tile i - 1
            t = i + STAGES - 1
            nxt = t % STAGES
            _issue_tile(sm_w.index(nxt), sm_s.index(nxt), sm_x.index(nxt), w_blk, s_blk, x_blk, w_offs, s_offs,
                        x_offs, t, steps, BLOCK_K // 4, BLOCK_K)
            async_copy.commit_group()
            cur = i % STAGES
            w = sm_w.index(cur).load(W_L)
            sb = sm_s.index(cur).load(S_LD)
            xb = sm_x.index(cur).permute((1, 0)).load(B_L)
            acc = _tile_mma(w, sb, xb, acc, BLOCK_N, BLOCK_K, A_L, W_L, L3)
        async_copy.wait_group(0)
        _store_tile(acc, b_ptr, out_ptr, ws_ptr, cnt_ptr, n0, pid_n, pid_k, M, N, stride_om, split,
                    HAS_BIAS, SPLIT, BLOCK_N, BLOCK_M, MMA)

    @gluon.jit
    def _ring_offsets(last_row, w_row, KS, M, stride_xm, BLOCK_N: gl.constexpr, W_COLS: gl.constexpr,
                      KB: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_M: gl.constexpr, CP_W: gl.constexpr,
                      CP_S: gl.constexpr, CP_X: gl.constexpr):
        """Offsets of one K tile's copies from the program's bases (shared by both ring kernels): weight
        elements (``W_COLS`` per row and tile, ``w_row`` per row), scale bytes, x columns. Weight rows past N
        re-read the last one. Rows of x past M get negative offsets, which `_issue_tile` masks off: copying
        them as duplicates of row M - 1 made M = 1 up to 18 % slower than M = 8 (every program fetching the
        same few x lines eight times over); their results are never stored."""
        r_w = gl.minimum(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, CP_W)), last_row)
        w_offs = (gl.expand_dims(r_w * w_row, 1)
                  + gl.expand_dims(gl.arange(0, W_COLS, layout=gl.SliceLayout(0, CP_W)), 0))
        r_s = gl.minimum(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, CP_S)), last_row)
        s_offs = (gl.expand_dims(gl.multiple_of(r_s * KS, 4), 1)  # K % 128 == 0: rows of scales 4-byte aligned
                  + gl.expand_dims(gl.arange(0, KB, layout=gl.SliceLayout(0, CP_S)), 0))
        tok = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, CP_X))
        x_offs = (gl.expand_dims(gl.where(tok < M, tok * stride_xm, -BLOCK_K), 1)
                  + gl.expand_dims(gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, CP_X)), 0))
        return w_offs, s_offs, x_offs

    @gluon.jit
    def _tile_ptrs(w_blk, s_blk, x_blk, w_offs, s_offs, x_offs, t, W_COLS: gl.constexpr, BLOCK_K: gl.constexpr,
                   SUB: gl.constexpr = 0, kt0=0):
        """Pointers of K step ``t``: weight elements (W_COLS per step and row), scale bytes, x columns.

        ``SUB`` = 0: row-major weight and scales, ``w_blk``/``s_blk`` at the program's K range. ``SUB`` >= 1:
        the tiled layout (`mxmix.runtime.tiles`) with SUB steps per tile, the bases at the row block's first
        tile and ``kt0`` the program's first step counted from K = 0."""
        KB: gl.constexpr = BLOCK_K // 32
        if SUB:
            kt = kt0 + t
            w_step = (kt // SUB) * (_TILE_N * W_COLS * SUB) + (kt % SUB) * W_COLS
            s_step = (kt // SUB) * (_TILE_N * KB * SUB) + (kt % SUB) * KB
        else:
            w_step = t * W_COLS
            s_step = t * KB
        return w_blk + w_step + w_offs, s_blk + s_step + s_offs, x_blk + t * BLOCK_K + x_offs

    @gluon.jit
    def _load_tile(w_blk, s_blk, x_blk, w_offs, s_offs, x_offs, t, BLOCK_K: gl.constexpr):
        w_ptrs, s_ptrs, x_ptrs = _tile_ptrs(w_blk, s_blk, x_blk, w_offs, s_offs, x_offs, t, BLOCK_K // 4, BLOCK_K)
        return gl.load(w_ptrs), gl.load(s_ptrs), gl.load(x_ptrs)

    @gluon.jit
    def _issue_tile(dw, ds, dx, w_blk, s_blk, x_blk, w_offs, s_offs, x_offs, t, steps, W_COLS: gl.constexpr,
                    BLOCK_K: gl.constexpr, SUB: gl.constexpr = 0, kt0=0):
        """cp.async of K step ``t`` (weight elements, scale bytes, x rows; ``SUB``, ``kt0``: `_tile_ptrs`);
        nothing for t >= steps, nor for the x rows past M (negative offsets)."""
        ok = t < steps
        w_ptrs, s_ptrs, x_ptrs = _tile_ptrs(w_blk, s_blk, x_blk, w_offs, s_offs, x_offs, t, W_COLS, BLOCK_K,
                                            SUB, kt0)
        async_copy.async_copy_global_to_shared(dw, w_ptrs, mask=(w_offs >= 0) & ok)
        async_copy.async_copy_global_to_shared(ds, s_ptrs, mask=(s_offs >= 0) & ok)
        async_copy.async_copy_global_to_shared(dx, x_ptrs, mask=(x_offs >= 0) & ok)

    @gluon.jit
    def _store_tile(acc, b_ptr, out_ptr, ws_ptr, cnt_ptr, n0, pid_n, pid_k, M, N, stride_om, split,
                    HAS_BIAS: gl.constexpr, SPLIT: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
                    MMA: gl.constexpr):
        """out^T tile (+ bias); with SPLIT, the partial is parked and the last program of the row tile
        (an acq_rel counter) sums all partials in a fixed order, then resets the counter."""
        rows_o = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))
        tok_o = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, MMA))
        mask = gl.expand_dims(tok_o < M, 0) & gl.expand_dims(rows_o < N, 1)
        if SPLIT:
            tile = gl.expand_dims(tok_o * N, 0) + gl.expand_dims(rows_o, 1)
            gl.store(ws_ptr + pid_k * M * N + tile, acc, mask=mask)
            gl.thread_barrier()
            count = gl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if count == split - 1:
                total = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=MMA)
                for s in range(0, split):
                    total += gl.load(ws_ptr + s * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg")
                if HAS_BIAS:
                    bias = gl.load(b_ptr + rows_o, mask=rows_o < N, other=0.0).to(gl.float32)
                    total = total + gl.expand_dims(bias, 1)
                o_ptrs = out_ptr + gl.expand_dims(tok_o * stride_om, 0) + gl.expand_dims(rows_o, 1)
                gl.store(o_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)
                gl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
        else:
            if HAS_BIAS:
                bias = gl.load(b_ptr + rows_o, mask=rows_o < N, other=0.0).to(gl.float32)
                acc = acc + gl.expand_dims(bias, 1)
            o_ptrs = out_ptr + gl.expand_dims(tok_o * stride_om, 0) + gl.expand_dims(rows_o, 1)
            gl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@functools.cache
def layouts(block_n: int, block_k: int, num_warps: int = 4) -> tuple:
    """The kernel's register layouts: the ``mma`` accumulator, operands A (weight) and B (x^T), the
    weight tile as 32-bit words [BN, BK/4], its [BN, BK/32, 8] view (to broadcast one scale over a
    block) and the scale tile's load layout [BN, BK/32].

    Operand A is ``DotOperandLayout(0, mma, k_width=8)``: 8 consecutive K per thread (registers), K by
    8 and 16 and rows 1, 2, 4 across lanes, row + 8 and the K blocks in registers, rows by 16 across
    warps. The word layout is that one with 4 bytes per word; the kernel asserts at compile time that
    the views agree (``assert_trivial``: no data moves).
    """
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    a_l = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8)
    b_l = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=8)
    rows = [[r, 0] for r in (16 * num_warps << i for i in range(12)) if r < block_n]
    kbits = (block_k // 32).bit_length() - 1
    warp = [[16 << i, 0] for i in range(num_warps.bit_length() - 1)]
    w_l = gl.DistributedLinearLayout(reg_bases=[[0, 1], [8, 0], *[[0, 8 << b] for b in range(kbits)], *rows],
                                     lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]], warp_bases=warp,
                                     block_bases=[], shape=[block_n, block_k // 4])
    l3 = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [8, 0, 0], *[[0, 1 << b, 0] for b in range(kbits)], *[[r, 0, 0] for r, _ in rows]],
        lane_bases=[[0, 0, 2], [0, 0, 4], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[r, 0, 0] for r, _ in warp], block_bases=[], shape=[block_n, block_k // 32, 8])
    # the scale tile with the K blocks fastest in registers: one vector load per row
    s_ld = gl.DistributedLinearLayout(reg_bases=[*[[0, 1 << b] for b in range(kbits)], [8, 0], *rows],
                                      lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
                                      warp_bases=warp, block_bases=[], shape=[block_n, block_k // 32])
    return mma, a_l, b_l, w_l, l3, s_ld


@functools.cache
def async_layouts(block_n: int, block_k: int, block_m: int, num_warps: int = 4) -> tuple:
    """Copy layouts (16-byte cp.async per thread where the tile allows) and shared layouts of the ring.

    The weight and x rings are XOR-swizzled in 16-byte units so that the fragment reads (8 or 16 bytes
    per thread, 8 rows per warp) use the minimum number of shared-memory wavefronts.
    """
    tpw_w = min(32, block_k // 16)
    cp_w = gl.BlockedLayout([1, 4], [32 // tpw_w, tpw_w], [num_warps, 1], [1, 0])
    cp_s = gl.BlockedLayout([1, block_k // 32], [32, 1], [num_warps, 1], [1, 0])
    tpw_x = min(32, block_k // 8)
    cp_x = gl.BlockedLayout([1, 8], [32 // tpw_x, tpw_x], [num_warps, 1], [1, 0])
    sh_w = gl.SwizzledSharedLayout(vec=4, per_phase=1, max_phase=8, order=[1, 0])
    sh_s = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    sh_x = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
    return cp_w, cp_s, cp_x, sh_w, sh_s, sh_x


MAX_M = 64


def supports(m: int, k: int, block_k: int) -> bool:
    """Shapes this kernel serves: M <= 64 (x^T up to 8 mma columns) and K a multiple of the K step
    (so no load is masked)."""
    return AVAILABLE and 1 <= m <= MAX_M and k % block_k == 0


def _launch_args(x, weight, scale, bias, out, ws, cnt, *, block_n, block_k, split, k_per_split, num_warps,
                 prefetch, ring=0) -> tuple[tuple, dict]:
    m, k = x.shape
    block_m = max(8, triton.next_power_of_2(m))
    mma, a_l, b_l, w_l, l3, s_ld = layouts(block_n, block_k, num_warps)
    has_bias = bias is not None
    args = (x, weight.view(torch.int32), scale, bias if has_bias else out, out, ws, cnt,
            m, weight.shape[0], k, k // 32, x.stride(0), out.stride(0), k_per_split, k_per_split // 32, split)
    meta = dict(HAS_BIAS=has_bias, SPLIT=split > 1, BLOCK_N=block_n, BLOCK_K=block_k,
                BLOCK_M=block_m, MMA=mma, A_L=a_l, B_L=b_l, W_L=w_l, L3=l3, S_LD=s_ld, num_warps=num_warps)
    if ring:
        cp_w, cp_s, cp_x, sh_w, sh_s, sh_x = async_layouts(block_n, block_k, block_m, num_warps)
        meta.update(STAGES=ring, CP_W=cp_w, CP_S=cp_s, CP_X=cp_x, SH_W=sh_w, SH_S=sh_s, SH_X=sh_x)
    else:
        meta.update(PREFETCH=prefetch)
    return args, meta


def launch_swab(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                out: torch.Tensor, ws: torch.Tensor, cnt: torch.Tensor, *, block_n: int, block_k: int,
                split: int, k_per_split: int, num_warps: int = 4, prefetch: bool = False, ring: int = 0) -> None:
    """Launch over (N tiles, split); the caller (`triton_decode.mxfp8_decode_matmul`) owns the buffers.

    ``prefetch``: load the next tile into registers while this one is decoded; ``ring`` (>= 2):
    instead stage the tiles through a shared-memory ring of that depth (`_swab_async_kernel`).
    """
    args, meta = _launch_args(x, weight, scale, bias, out, ws, cnt, block_n=block_n, block_k=block_k, split=split,
                              k_per_split=k_per_split, num_warps=num_warps, prefetch=prefetch, ring=ring)
    kernel = _swab_async_kernel if ring else _swab_kernel
    kernel[(triton.cdiv(weight.shape[0], block_n), split)](*args, **meta)
