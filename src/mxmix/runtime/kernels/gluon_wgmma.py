"""MXFP8 matmul with the dequantized weight as the register A operand of Hopper's ``wgmma`` (Gluon).

Why a third kernel: the ``mma.sync`` kernel of `gluon_decode` makes every warp read its own copy of the
x^T fragments from shared memory, so its shared-memory traffic per weight byte grows with M (Nsight
Compute on an H200 at M = 16: the L1/shared pipe 79 % busy, DRAM 42 %), and its ``mma.sync`` count grows
with M too. ``wgmma`` reads operand B (x^T) from shared memory once per warpgroup, asynchronously to
the issuing warps, for up to 256 tokens at a time.

Layout: out^T [N, M] = W [N, K] @ x^T. Each K tile is staged by ``cp.async`` in a shared-memory ring
(the weight bytes, their scale bytes, the x rows in the ``wgmma`` B layout). A warpgroup's A fragment
must hold K in its natural order (``k_width=2``: pairs of adjacent K for rows g and g + 8), so each
thread reads its weight bytes two at a time and decodes four bytes (two rows) per step with the byte
permute of `triton_decode.e4m3_prmt_ptx`; the packed multiply by 2^(s-7) applies each row's block
scale (exact for scale bytes 3..134, like `gluon_decode`). Split-K and the deterministic in-launch
reduction are `gluon_decode`'s. The weight and scales may also be in the tiled layout of
`mxmix.runtime.tiles` (``SUB`` > 0: K steps per tile), where a K step's copies read contiguous runs.
"""

from __future__ import annotations

import functools

import torch

from mxmix.runtime import tiles

try:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma

    from mxmix.runtime.kernels import gluon_decode as gd
    from mxmix.runtime.kernels.triton_decode import e4m3_prmt_ptx

    AVAILABLE = gd.AVAILABLE
except Exception:  # pragma: no cover - depends on the installed Triton
    AVAILABLE = False


if AVAILABLE:
    # Two E4M3 bytes of one row ($2, K pair 2p, 2p+1) -> two bf16 ($0, $1) times the row's block multiplier
    # 2^(s-7) as a bf16x2 pair ($3: one register per block, broadcast over it). Reading the pair as one
    # 16-bit value keeps the loaded register as is: no byte is moved before the permute.
    _PAIR_ASM = gl.constexpr("""{
.reg .b32 word, lo, hi, z;
cvt.u32.u16 word, $2;
""" + e4m3_prmt_ptx("word") + """mov.b32 z, 0x80008000;
fma.rn.bf16x2 lo, lo, $3, z;
mov.b32 {$0, $1}, lo;
}""")

    @gluon.jit
    def _wgmma_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
                      M, N, K, KS, stride_xm, stride_om, k_per_split, kb_per_split, split,
                      HAS_BIAS: gl.constexpr, SPLIT: gl.constexpr, STAGES: gl.constexpr,
                      BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_M: gl.constexpr,
                      MMA: gl.constexpr, A_L: gl.constexpr, W_P: gl.constexpr, L3: gl.constexpr,
                      CP_W: gl.constexpr, CP_S: gl.constexpr, CP_X: gl.constexpr,
                      SH_W: gl.constexpr, SH_S: gl.constexpr, SH_X: gl.constexpr, SUB: gl.constexpr):
        KB: gl.constexpr = BLOCK_K // 32
        pid_n, pid_k, n0, last_row, k_len, KP, w_blk, x_blk = gd._program_origin(x_ptr, w_ptr, N, K, k_per_split,
                                                                                  BLOCK_N, 1)
        steps = k_len // BLOCK_K
        s_blk = s_ptr + n0.to(gl.int64) * KS + gl.multiple_of(pid_k * kb_per_split, 4)
        w_offs, s_offs, x_offs = gd._ring_offsets(last_row, KP, KS, M, stride_xm, BLOCK_N, BLOCK_K // 2, KB, BLOCK_K,
                                                  BLOCK_M, CP_W, CP_S, CP_X)
        kt0 = pid_k * (k_per_split // BLOCK_K)
        if SUB:  # tiled weight (`mxmix.runtime.tiles`): bases at the row block's first tile, rows within tiles
            w_blk = w_ptr + n0.to(gl.int64) * KP
            s_blk = s_ptr + n0.to(gl.int64) * KS
            w_offs, s_offs = _tiled_offsets(last_row, KP, KS, BLOCK_N, BLOCK_K, SUB, CP_W, CP_S)
        sm_w = gl.allocate_shared_memory(gl.int16, [STAGES, BLOCK_N, BLOCK_K // 2], SH_W)
        sm_s = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, KB], SH_S)
        sm_x = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, BLOCK_K], SH_X)
        for p in gl.static_range(STAGES - 1):
            gd._issue_tile(sm_w.index(p), sm_s.index(p), sm_x.index(p), w_blk, s_blk, x_blk, w_offs, s_offs, x_offs,
                           p, steps, BLOCK_K // 2, BLOCK_K, SUB, kt0)
            async_copy.commit_group()
        S_L: gl.constexpr = gl.SliceLayout(2, L3)
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=MMA)
        for i in range(0, steps):
            async_copy.wait_group(STAGES - 2)  # tile i has landed (this thread's copies)...
            fence_async_shared()  # ...is visible to wgmma's reads...
            gl.thread_barrier()  # ...and everyone's; everyone is also done with tile i - 1
            t = i + STAGES - 1
            nxt = t % STAGES
            gd._issue_tile(sm_w.index(nxt), sm_s.index(nxt), sm_x.index(nxt), w_blk, s_blk, x_blk, w_offs, s_offs,
                           x_offs, t, steps, BLOCK_K // 2, BLOCK_K, SUB, kt0)
            async_copy.commit_group()
            cur = i % STAGES
            w = sm_w.index(cur).load(W_P)
            sb = sm_s.index(cur).load(S_L)
            # 2^(s-7) as a bf16x2 pair per (row, block), broadcast over the block's 16 pairs without moving data
            mult = ((sb.to(gl.int32) + 120) << 7) * 0x10001
            mult3 = gl.broadcast(gl.expand_dims(mult, 2), gl.full([BLOCK_N, KB, 16], 0, gl.int32, layout=L3))[0]
            multp = gl.convert_layout(gl.reshape(mult3, [BLOCK_N, BLOCK_K // 2]), W_P, assert_trivial=True)
            b0, b1 = gl.inline_asm_elementwise(_PAIR_ASM, "=h,=h,h,r", [w, multp], dtype=(gl.bfloat16, gl.bfloat16),
                                               is_pure=True, pack=1)
            a = gl.reshape(gl.join(b0, b1), [BLOCK_N, BLOCK_K])
            acc = warpgroup_mma(gl.convert_layout(a, A_L, assert_trivial=True), sm_x.index(cur).permute((1, 0)), acc)
        async_copy.wait_group(0)
        gd._store_tile(acc, b_ptr, out_ptr, ws_ptr, cnt_ptr, n0, pid_n, pid_k, M, N, stride_om, split,
                       HAS_BIAS, SPLIT, BLOCK_N, BLOCK_M, MMA)


if AVAILABLE:
    @gluon.jit
    def _tiled_offsets(last_row, KP, KS, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SUB: gl.constexpr,
                       CP_W: gl.constexpr, CP_S: gl.constexpr):
        """Offsets of a K step's weight pairs and scale bytes from the row block's first tile, in the tiled
        layout (64-row tiles of SUB steps; rows past N re-read the last one, as row-major)."""
        TILE_N: gl.constexpr = gd._TILE_N
        r_w = gl.minimum(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, CP_W)), last_row)
        w_rows = (r_w // TILE_N) * (TILE_N * KP) + (r_w % TILE_N) * (BLOCK_K // 2 * SUB)
        w_offs = gl.expand_dims(w_rows, 1) + gl.expand_dims(gl.arange(0, BLOCK_K // 2,
                                                                      layout=gl.SliceLayout(0, CP_W)), 0)
        r_s = gl.minimum(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, CP_S)), last_row)
        s_rows = (r_s // TILE_N) * (TILE_N * KS) + (r_s % TILE_N) * (BLOCK_K // 32 * SUB)
        s_offs = (gl.expand_dims(gl.multiple_of(s_rows, 4), 1)
                  + gl.expand_dims(gl.arange(0, BLOCK_K // 32, layout=gl.SliceLayout(0, CP_S)), 0))
        return w_offs, s_offs


def _pair_basis(bit: int, three_d: bool) -> list[int]:
    """Basis vector of K-pair bit ``bit`` in the [BN, BK/2] pair view or the [BN, BK/32, 16] block view."""
    if not three_d:
        return [0, 1 << bit]
    return [0, 0, 1 << bit] if bit < 4 else [0, 1 << (bit - 4), 0]


@functools.cache
def layouts(block_n: int, block_k: int, block_m: int, num_warps: int = 4) -> tuple:
    """Register layouts: the ``wgmma`` accumulator, operand A, the weight as K pairs (int16) [BN, BK/2] at
    A's positions, and its [BN, BK/32, 16] view that broadcasts one scale per block.

    A (``k_width=2``) per warp and 16 rows: lane = 4 g + c holds the K pair 2c, 2c+1 of rows g and g + 8,
    then of K + 8, then K by 16; warps take 16 rows each, then rows repeat. The pair view is A without
    its innermost register bit (the pair); the kernel asserts at compile time that they agree.
    """
    mma = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, block_m, 16])
    a_l = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    pbits = (block_k // 2).bit_length() - 1
    rows = [r for r in (16 * num_warps << i for i in range(12)) if r < block_n]
    warp = [16 << i for i in range(num_warps.bit_length() - 1)]

    def linear(three_d: bool):
        row = (lambda r: [r, 0, 0]) if three_d else (lambda r: [r, 0])
        k = functools.partial(_pair_basis, three_d=three_d)
        return gl.DistributedLinearLayout(
            reg_bases=[row(8), *[k(b) for b in range(2, pbits)], *[row(r) for r in rows]],
            lane_bases=[k(0), k(1), row(1), row(2), row(4)], warp_bases=[row(r) for r in warp], block_bases=[],
            shape=[block_n, block_k // 32, 16] if three_d else [block_n, block_k // 2])

    return mma, a_l, linear(False), linear(True)


@functools.cache
def copy_layouts(block_n: int, block_k: int, block_m: int, num_warps: int = 4) -> tuple:
    """16-byte cp.async layouts, and the ring's shared layouts: the weight (as int16 pairs) XOR-swizzled in
    16-byte units (a warp's 2-byte fragment reads hit 8 rows at once), x in the ``wgmma`` B layout."""
    tpw_w = min(32, block_k // 16)
    cp_w = gl.BlockedLayout([1, 8], [32 // tpw_w, tpw_w], [num_warps, 1], [1, 0])
    cp_s = gl.BlockedLayout([1, block_k // 32], [32, 1], [num_warps, 1], [1, 0])
    tpw_x = min(32, block_k // 8)
    cp_x = gl.BlockedLayout([1, 8], [32 // tpw_x, tpw_x], [num_warps, 1], [1, 0])
    per_phase = max(1, 128 // block_k)
    sh_w = gl.SwizzledSharedLayout(vec=8, per_phase=per_phase, max_phase=min(8, block_k // 16), order=[1, 0])
    sh_s = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    sh_x = gl.NVMMASharedLayout.get_default_for([block_m, block_k], gl.bfloat16)
    return cp_w, cp_s, cp_x, sh_w, sh_s, sh_x


MAX_M = 256
MIN_BLOCK_K = 128  # each row's scales for one K step must be >= 4 bytes (the smallest cp.async)


def supports(m: int, k: int, block_k: int, device: torch.device | None = None) -> bool:
    """Shapes and GPUs this kernel serves: Hopper (``wgmma`` is sm_90 only), M <= 256, K a multiple of the
    K step (no load is masked), K steps of at least 128."""
    if not (AVAILABLE and gd.AVAILABLE) or not (1 <= m <= MAX_M and block_k >= MIN_BLOCK_K and k % block_k == 0):
        return False
    if not torch.cuda.is_available():
        return False
    return _is_hopper(device.index if device is not None and device.index is not None else torch.cuda.current_device())


def supports_tiled(block_n: int, block_k: int) -> bool:
    """Launch configurations that can read the tiled layout: K steps that divide a tile, row tiles of
    whole tiles (K splits are whole steps by construction)."""
    return block_k <= tiles.TILE_K and tiles.TILE_K % block_k == 0 and block_n % tiles.TILE_N == 0


@functools.cache
def _is_hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] == 9


SMEM_BYTES = 232448  # Hopper: shared memory one block may use


def fits(block_n: int, block_k: int, block_m: int, stages: int) -> bool:
    """Whether the ring (weight, scales, x per stage) fits in one block's shared memory."""
    return stages * (block_n * block_k * 33 // 32 + block_m * block_k * 2) + 1024 <= SMEM_BYTES


def block_m_for(m: int) -> int:
    """Tokens per ``wgmma`` (its N): a multiple of 8 (a power of two here), at most 256."""
    return max(8, triton.next_power_of_2(m))


def kernel_meta(m: int, *, block_n: int, block_k: int, split: int, num_warps: int, stages: int,
                has_bias: bool, tiled: bool = False) -> dict:
    """The kernel's compile-time arguments for M rows (also used to compile it without a GPU, for SASS);
    ``tiled``: the weight and scales are in the tiled layout (`mxmix.runtime.tiles`)."""
    block_m = block_m_for(m)
    mma, a_l, w_p, l3 = layouts(block_n, block_k, block_m, num_warps)
    cp_w, cp_s, cp_x, sh_w, sh_s, sh_x = copy_layouts(block_n, block_k, block_m, num_warps)
    return dict(HAS_BIAS=has_bias, SPLIT=split > 1, STAGES=stages, BLOCK_N=block_n, BLOCK_K=block_k,
                BLOCK_M=block_m, MMA=mma, A_L=a_l, W_P=w_p, L3=l3, CP_W=cp_w, CP_S=cp_s, CP_X=cp_x,
                SH_W=sh_w, SH_S=sh_s, SH_X=sh_x, SUB=tiles.TILE_K // block_k if tiled else 0)


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
           out: torch.Tensor, ws: torch.Tensor, cnt: torch.Tensor, *, block_n: int, block_k: int, split: int,
           k_per_split: int, num_warps: int = 4, stages: int = 3, tiled: bool = False) -> None:
    """Launch over (N tiles, split); the caller (`triton_decode.mxfp8_decode_matmul`) owns the buffers.
    ``tiled``: weight and scale are in the tiled layout (`mxmix.runtime.tiles`; `supports_tiled`)."""
    m, k = x.shape
    meta = kernel_meta(m, block_n=block_n, block_k=block_k, split=split, num_warps=num_warps, stages=stages,
                       has_bias=bias is not None, tiled=tiled)
    _wgmma_kernel[(triton.cdiv(weight.shape[0], block_n), split)](
        x, weight.view(torch.int16), scale, out if bias is None else bias, out, ws, cnt,
        m, weight.shape[0], k, k // 32, x.stride(0), out.stride(0), k_per_split, k_per_split // 32, split,
        num_warps=num_warps, **meta)
