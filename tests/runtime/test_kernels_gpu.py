"""Triton MXFP8 kernels vs the exact reference (float64 matmul on the codec's dequantized weight).

Every check draws fresh random inputs, covers the special E4M3 values and a wide range of scale bytes
(byte 0 included), and poisons the output (and split-K workspaces) with NaN so that any element a
kernel forgets to write fails the test. Relative errors are printed (run with -s to see them).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

REL_TOL = 1e-2  # bf16 output rounding gives ~2e-3; a wrong block or scale gives O(1)


def _random_mxfp8(n: int, k: int, gen: torch.Generator, device: str = "cuda"):
    """Weights over every finite E4M3 byte (subnormals, ±0, ±448) and scale bytes 0 and 100..140."""
    q = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.int32)
    q = torch.where((q & 0x7F) == 0x7F, q - 1, q).to(torch.uint8)  # no NaN elements
    s = torch.randint(100, 141, (n, k // 32), generator=gen, dtype=torch.int32).to(torch.uint8)
    s[torch.rand(s.shape, generator=gen) < 0.01] = 0   # byte 0 = 2^-127 (near-zero blocks)
    return q.view(torch.float8_e4m3fn).to(device), s.to(device)


def _reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    from mxmix.mx import dequantize

    w = dequantize(q.cpu(), s.cpu(), dtype=torch.float32).to(torch.float64).to(x.device)
    y = x.to(torch.float64) @ w.T
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(y).any(), "NaN in output: an element was not written (or a NaN scale leaked)"
    return float((y.to(torch.float64) - ref).norm() / ref.norm())


def _inputs(m: int, n: int, k: int, seed: int, bias: bool):
    gen = torch.Generator().manual_seed(seed)
    q, s = _random_mxfp8(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    b = torch.randn(n, generator=gen).to(torch.bfloat16).cuda() if bias else None
    return x, q, s, b


DECODE_CASES = [
    # (m, n, k)
    (1, 4096, 4096), (1, 96, 64), (1, 200, 1056), (2, 1000, 2048), (3, 512, 4096),
    (4, 768, 1024), (5, 300, 800), (8, 4096, 1024), (13, 512, 2080), (16, 1024, 4096),
]


@pytest.mark.parametrize("kind", ["fma", "mma"])
@pytest.mark.parametrize("m,n,k", DECODE_CASES)
def test_decode_kernel_matches_reference(kind: str, m: int, n: int, k: int) -> None:
    from mxmix.runtime.kernels import triton_decode as td

    td.POISON_WORKSPACE = True
    try:
        for seed, (block_n, block_k, split) in enumerate([(32, 256, 1), (64, 128, 4), (16, 512, 3)]):
            cfg = td.DecodeConfig(kind, block_n, block_k, split, 4, 3)
            x, q, s, b = _inputs(m, n, k, seed, bias=seed % 2 == 1)
            out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            y = td.mxfp8_decode_matmul(x, q, s, b, config=cfg, out=out)
            assert y.data_ptr() == out.data_ptr()
            err = _rel_err(y, _reference(x, q, s, b))
            print(f"decode {cfg.label()} m={m} n={n} k={k}: rel err {err:.2e}")
            assert err < REL_TOL, (cfg, err)
    finally:
        td.POISON_WORKSPACE = False


CONVERT_COMBOS = [("fma", "int"), ("fma", "prmt"), ("mma", "f32"), ("mma", "fold"), ("mma", "prmt")]  # ("fma"|"mma", "cvt") above


@pytest.mark.parametrize("kind,convert", CONVERT_COMBOS)
@pytest.mark.parametrize("m,n,k", [(1, 200, 1056), (2, 1000, 2048), (5, 300, 800), (13, 512, 2080),
                                   (16, 1024, 4096)])
def test_decode_conversions_match_reference(kind: str, convert: str, m: int, n: int, k: int) -> None:
    """The alternative E4M3 conversions (integer decode, byte permute, packed fp32 route, scale folded in)."""
    from mxmix.runtime.kernels import triton_decode as td

    td.POISON_WORKSPACE = True
    try:
        for seed, (block_n, block_k, split) in enumerate([(32, 256, 1), (64, 128, 3)]):
            cfg = td.DecodeConfig(kind, block_n, block_k, split, 4, 3, convert)
            x, q, s, b = _inputs(m, n, k, 50 + seed, bias=seed == 1)
            out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            y = td.mxfp8_decode_matmul(x, q, s, b, config=cfg, out=out)
            err = _rel_err(y, _reference(x, q, s, b))
            print(f"decode {cfg.label()} m={m} n={n} k={k}: rel err {err:.2e}")
            assert err < REL_TOL, (cfg, err)
    finally:
        td.POISON_WORKSPACE = False


@pytest.mark.parametrize("kind,convert", [("fma", "cvt"), ("mma", "cvt"), *CONVERT_COMBOS])
def test_decode_one_hot_rows_are_bit_exact(kind: str, convert: str) -> None:
    """x = one-hot rows: every output must be the bf16 dequantized weight itself, bit for bit.

    Covers every finite E4M3 byte (subnormals included) with scale bytes 100..160, so a conversion
    that flushes subnormals or rounds differently from the codec fails here even though it would pass
    a relative-error check.
    """
    from mxmix.mx import dequantize
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(23)
    n, k, m = 384, 2048, 16 if kind == "mma" else 2
    byte = torch.arange(n * k, dtype=torch.int32).reshape(n, k) % 256
    byte = byte[:, torch.randperm(k, generator=gen)]
    byte = torch.where((byte & 0x7F) == 0x7F, byte - 1, byte).to(torch.uint8)  # all bytes but NaN
    q = byte.view(torch.float8_e4m3fn)
    s = torch.randint(100, 161, (n, k // 32), generator=gen, dtype=torch.int32).to(torch.uint8)
    want = dequantize(q, s, dtype=torch.bfloat16)
    for split in (1, 4):
        cols = torch.randperm(k, generator=gen)[:m]
        x = torch.zeros(m, k, dtype=torch.bfloat16)
        x[torch.arange(m), cols] = 1.0
        cfg = td.DecodeConfig(kind, 64, 256, split, 4, 3, convert)
        y = td.mxfp8_decode_matmul(x.cuda(), q.cuda(), s.cuda(), config=cfg).cpu()
        expected = want[:, cols].T
        bad = (y != expected).sum().item()  # == on floats: -0.0 equals 0.0 (a sum of +0 and -0)
        assert bad == 0, f"{cfg.label()}: {bad} outputs differ from the dequantized weight"


def test_decode_default_config_and_strided_rows() -> None:
    from mxmix.runtime.kernels import mxfp8_decode_matmul

    x, q, s, b = _inputs(4, 1536, 3072, 7, bias=True)
    wide = torch.randn(4, 4000, device="cuda").to(torch.bfloat16)
    wide[:, :3072] = x
    y = mxfp8_decode_matmul(wide[:, :3072], q, s, b)  # rows with stride 4000
    assert _rel_err(y, _reference(x, q, s, b)) < REL_TOL


@pytest.mark.parametrize("m,n,k", [(17, 512, 1024), (64, 1000, 2048), (130, 384, 1056), (512, 1024, 4096)])
def test_prefill_fused_matches_reference(m: int, n: int, k: int) -> None:
    from mxmix.runtime.kernels import triton_prefill as tp

    for seed, cfg in enumerate([tp.PrefillConfig(), tp.PrefillConfig(64, 64, 128, 8, 4, 4),
                                tp.PrefillConfig(128, 256, 64, 8, 8, 3)]):
        x, q, s, b = _inputs(m, n, k, 100 + seed, bias=seed == 1)
        out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        y = tp.mxfp8_prefill_fused(x, q, s, b, config=cfg, out=out)
        err = _rel_err(y, _reference(x, q, s, b))
        print(f"prefill {cfg.label()} m={m} n={n} k={k}: rel err {err:.2e}")
        assert err < REL_TOL, (cfg, err)


@pytest.mark.parametrize("m,n,k", [(300, 512, 1024), (1024, 768, 2080)])
def test_prefill_cublas_matches_reference(m: int, n: int, k: int) -> None:
    from mxmix.runtime.kernels import triton_prefill as tp

    x, q, s, b = _inputs(m, n, k, 5, bias=True)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    y = tp.mxfp8_prefill_cublas(x, q, s, b, out=out)
    err = _rel_err(y, _reference(x, q, s, b))
    print(f"prefill cublas m={m} n={n} k={k}: rel err {err:.2e}")
    assert err < REL_TOL


@pytest.mark.parametrize("n,k", [(96, 64), (1000, 2080), (4096, 4096)])
def test_gpu_dequantize_is_bit_exact(n: int, k: int) -> None:
    from mxmix.mx import dequantize
    from mxmix.runtime.kernels import dequantize_to

    gen = torch.Generator().manual_seed(n + k)
    q, s = _random_mxfp8(n, k, gen)
    out = torch.full((n, k), float("nan"), device="cuda", dtype=torch.bfloat16)
    got = dequantize_to(q, s, out)
    want = dequantize(q.cpu(), s.cpu(), dtype=torch.bfloat16)
    assert torch.equal(got.cpu().view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("m", [1, 2, 7, 16, 33, 200, 700])
def test_mxfp8_linear_cuda_matches_cpu_path(m: int) -> None:
    from mxmix.runtime import MXFP8Linear

    torch.manual_seed(m)
    lin = torch.nn.Linear(1024, 768, bias=True).to(torch.bfloat16)
    mod = MXFP8Linear.from_linear(lin)
    x = torch.randn(m, 1024).to(torch.bfloat16)
    y_cpu = mod(x)
    y_gpu = mod.cuda()(x.cuda()).cpu()
    err = float((y_gpu.double() - y_cpu.double()).norm() / y_cpu.double().norm())
    print(f"MXFP8Linear m={m}: cuda vs cpu rel err {err:.2e}")
    assert err < REL_TOL


def test_mxfp8_linear_cuda_graph_capture() -> None:
    """The decode path must be capturable (no host syncs, no allocations outside the graph pool)."""
    from mxmix.runtime import MXFP8Linear

    torch.manual_seed(0)
    mod = MXFP8Linear.from_linear(torch.nn.Linear(2048, 4096, bias=False).to(torch.bfloat16)).cuda()
    static_x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        mod(static_x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = mod(static_x)
    for _ in range(3):
        static_x.copy_(torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16))
        graph.replay()
        ref = _reference(static_x, mod.weight, mod.weight_scale, None)
        assert _rel_err(static_y, ref) < REL_TOL


@pytest.mark.parametrize("kind", ["fma", "mma"])
def test_decode_wide_range_activations_and_repeatable_split_k(kind: str) -> None:
    """Activations spanning 2^-40..2^20 (the fp16 path rescales each block) and bit-identical reruns.

    Rerunning the split-K launch checks that the per-tile counters are reset by the kernel itself
    (a stale counter would make the wrong program reduce, or none).
    """
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(11)
    m, n, k = 5, 640, 4096
    q, s = _random_mxfp8(n, k, gen)
    mag = torch.randint(-40, 21, (m, k), generator=gen).to(torch.float32)
    x = (torch.randn(m, k, generator=gen) * torch.exp2(mag)).to(torch.bfloat16).cuda()
    x[2] = 0.0  # an all-zero row
    cfg = td.DecodeConfig(kind, 64, 256, 4, 4, 3)
    y1 = td.mxfp8_decode_matmul(x, q, s, config=cfg).clone()
    y2 = td.mxfp8_decode_matmul(x, q, s, config=cfg)
    assert torch.equal(y1.view(torch.int16), y2.view(torch.int16))
    ref = _reference(x, q, s, None)
    assert torch.all(y1[2] == 0)
    for row in (0, 1, 3, 4):
        err = _rel_err(y1[row], ref[row])
        print(f"decode {kind} wide-range row {row}: rel err {err:.2e}")
        assert err < REL_TOL


def test_sibling_fusion_on_cuda_under_graph_capture() -> None:
    """q/k/v served by one kernel: same results as separate modules, also when replayed from a graph."""
    from mxmix.runtime import MXFP8Linear
    from mxmix.runtime.fusion import fuse_sibling_linears

    class Attn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            mk = lambda n: MXFP8Linear.from_linear(torch.nn.Linear(2048, n).to(torch.bfloat16))  # noqa: E731
            self.q_proj, self.k_proj, self.v_proj = mk(2048), mk(512), mk(512)

        def forward(self, x):
            return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)

    plain, fused = Attn().cuda(), Attn().cuda()
    assert fuse_sibling_linears(fused) == 1
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    assert _rel_err(fused(x), plain(x).double()) < 1e-2
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fused(x)
    for _ in range(2):
        x.copy_(torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16))
        graph.replay()
        assert _rel_err(y, plain(x).double()) < 1e-2


@pytest.mark.parametrize("n,k", [(64, 256), (1024, 2048)])
def test_gpu_dequantize_of_the_tiled_layout_is_row_major_and_bit_exact(n: int, k: int) -> None:
    from mxmix.mx import dequantize
    from mxmix.runtime import tiles
    from mxmix.runtime.kernels import dequantize_to

    gen = torch.Generator().manual_seed(n * k)
    q, s = _random_mxfp8(n, k, gen)
    tq, ts = tiles.tile(q, s)
    out = torch.full((n, k), float("nan"), device="cuda", dtype=torch.bfloat16)
    got = dequantize_to(tq, ts, out, tiled=True)
    want = dequantize(q.cpu(), s.cpu(), dtype=torch.bfloat16)
    assert torch.equal(got.cpu().view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("m", [1, 16, 300])
def test_tiled_mxfp8_linear_on_cuda_equals_row_major(m: int) -> None:
    from mxmix.runtime import MXFP8Linear

    torch.manual_seed(m)
    lin = torch.nn.Linear(2048, 1024, bias=True).to(torch.bfloat16)
    plain = MXFP8Linear.from_linear(lin).cuda()
    tiled = MXFP8Linear.from_linear(lin).cuda()
    assert tiled.tile_weight()
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(tiled(x).view(torch.int16), plain(x).view(torch.int16))
    assert torch.equal(tiled.dequantized_weight().view(torch.int16), plain.dequantized_weight().view(torch.int16))
