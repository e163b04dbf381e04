"""Special blocks byte-exact (mxfp8-format.md §3), scale-mode laws and round-trip error bounds."""

from __future__ import annotations

import math

import pytest
import torch
from backends import ALL_BACKENDS, dequantize_values, quantize_bytes
from mx_inputs import mixed_magnitudes

FP32_MAX = torch.finfo(torch.float32).max
BF16_MAX = torch.finfo(torch.bfloat16).max


def block_with_max(top: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 32-element block whose largest magnitude is ``top`` (others are small fractions of it)."""
    x = torch.linspace(-0.5, 0.5, 32, dtype=torch.float64) * abs(top)
    x[7] = top
    return x.to(dtype).reshape(1, 32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["rceil", "floor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_zero_block(backend: str, mode: str, dtype: torch.dtype) -> None:
    q, s = quantize_bytes(torch.zeros(3, 64, dtype=dtype), backend, mode)
    assert s.eq(0).all() and q.eq(0).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["rceil", "floor"])
@pytest.mark.parametrize("bad", [math.nan, -math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nonfinite_block(backend: str, mode: str, bad: float, dtype: torch.dtype) -> None:
    x = torch.randn(2, 96, dtype=torch.float32).to(dtype)
    x[1, 40] = bad  # second block of row 1 only
    q, s = quantize_bytes(x, backend, mode)
    assert s[1, 1] == 255 and q[1, 32:64].eq(0x7F).all()
    others = torch.ones_like(s, dtype=torch.bool)
    others[1, 1] = False
    assert s[others].lt(255).all(), "a non-finite value must only poison its own block"
    assert q[0].ne(0x7F).all() and q[1, :32].ne(0x7F).all() and q[1, 64:].ne(0x7F).all()
    out = dequantize_values(q.view(torch.float8_e4m3fn), s, backend, torch.float32)
    assert out[1, 32:64].isnan().all() and out[1, :32].isfinite().all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    ("top", "mode", "scale_byte", "top_byte"),
    [
        (2.0**-126, "rceil", 0, 0x40),
        (2.0**-126, "floor", 0, 0x40),
        (448.0, "rceil", 127, 0x7E),
        (448.0, "floor", 127, 0x7E),
        (-448.0, "rceil", 127, 0xFE),
        (-448.0, "floor", 127, 0xFE),
        (480.0, "floor", 127, 0x7E),
        (480.0, "rceil", 128, 0x77),
        (FP32_MAX, "floor", 246, None),
        (FP32_MAX, "rceil", 247, None),
    ],
)
def test_torchao_contract_table(backend: str, top: float, mode: str, scale_byte: int, top_byte: int | None) -> None:
    dtypes = [torch.float32, torch.bfloat16] if abs(top) != FP32_MAX else [torch.float32]
    for dtype in dtypes:
        q, s = quantize_bytes(block_with_max(top, dtype), backend, mode)
        assert s.item() == scale_byte, (dtype, s.item())
        if top_byte is not None:
            assert q[0, 7].item() == top_byte, (dtype, hex(q[0, 7].item()))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(("mode", "scale_byte"), [("floor", 246), ("rceil", 247)])
def test_bf16_max_block(backend: str, mode: str, scale_byte: int) -> None:
    _q, s = quantize_bytes(block_with_max(BF16_MAX, torch.bfloat16), backend, mode)
    assert s.item() == scale_byte


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_just_under_and_over_448_times_power(backend: str) -> None:
    """RCEIL moves to the next scale exactly when amax passes 448·2^k; FLOOR only at 2^(k+9)."""
    for k in (-100, -3, 0, 5, 90):
        at = torch.tensor([448.0 * 2.0**k], dtype=torch.float32)
        over = torch.nextafter(at, torch.tensor([math.inf]))
        under = torch.nextafter(at, torch.tensor([0.0]))
        x = torch.cat([at, over, under]).reshape(3, 1).expand(3, 32).contiguous()
        _, s_r = quantize_bytes(x, backend, "rceil")
        _, s_f = quantize_bytes(x, backend, "floor")
        assert s_r[:, 0].tolist() == [127 + k, 128 + k, 127 + k]
        assert s_f[:, 0].tolist() == [127 + k, 127 + k, 127 + k]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["rceil", "floor"])
def test_partial_last_block_uses_real_elements_only(backend: str, mode: str) -> None:
    x = torch.randn(4, 72, dtype=torch.float32) * 1000
    x[:, 64:] *= 1e-6  # the partial block (8 elements) is tiny: its scale must follow them
    q, s = quantize_bytes(x, backend, mode)
    q_tail, s_tail = quantize_bytes(x[:, 64:].contiguous(), backend, mode)
    assert s.shape == (4, 3)
    assert torch.equal(s[:, 2:], s_tail) and torch.equal(q[:, 64:], q_tail)
    assert s[:, 2].lt(s[:, 1]).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scale_mode_laws(backend: str, fresh_seed: int) -> None:
    """RCEIL: 448·2^(s-1) < amax <= 448·2^s; FLOOR: 2^(s+8) <= amax < 2^(s+9) (unclamped blocks)."""
    x = mixed_magnitudes((64, 256), torch.float32, fresh_seed)
    xb = x.to(torch.float64).reshape(64, 8, 32)
    amax = xb.abs().amax(-1)
    ok = (amax > 2.0**-100) & (amax < 2.0**100)
    _, s_r = quantize_bytes(x, backend, "rceil")
    _, s_f = quantize_bytes(x, backend, "floor")
    p_r = torch.exp2(s_r.to(torch.float64) - 127)
    p_f = torch.exp2(s_f.to(torch.float64) - 127)
    assert ((amax <= 448 * p_r) & (amax > 224 * p_r))[ok].all(), fresh_seed
    assert ((amax >= 256 * p_f) & (amax < 512 * p_f))[ok].all(), fresh_seed
    assert torch.isin((s_r.to(torch.int32) - s_f.to(torch.int32))[ok], torch.tensor([0, 1])).all()
    assert s_r[~ok & (amax == 0)].eq(0).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["rceil", "floor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_error_bounds(backend: str, mode: str, dtype: torch.dtype, fresh_seed: int) -> None:
    """Per element: relative error <= 2^-4 in e4m3's normal range, absolute <= 2^-10·scale below it,
    and (FLOOR only) saturated elements land on ±448·scale."""
    x = mixed_magnitudes((32, 3, 160), dtype, fresh_seed)
    q, s = quantize_bytes(x, backend, mode)
    y = dequantize_values(q.view(torch.float8_e4m3fn), s, backend, torch.float32).to(torch.float64)
    xd = x.to(torch.float64)
    scale = torch.exp2(s.to(torch.float64) - 127).repeat_interleave(32, dim=-1)
    v = xd.abs() / scale
    err = (y - xd).abs()
    normal = (v >= 2.0**-6) & (v <= 448)
    assert (err[normal] <= xd.abs()[normal] * 2.0**-4).all(), fresh_seed
    sub = v < 2.0**-6
    assert (err[sub] <= scale[sub] * 2.0**-10).all(), fresh_seed
    sat = v > 448
    if mode == "rceil":
        assert not sat.any(), "RCEIL never saturates"
    assert torch.equal(y[sat].abs(), 448 * scale[sat]) and (torch.sign(y[sat]) == torch.sign(xd[sat])).all()
    # dequantize to the input dtype round-trips the quantized values exactly (e4m3·2^k fits bf16/fp32)
    if dtype != torch.float16:
        y_same = dequantize_values(q.view(torch.float8_e4m3fn), s, backend, dtype)
        assert torch.equal(y_same.to(torch.float64), y)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_dequantize_scale_byte_semantics(backend: str) -> None:
    q = torch.full((4, 32), 0x40, dtype=torch.uint8).view(torch.float8_e4m3fn)  # 2.0
    s = torch.tensor([[0], [127], [254], [255]], dtype=torch.uint8)
    out = dequantize_values(q, s, backend, torch.float32)
    assert out[0].eq(2.0**-126).all() and out[1].eq(2.0).all() and out[2].eq(math.inf).all()
    assert out[3].isnan().all()
