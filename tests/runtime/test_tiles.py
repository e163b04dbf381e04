"""The tiled weight layout: an exact permutation that changes no result, no state dict and no memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mxmix.runtime import MXFP8Linear, set_cpu_weight_cache, tile_weights, tiles
from mxmix.runtime.fusion import fuse_sibling_linears


def _bytes(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (n, k), generator=g, dtype=torch.uint8)
    w[(w & 0x7F) == 0x7F] = 0x3C  # no E4M3 NaN bytes
    s = torch.randint(100, 141, (n, k // 32), generator=g, dtype=torch.uint8)
    return w.view(torch.float8_e4m3fn), s


@pytest.mark.parametrize("n,k", [(64, 256), (192, 512), (128, 1280)])
def test_tile_is_the_documented_permutation_and_untile_inverts_it(n: int, k: int) -> None:
    w, s = _bytes(n, k, n + k)
    tw, ts = tiles.tile(w, s)
    assert tw.shape == w.shape and ts.shape == s.shape and tw.dtype == w.dtype
    wb, twb = w.view(torch.uint8), tw.view(torch.uint8)
    # element (r, c) of the weight sits in tile (r // 64, c // 256) at (r % 64, c % 256)
    for r, c in [(0, 0), (63, 255), (min(64, n - 1), 0), (n - 1, k - 1), (n // 2 + 5, k // 2 + 7)]:
        flat = (((r // 64) * (k // 256) + c // 256) * 64 + r % 64) * 256 + c % 256
        assert twb.flatten()[flat] == wb[r, c]
        # ...and its scale byte pairs with it the same way (8 scale bytes per tile row)
        sflat = (((r // 64) * (k // 256) + c // 256) * 64 + r % 64) * 8 + (c % 256) // 32
        assert ts.flatten()[sflat] == s[r, c // 32]
    idx = tiles.untile_index(torch.arange(n * k), k)
    assert torch.equal(wb.flatten()[idx], twb.flatten())
    uw, us = tiles.untile(tw, ts)
    assert torch.equal(uw.view(torch.uint8), wb) and torch.equal(us, s)
    assert torch.equal(twb, wb) == (k == tiles.TILE_K)  # one tile per row block: the identity


@pytest.mark.parametrize("n,k", [(63, 256), (64, 128), (64, 300), (0, 256)])
def test_shapes_that_do_not_tile_are_refused(n: int, k: int) -> None:
    assert not tiles.can_tile(n, k)
    w = torch.zeros(n, k, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"tiles|shape"):
        tiles.tile(w, torch.zeros(n, k // 32, dtype=torch.uint8))


def _module(n: int, k: int, seed: int, bias: bool = False) -> MXFP8Linear:
    w, s = _bytes(n, k, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16) if bias else None
    return MXFP8Linear.from_quantized(w, s, b)


@pytest.mark.parametrize("bias", [False, True])
def test_tiled_module_computes_and_saves_exactly_what_the_row_major_one_does(bias: bool) -> None:
    plain, tiled = _module(128, 512, 3, bias), _module(128, 512, 3, bias)
    original = tiled.weight
    assert tiled.tile_weight() and tiled.tiled and "tiled" in repr(tiled)
    assert torch.equal(original.view(torch.uint8), plain.weight.view(torch.uint8))  # the caller's tensor is intact
    assert not torch.equal(tiled.weight.view(torch.uint8), plain.weight.view(torch.uint8))
    x = torch.randn(5, 512).to(torch.bfloat16)
    assert torch.equal(tiled(x), plain(x))
    assert torch.equal(tiled.dequantized_weight(), plain.dequantized_weight())
    set_cpu_weight_cache(tiled)
    assert torch.equal(tiled(x), plain(x))
    sd_t, sd_p = tiled.state_dict(), plain.state_dict()
    assert set(sd_t) == set(sd_p)
    for key in sd_p:
        assert torch.equal(sd_t[key].view(torch.uint8), sd_p[key].view(torch.uint8)), key
    # a (row-major) state dict loaded into a tiled module is re-tiled
    other = _module(128, 512, 4, bias)
    other.tile_weight()
    other.load_state_dict(sd_p)
    assert other.tiled and torch.equal(other.weight.view(torch.uint8), tiled.weight.view(torch.uint8))
    assert torch.equal(other(x), plain(x))
    tiled.untile_weight()
    assert not tiled.tiled and torch.equal(tiled.weight.view(torch.uint8), plain.weight.view(torch.uint8))


def test_module_whose_shape_does_not_tile_stays_row_major() -> None:
    m = _module(96, 256, 5)
    assert not m.tile_weight() and not m.tiled


class _Attention(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (_module(n, 256, seed + i, i == 0) for i, n in enumerate((128, 64, 64)))


def test_fused_siblings_tile_and_untile_together_in_their_shared_buffer() -> None:
    x = torch.randn(3, 256).to(torch.bfloat16)
    plain = _Attention(7)
    want = [plain.q_proj(x), plain.k_proj(x), plain.v_proj(x)]
    tiled_first = _Attention(7)  # tiled, then fused: the concatenation of tiled members is tiled
    assert tile_weights(tiled_first, where_it_pays=False) == 3
    assert fuse_sibling_linears(tiled_first) == 1
    fused_first = _Attention(7)  # fused, then tiled: one member's call converts the whole group in place
    assert fuse_sibling_linears(fused_first) == 1
    storage = fused_first.q_proj.weight.untyped_storage().data_ptr()
    assert fused_first.k_proj.tile_weight()
    assert all(m.tiled for m in (fused_first.q_proj, fused_first.k_proj, fused_first.v_proj))
    assert fused_first.v_proj.weight.untyped_storage().data_ptr() == storage  # still one shared buffer
    for model in (tiled_first, fused_first):
        got = [model.q_proj(x), model.k_proj(x), model.v_proj(x)]
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        for key, t in plain.state_dict().items():
            assert torch.equal(model.state_dict()[key].view(torch.uint8), t.view(torch.uint8)), key
    fused_first.q_proj.untile_weight()
    assert not any(m.tiled for m in (fused_first.q_proj, fused_first.k_proj, fused_first.v_proj))
    assert torch.equal(fused_first.k_proj(x), want[1])


def test_siblings_in_different_layouts_are_not_fused() -> None:
    mixed = _Attention(9)
    mixed.q_proj.tile_weight()
    assert fuse_sibling_linears(mixed) == 0


def test_only_where_it_pays_leaves_cpu_modules_row_major() -> None:
    model = _Attention(11)
    assert tile_weights(model) == 0
    assert not any(m.tiled for m in model.modules() if isinstance(m, MXFP8Linear))



def test_fused_inference_tensors_change_layout_in_place() -> None:
    x = torch.randn(2, 256).to(torch.bfloat16)
    plain = _Attention(13)
    want = plain.k_proj(x)
    with torch.inference_mode():  # buffers made here are inference tensors (no in-place edits outside it)
        model = _Attention(13)
        fuse_sibling_linears(model)
    assert model.k_proj.weight.is_inference()
    assert model.q_proj.tile_weight() and model.v_proj.tiled
    with torch.inference_mode():
        assert torch.equal(model.k_proj(x), want)
    model.v_proj.untile_weight()
    assert torch.equal(model.k_proj.weight.view(torch.uint8), plain.k_proj.weight.view(torch.uint8))
