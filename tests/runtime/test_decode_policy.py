"""The launch policies of the Gluon decode kernels pick configurations the kernels can run (needs Triton,
not a GPU: the policies are pure functions of M, N, K and the SM count)."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("triton")

SHAPES = [(4096, 4096), (8192, 8192), (28672, 8192), (8192, 28672), (128256, 4096), (6144, 4096), (96, 128),
          (1000, 1152), (300, 640), (5, 3968)]
MS = [1, 2, 3, 5, 8, 9, 16, 17, 31, 32, 33, 64, 65, 100, 128, 129, 200, 256]


@pytest.mark.parametrize("sms", [78, 114, 132])
def test_wgmma_policy_picks_runnable_configurations(sms: int) -> None:
    from mxmix.runtime import tiles
    from mxmix.runtime.kernels import gluon_wgmma as gw
    from mxmix.runtime.kernels.triton_decode import wgmma_config

    for (n, k), m, tiled in itertools.product(SHAPES, MS, (False, True)):
        if tiled and not tiles.can_tile(n, k):
            continue
        cfg = wgmma_config(m, n, k, sms, tiled=tiled)
        where = (m, n, k, sms, tiled, cfg.label())
        assert not tiled or gw.supports_tiled(cfg.block_n, cfg.block_k), where
        assert cfg.kind == "wgmma" and cfg.convert == "fold", where
        assert k % cfg.block_k == 0 and cfg.block_k >= gw.MIN_BLOCK_K, where
        assert cfg.split_k in (1, 2, 4, 8, 16) and k // cfg.split_k >= cfg.block_k, where
        assert cfg.num_warps == cfg.block_n // 16 and cfg.block_n in (64, 128), where
        assert gw.fits(cfg.block_n, cfg.block_k, gw.block_m_for(m), cfg.num_stages), where
        assert cfg.split_k == 1 or triton_cdiv(n, cfg.block_n) * cfg.split_k <= 4 * sms, where


def test_swab_policy_picks_runnable_configurations() -> None:
    from mxmix.runtime.kernels.triton_decode import swab_config

    for (n, k), m in itertools.product(SHAPES, [m for m in MS if m <= 64]):
        cfg = swab_config(m, n, k)
        assert k % cfg.block_k == 0 and cfg.split_k in (1, 2, 4, 8, 16), (m, n, k, cfg.label())
        assert k // cfg.split_k >= cfg.block_k, (m, n, k, cfg.label())


def test_autotune_candidates_can_all_run() -> None:
    """Every wgmma candidate fits in shared memory and divides K; splits leave at least one K step."""
    from mxmix.runtime.kernels import gluon_wgmma as gw
    from mxmix.runtime.kernels.triton_decode import candidate_configs

    for (n, k), m in itertools.product(SHAPES, [1, 4, 16, 32, 64, 128, 256]):
        cands = candidate_configs(m, n, k, wgmma=True)
        wg = [c for c in cands if c.kind == "wgmma"]
        assert wg, (m, n, k)
        for c in cands:
            assert c.split_k == 1 or k // c.split_k >= c.block_k, (m, n, k, c.label())
        for c in wg:
            assert k % c.block_k == 0 and gw.fits(c.block_n, c.block_k, gw.block_m_for(m), c.num_stages), c.label()
        # past the heuristic's own pick (here without a GPU), no Triton tensor-core candidate above M = 16
        assert all(c.kind != "mma" for c in cands[1:]) or m <= 16, (m, [c.label() for c in cands])


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
