"""Check 5 (--check-scales): NaN bytes, implausible bytes, and the swizzle statistic on real-ish scales."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mxmix.audit import audit_checkpoint
from mxmix.audit.scales import (
    SWIZZLE_RATIO,
    blackwell_swizzle,
    blackwell_unswizzle,
    scale_findings,
    scale_stats,
    swizzle_test,
)
from mxmix.example.synthetic import SyntheticSpec
from mxmix.mx import quantize

from .builders import build, realish

# Tile-aligned shapes (N % 128 == 0, K % 128 == 0) so the swizzle test applies to every module.
SPEC = SyntheticSpec(layers=2, hidden=256, intermediate=512, heads=4, kv_heads=4, vocab=64)


def reference_swizzle(s: np.ndarray) -> np.ndarray:
    """The 128x4 layout written out index by index (cuBLAS block-scaling docs / torchao to_blocked)."""
    rows, cols = s.shape
    rb, cb = -(-rows // 128), -(-cols // 4)
    out = np.zeros(rb * cb * 512, dtype=s.dtype)
    for r in range(rows):
        for c in range(cols):
            tile = (r // 128) * cb + (c // 4)
            rr, cc = r % 128, c % 4
            out[tile * 512 + (rr % 32) * 16 + (rr // 32) * 4 + cc] = s[r, c]
    return out


@pytest.mark.parametrize("shape", [(128, 4), (256, 8), (130, 5), (1, 1), (300, 33)])
def test_swizzle_matches_the_index_formula_and_inverts(shape):
    s = np.random.default_rng(sum(shape)).integers(0, 255, size=shape, dtype=np.uint8)
    flat = blackwell_swizzle(s)
    assert np.array_equal(flat, reference_swizzle(s))
    assert np.array_equal(blackwell_unswizzle(flat, *shape), s)


def _scales(w: torch.Tensor) -> np.ndarray:
    return quantize(w)[1].numpy()


@pytest.mark.parametrize("seed", range(4))
def test_swizzle_statistic_separates_layouts_of_realish_weights(seed):
    s = _scales(realish(512, 2048, seed))
    row_major = swizzle_test(s)
    swizzled = swizzle_test(blackwell_swizzle(s).reshape(s.shape))
    assert row_major.tested and not row_major.swizzled and row_major.ratio < 0.7
    assert swizzled.swizzled and swizzled.ratio > SWIZZLE_RATIO


def test_structureless_scales_are_never_called_swizzled():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(512, 2048, generator=g) * 0.02).to(torch.bfloat16)
    s = _scales(w)
    for layout in (s, blackwell_swizzle(s).reshape(s.shape)):
        v = swizzle_test(layout)
        assert v.tested and not v.swizzled and 0.8 < v.ratio < 1.25


def test_untestable_shapes_are_skipped():
    assert not swizzle_test(np.zeros((96, 18), dtype=np.uint8)).tested


def test_byte_counts():
    s = np.array([[0, 0, 127, 255], [5, 247, 130, 120]], dtype=np.uint8)
    st = scale_stats("m", s)
    assert (st.nan, st.zero, st.below, st.above, st.total) == (1, 2, 1, 1, 8)
    codes = {f.code for f in scale_findings([st])}
    assert codes == {"scale-nan", "scale-out-of-range", "scale-implausibly-small"}
    f16 = scale_stats("m", s, "float16")
    assert f16.above == 1 and f16.below == 2    # F16 range 122..134: 247 above; 5 and 120 below


def test_check_scales_on_checkpoints(tmp_path):
    all_fp8 = lambda w: not w.startswith("lm_head")  # noqa: E731
    clean = build(tmp_path / "clean", SPEC, fp8=all_fp8, skip_list=["lm_head"], structured=True)
    result = audit_checkpoint(clean, engines=["sglang"], check_scales=True)
    assert result.scales_checked == 14 and not [f for f in result.findings if f.check == "scales"]

    bad_module = "model.layers.1.self_attn.o_proj"
    swz_module = "model.layers.0.mlp.down_proj"

    def damage(t):
        s = t[f"{bad_module}.weight_scale_inv"].clone()
        s[0, 0] = 255
        s[1, 1] = 251
        t[f"{bad_module}.weight_scale_inv"] = s
        name = f"{swz_module}.weight_scale_inv"
        t[name] = torch.from_numpy(blackwell_swizzle(t[name].numpy()).reshape(t[name].shape))

    broken = build(tmp_path / "broken", SPEC, fp8=all_fp8, skip_list=["lm_head"], structured=True, mutate=damage)
    result = audit_checkpoint(broken, engines=["sglang"], check_scales=True)
    found = {f.code: f for f in result.findings if f.check == "scales"}
    assert set(found) == {"scale-nan", "scale-out-of-range", "scales-swizzled"}
    assert found["scale-nan"].modules == (bad_module,) and found["scale-out-of-range"].modules == (bad_module,)
    assert found["scales-swizzled"].modules == (swz_module,)
    assert result.exit_code == 1


def test_whole_checkpoint_swizzled_is_caught_by_pooling(tmp_path):
    def swizzle_all(t):
        for k in [k for k in t if k.endswith("weight_scale_inv")]:
            t[k] = torch.from_numpy(blackwell_swizzle(t[k].numpy()).reshape(t[k].shape))

    d = build(tmp_path / "c", SPEC, fp8=lambda w: not w.startswith("lm_head"), skip_list=["lm_head"],
              structured=True, mutate=swizzle_all)
    result = audit_checkpoint(d, engines=["sglang"], check_scales=True)
    f = [f for f in result.findings if f.code == "scales-swizzled"]
    assert len(f) == 1 and len(f[0].modules) >= 10
