"""The ``wgmma`` kernel (`gluon_wgmma`, Hopper only) vs the exact reference. Inputs and checks: `gluon_cases`.
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
    require_wgmma,
)

pytestmark = pytest.mark.gpu


CONFIGS = [(64, 128, 1, 3), (64, 128, 4, 3), (64, 256, 2, 2), (64, 128, 3, 4), (64, 256, 1, 3), (64, 128, 8, 2),
           (128, 128, 1, 2), (128, 128, 2, 3)]  # (block_n, block_k, split, stages); 128 rows: two warpgroups


@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (3, 200, 1280), (8, 1000, 2048), (16, 1024, 4096),
                                   (24, 700, 2048), (33, 1024, 1024), (64, 384, 4096), (100, 520, 2048),
                                   (128, 256, 1536), (200, 130, 1024), (256, 640, 2048)])
def test_wgmma_matches_reference(m: int, n: int, k: int) -> None:
    wg = require_wgmma()
    from mxmix.runtime.kernels import triton_decode as td

    for seed, (block_n, block_k, split, stages) in enumerate(CONFIGS):
        if k % block_k or k // split < block_k or not wg.fits(block_n, block_k, wg.block_m_for(m), stages):
            continue
        assert_matches_reference(td.DecodeConfig("wgmma", block_n, block_k, split, block_n // 16, stages, "fold"),
                                  td.wgmma_runs, m, n, k, 200 + seed, bias=seed % 2 == 1)


@pytest.mark.parametrize("m", [1, 16, 100, 256])
def test_wgmma_one_hot_rows_are_bit_exact(m: int) -> None:
    wg = require_wgmma()
    from mxmix.runtime.kernels import triton_decode as td

    assert_one_hot_rows_exact([td.DecodeConfig("wgmma", 64, block_k, split, 4, stages, "fold")
                               for split, block_k, stages in ((1, 128, 3), (4, 256, 2), (3, 128, 4), (2, 128, 2))
                               if wg.fits(64, block_k, wg.block_m_for(m), stages)], m, seed=37)


def test_wgmma_split_k_is_repeatable_and_graph_capturable() -> None:
    require_wgmma()
    from mxmix.runtime.kernels import triton_decode as td

    assert_split_k_repeatable_and_capturable(td.DecodeConfig("wgmma", 64, 128, 8, 4, 3, "fold"), 48, seed=41)


def test_wgmma_configuration_for_unsupported_operands_takes_the_triton_kernel() -> None:
    """Scale bytes outside the fold range, fp16 activations or a K that is not a multiple of the K step:
    an explicit wgmma configuration still gives the exact result (through the Triton kernels)."""
    require_wgmma()
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(43)
    cases = []
    q, s = random_weights(256, 1024, gen)
    s[0, 0] = 200
    cases.append((torch.randn(40, 1024, generator=gen).to(torch.bfloat16), q, s))
    q, s = random_weights(256, 1024, gen, lo=110, hi=120)  # outputs within fp16 range
    cases.append((torch.randn(40, 1024, generator=gen).to(torch.float16), q, s))
    q, s = random_weights(256, 1056, gen)
    cases.append((torch.randn(40, 1056, generator=gen).to(torch.bfloat16), q, s))
    for x, q, s in cases:
        assert not td.wgmma_runs(x.cuda(), q.cuda(), s.cuda(), 128)
        y = td.mxfp8_decode_matmul(x.cuda(), q.cuda(), s.cuda(), config=td.DecodeConfig("wgmma", 64, 128, 1, 4, 3,
                                                                                         "fold"))
        assert rel_err(y.float(), reference(x.float(), q, s, None)) < REL_TOL


@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (5, 192, 1280), (16, 1024, 4096), (100, 320, 2048),
                                   (256, 640, 2048)])
def test_tiled_layout_gives_the_row_major_results_bit_for_bit(m: int, n: int, k: int, monkeypatch) -> None:
    """The kernel reading the tiled layout (`mxmix.runtime.tiles`) equals the row-major kernel bit for bit, into a
    poisoned output with poisoned workspaces; the row-major fallback is disabled so the tiled kernel answers."""
    wg = require_wgmma()
    from mxmix.runtime import tiles
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(m + n + k)
    q, s = random_weights(n, k, gen)
    tq, ts = (t.cuda() for t in tiles.tile(q, s))
    q, s = q.cuda(), s.cuda()
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    b = torch.randn(n, generator=gen).to(torch.bfloat16).cuda()
    monkeypatch.setattr(tiles, "untile", lambda *a: pytest.fail("the tiled call fell back to row-major"))
    ran = 0
    for seed, (block_n, block_k, split, stages) in enumerate([*CONFIGS, (64, 256, 4, 2), (128, 256, 3, 2)]):
        if k % block_k or k // split < block_k or not wg.fits(block_n, block_k, wg.block_m_for(m), stages):
            continue
        cfg = td.DecodeConfig("wgmma", block_n, block_k, split, block_n // 16, stages, "fold")
        bias = b if seed % 2 else None
        want = td.mxfp8_decode_matmul(x, q, s, bias, config=cfg)
        out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        td.POISON_WORKSPACE = True
        try:
            got = td.mxfp8_decode_matmul(x, tq, ts, bias, config=cfg, out=out, tiled=True)
        finally:
            td.POISON_WORKSPACE = False
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), cfg.label()
        ran += 1
    assert ran >= 4
    default = td.mxfp8_decode_matmul(x, tq, ts, b, tiled=True)  # the default configuration reads it too
    assert rel_err(default, reference(x, q.cpu(), s.cpu(), b)) < REL_TOL


def test_tiled_layout_everywhere_else_runs_on_a_row_major_copy() -> None:
    """fp16 activations, scales outside the fold range and prefill M (dequantize + cuBLAS) with a tiled weight:
    the same results as the row-major weight."""
    require_wgmma()
    from mxmix.runtime import tiles
    from mxmix.runtime.kernels import mxfp8_matmul

    gen = torch.Generator().manual_seed(5)
    q, s = random_weights(256, 1024, gen)
    s_wide = s.clone()
    s_wide[0, 0] = 0  # outside the fold range: the Triton kernels serve it
    for m, dtype, scale in ((4, torch.float16, s), (100, torch.float16, s), (4, torch.bfloat16, s_wide), (300, torch.bfloat16, s),
                            (1000, torch.bfloat16, s)):
        x = torch.randn(m, 1024, generator=gen).to(dtype).cuda()
        want = mxfp8_matmul(x, q.cuda(), scale.cuda())
        tq, ts = tiles.tile(q, scale)
        got = mxfp8_matmul(x, tq.cuda(), ts.cuda(), tiled=True)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (m, dtype)
