"""MXFP8Linear on the CPU: the forward is the BF16 matmul on the exactly dequantized weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mxmix.errors import MxmixError
from mxmix.mx import quantize, reference
from mxmix.runtime import MXFP8Linear, set_cpu_weight_cache


def _adversarial(n: int, k: int, seed: int, scales: tuple[int, int] = (100, 141)) -> tuple[torch.Tensor, torch.Tensor]:
    """Every finite E4M3 byte (subnormals, ±0, ±448) and scale bytes 0 and 100..140."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 256, (n, k), generator=g, dtype=torch.int32)
    q = torch.where((q & 0x7F) == 0x7F, q - 1, q).to(torch.uint8).view(torch.float8_e4m3fn)
    s = torch.randint(*scales, (n, k // 32), generator=g, dtype=torch.int32).to(torch.uint8)
    s[0, 0] = 0
    return q, s


@pytest.mark.parametrize("bias", [False, True])
def test_forward_equals_matmul_on_pure_reference_dequantization(bias: bool) -> None:
    q, s = _adversarial(48, 96, seed=1)
    b = torch.randn(48).to(torch.bfloat16) if bias else None
    mod = MXFP8Linear.from_quantized(q, s, b)
    x = torch.randn(3, 5, 96).to(torch.bfloat16)
    w_ref = reference.dequantize(q, s, torch.bfloat16)  # pure-Python decode, independent of torch's fp8
    want = F.linear(x, w_ref, b)
    got = mod(x)
    assert got.shape == (3, 5, 48) and got.dtype == torch.bfloat16
    assert torch.equal(got, want)


def test_forward_error_is_bf16_level_against_float64() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=True).to(torch.bfloat16).requires_grad_(False)
    mod = MXFP8Linear.from_linear(lin)
    x = torch.randn(7, 256).to(torch.bfloat16)
    w64 = mod.dequantized_weight(torch.float32).to(torch.float64)
    ref = x.to(torch.float64) @ w64.T + lin.bias.to(torch.float64)
    err = float((mod(x).to(torch.float64) - ref).norm() / ref.norm())
    assert err < 1e-2
    # and the quantized weight is close to the original (RCEIL MXFP8: ~31 dB on Gaussian weights)
    w = lin.weight.double()
    sqnr = 10 * torch.log10(w.pow(2).sum() / (w - w64).pow(2).sum())
    assert sqnr > 25


def test_float32_and_float16_inputs_follow_the_activation_dtype() -> None:
    q, s = _adversarial(16, 64, seed=2, scales=(110, 121))  # results stay inside fp16's range
    mod = MXFP8Linear.from_quantized(q, s)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(4, 64).to(dtype)
        y = mod(x)
        assert y.dtype == dtype
        want = F.linear(x, reference.dequantize(q, s, dtype))
        assert torch.allclose(y, want, rtol=1e-3, atol=1e-3)


def test_cpu_weight_cache_gives_identical_results() -> None:
    q, s = _adversarial(32, 128, seed=3)
    model = torch.nn.Sequential(MXFP8Linear.from_quantized(q, s))
    x = torch.randn(2, 128).to(torch.bfloat16)
    plain = model(x)
    assert set_cpu_weight_cache(model, True) == 1
    first = model(x)
    cached = model[0]._dequantized
    second = model(x)
    assert cached is not None and model[0]._dequantized is cached  # reused, not recomputed
    assert torch.equal(plain, first) and torch.equal(first, second)
    set_cpu_weight_cache(model, False)
    assert model[0]._dequantized is None


def test_buffers_stay_compressed_in_state_dict() -> None:
    q, s = _adversarial(16, 64, seed=4)
    sd = MXFP8Linear.from_quantized(q, s, torch.zeros(16)).state_dict()
    assert sd["weight"].dtype == torch.float8_e4m3fn and sd["weight_scale"].dtype == torch.uint8
    assert sd["bias"].dtype == torch.bfloat16
    fresh = MXFP8Linear(64, 16, bias=True)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 64).to(torch.bfloat16)
    assert torch.equal(fresh(x), MXFP8Linear.from_quantized(q, s, torch.zeros(16))(x))


def test_rejects_bad_tensors_and_inputs() -> None:
    q, s = quantize(torch.randn(8, 64))
    with pytest.raises(MxmixError, match="divisible by 32"):
        MXFP8Linear(48, 8)
    with pytest.raises(MxmixError, match="float8_e4m3fn"):
        MXFP8Linear.from_quantized(q.view(torch.uint8), s)
    with pytest.raises(MxmixError, match="scale shape"):
        MXFP8Linear.from_quantized(q, s[:, :1])
    bad = s.clone()
    bad[3, 1] = 255
    with pytest.raises(MxmixError, match="scale byte 0xFF"):
        MXFP8Linear.from_quantized(q, bad)
    for nan_byte in (0x7F, 0xFF):  # both E4M3 NaN encodings, anywhere in the weight
        poisoned = q.view(torch.uint8).clone()
        poisoned[5, 17] = nan_byte
        with pytest.raises(MxmixError, match="E4M3 NaN element"):
            MXFP8Linear.from_quantized(poisoned.view(torch.float8_e4m3fn), s)
    near = q.view(torch.uint8).clone()
    near[5, 17] = 0x7E  # 448, the largest finite E4M3: accepted
    MXFP8Linear.from_quantized(near.view(torch.float8_e4m3fn), s)
    mod = MXFP8Linear.from_quantized(q, s)
    with pytest.raises(MxmixError, match="last dimension 64"):
        mod(torch.randn(2, 32))
    assert "format=mxfp8" in repr(mod)
