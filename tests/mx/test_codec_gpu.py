"""CUDA-only behaviour: dispatch, the torch fallback on the GPU, and >2^31-element tensors."""

from __future__ import annotations

import pytest
import torch
from backends import assert_same_values
from mx_inputs import all_bf16_patterns, mixed_magnitudes

import mxmix.mx as mx
from mxmix.mx import fast

pytestmark = pytest.mark.gpu


def test_cuda_tensor_dispatches_to_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    from mxmix.mx import triton_codec

    calls = []
    real = triton_codec.quantize
    monkeypatch.setattr(triton_codec, "quantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    q, s = mx.quantize(torch.randn(8, 64, device="cuda"))
    assert calls == [1] and q.is_cuda and s.is_cuda


@pytest.mark.parametrize("mode", ["rceil", "floor"])
def test_torch_path_on_cuda_matches_reference(mode: str, fresh_seed: int) -> None:
    """The fallback used when Triton is missing, run on the GPU."""
    for x in (all_bf16_patterns(), mixed_magnitudes((6, 3, 200), torch.float16, fresh_seed)):
        q, s = fast.quantize(x.cuda(), 32, mode)
        q0, s0 = mx.quantize(x, 32, mode, backend="reference")
        assert torch.equal(q.view(torch.uint8).cpu(), q0.view(torch.uint8)) and torch.equal(s.cpu(), s0), fresh_seed
        y = fast.dequantize(q, s, torch.bfloat16)
        y0 = mx.dequantize(q0, s0, torch.bfloat16, backend="reference")
        assert_same_values(y.cpu(), y0)


def test_more_than_2_pow_31_elements() -> None:
    """64-bit indexing: the last blocks of a 2^31 + 96 element tensor equal a CPU quantize of them."""
    k = 96
    rows = 2**31 // k + 2
    free, _ = torch.cuda.mem_get_info()
    if free < rows * k * 4:
        pytest.skip("not enough GPU memory for a 2^31-element tensor")
    x = torch.empty(rows, k, dtype=torch.bfloat16, device="cuda")
    x.view(torch.int16).random_(-(2**15), 2**15)  # all bit patterns, NaN included
    x[:, 5] = torch.randn(rows, device="cuda", dtype=torch.bfloat16)
    q, s = mx.quantize(x)
    tail = x[-4:].cpu()
    q0, s0 = mx.quantize(tail, backend="reference")
    assert torch.equal(q[-4:].view(torch.uint8).cpu(), q0.view(torch.uint8)) and torch.equal(s[-4:].cpu(), s0)
    y = mx.dequantize(q, s, torch.bfloat16)
    assert_same_values(y[-4:].cpu(), mx.dequantize(q0, s0, backend="reference"))

