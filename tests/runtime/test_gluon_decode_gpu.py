"""The operand-A Gluon decode kernel (`gluon_decode`) vs the exact reference, on a GPU. Inputs and checks: `gluon_cases`.
"""

from __future__ import annotations

import pytest
import torch
from gluon_cases import (
    REL_TOL,
    assert_matches_reference,
    assert_one_hot_rows_exact,
    assert_split_k_repeatable_and_capturable,
    random_weights,
    reference,
    rel_err,
    require_gluon,
)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (1, 96, 128), (2, 1000, 2048), (3, 512, 4096), (5, 300, 1024),
                                   (8, 4096, 1024), (9, 200, 1280), (13, 520, 2048), (16, 1024, 4096),
                                   (24, 700, 2048), (33, 1024, 1024), (64, 384, 4096)])
def test_swab_matches_reference(m: int, n: int, k: int) -> None:
    require_gluon()
    from mxmix.runtime.kernels import triton_decode as td

    configs = [("swab", 64, 128, 1, 1, 4), ("swab", 64, 128, 4, 2, 4), ("swab", 128, 256, 3, 1, 4),
               ("swab", 128, 128, 1, 2, 4), ("swab", 64, 512, 2, 2, 4), ("swab", 64, 256, 1, 2, 4),
               ("swab", 128, 256, 2, 2, 8), ("swab", 256, 256, 1, 2, 8), ("swab", 64, 128, 8, 1, 4),
               ("swabcp", 64, 128, 1, 4, 4), ("swabcp", 64, 128, 3, 2, 4), ("swabcp", 128, 256, 2, 3, 4),
               ("swabcp", 128, 128, 4, 6, 4), ("swabcp", 128, 256, 1, 3, 8)]
    for seed, (kind, block_n, block_k, split, stages, warps) in enumerate(configs):
        if k % block_k == 0:
            assert_matches_reference(td.DecodeConfig(kind, block_n, block_k, split, warps, stages, "fold"), td.swab_runs,
                                      m, n, k, 100 + seed, bias=seed % 2 == 1)


@pytest.mark.parametrize("m", [1, 8, 16])
def test_swab_one_hot_rows_are_bit_exact(m: int) -> None:
    require_gluon()
    from mxmix.runtime.kernels import triton_decode as td

    assert_one_hot_rows_exact([td.DecodeConfig(kind, 64, block_k, split, 4, stages, "fold")
                               for kind, split, block_k, stages in (
                                   ("swab", 1, 128, 1), ("swab", 4, 256, 2), ("swab", 2, 512, 1), ("swab", 3, 128, 2),
                                   ("swabcp", 1, 128, 4), ("swabcp", 4, 256, 3))], m, seed=29)


@pytest.mark.parametrize("byte", [0, 2, 135, 200])
def test_scales_outside_the_fold_range_take_the_triton_kernel(byte: int) -> None:
    """One out-of-range scale byte anywhere: the call must still be exact (served by the Triton kernel)."""
    gd = require_gluon()
    from mxmix.mx import dequantize
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(byte)
    n, k, m = 256, 1024, 4
    q, s = random_weights(n, k, gen)
    s[17, 5] = byte
    qc, sc = q.cuda(), s.cuda()
    assert not gd.fold_exact(sc)
    x = torch.zeros(m, k, dtype=torch.bfloat16)
    cols = torch.tensor([5 * 32 + 1, 3, 900, 5 * 32 + 31])
    x[torch.arange(m), cols] = 1.0
    y = td.mxfp8_decode_matmul(x.cuda(), qc, sc, config=td.DecodeConfig("swab", 64, 128, 2, 4, 1, "fold")).cpu()
    want = dequantize(q, s, dtype=torch.bfloat16)[:, cols].T
    assert torch.equal(y, want) or bool((y == want).all())


def test_fp16_activations_take_the_triton_kernel_and_default_picks_gluon() -> None:
    require_gluon()
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(5)
    q, s = random_weights(512, 2048, gen, lo=110, hi=120)  # outputs within fp16 range
    x = torch.randn(3, 2048, generator=gen)
    hopper = torch.cuda.get_device_capability()[0] == 9
    assert td.default_decode_config(3, 512, 2048).kind == ("wgmma" if hopper else "swabcp")
    for dtype in (torch.bfloat16, torch.float16):
        y = td.mxfp8_decode_matmul(x.to(dtype).cuda(), q.cuda(), s.cuda())
        assert y.dtype == dtype
        assert rel_err(y, reference(x.to(dtype), q, s, None)) < REL_TOL


def test_swab_split_k_is_repeatable_and_graph_capturable() -> None:
    require_gluon()
    from mxmix.runtime.kernels import triton_decode as td

    assert_split_k_repeatable_and_capturable(td.DecodeConfig("swabcp", 64, 128, 8, 4, 3, "fold"), 6, seed=8)


def test_rows_above_16_take_the_gluon_kernels_only_when_they_run() -> None:
    """16 < M <= SWAB_MAX_M (WGMMA_MAX_M on Hopper) goes to the Gluon kernels for bf16 activations, to the
    fused Triton kernel otherwise; the result is exact either way."""
    require_gluon()
    from mxmix.runtime.kernels import choose_path, kernel_path, mxfp8_matmul
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(12)
    q, s = random_weights(640, 2048, gen, lo=110, hi=120)
    q, s = q.cuda(), s.cuda()
    hopper = torch.cuda.get_device_capability()[0] == 9
    top = td.WGMMA_MAX_M if hopper else td.SWAB_MAX_M
    for m in (17, td.SWAB_MAX_M, td.SWAB_MAX_M + 1, 64, td.WGMMA_MAX_M, td.WGMMA_MAX_M + 1):
        x = torch.randn(m, 2048, generator=gen)
        for dtype, expected in ((torch.bfloat16, "decode" if m <= top else choose_path(m)), (torch.float16, choose_path(m))):
            xd = x.to(dtype).cuda()
            assert kernel_path(xd, q, s) == expected, (m, dtype)
            assert rel_err(mxfp8_matmul(xd, q, s), reference(xd, q, s, None)) < REL_TOL


def test_a_failing_gluon_launch_falls_back_to_triton_once(monkeypatch) -> None:
    """If the Gluon kernel fails (another Triton's Gluon), the default path warns once and stays exact;
    an explicit Gluon configuration still raises."""
    gd = require_gluon()
    from mxmix.runtime.kernels import triton_decode as td

    def broken(*args, **kwargs):
        raise RuntimeError("gluon lowering failed")

    from mxmix.runtime.kernels import gluon_wgmma

    monkeypatch.setattr(gd, "launch_swab", broken)
    monkeypatch.setattr(gluon_wgmma, "launch", broken)  # the default on Hopper
    monkeypatch.setattr(gd, "AVAILABLE", True)
    gen = torch.Generator().manual_seed(21)
    q, s = random_weights(256, 1024, gen, lo=110, hi=120)
    x = torch.randn(4, 1024, generator=gen).to(torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="Gluon decode kernel failed"):
        y = td.mxfp8_decode_matmul(x.cuda(), q.cuda(), s.cuda())
    assert not gd.AVAILABLE
    assert rel_err(y, reference(x, q, s, None)) < REL_TOL
    monkeypatch.setattr(gd, "AVAILABLE", True)
    with pytest.raises(RuntimeError, match="gluon lowering failed"):
        td.mxfp8_decode_matmul(x.cuda(), q.cuda(), s.cuda(), config=td.DecodeConfig("swabcp", 64, 128, 1, 4, 3, "fold"))


def test_misaligned_operands_take_the_triton_kernel() -> None:
    """Views whose rows or bases are not 16-byte aligned cannot use 16-byte copies: still exact, via Triton."""
    require_gluon()
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(31)
    q, s = random_weights(256, 1024, gen, lo=110, hi=120)
    wide = torch.randn(5, 1028, generator=gen).to(torch.bfloat16).cuda()
    x = wide[:, 2:1026]                    # rows 2056 bytes apart, base 4 bytes past an allocation
    s_pad = torch.zeros(257 * 32 + 4, dtype=torch.uint8, device="cuda")
    s_view = s_pad[4:4 + 256 * 32].view(256, 32)
    s_view.copy_(s.cuda())                 # scales 4 bytes past a 16-byte boundary
    assert not td.swab_runs(x, q.cuda(), s_view, 128)
    assert td.swab_runs(x.contiguous(), q.cuda(), s.cuda(), 128)
    y = td.mxfp8_decode_matmul(x, q.cuda(), s_view)
    assert rel_err(y, reference(x, q, s, None)) < REL_TOL
