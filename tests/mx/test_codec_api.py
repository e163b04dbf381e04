"""Public API: validation errors, shapes, dispatch, and the reference's own cross-checks."""

from __future__ import annotations

import math

import pytest
import torch
from mx_inputs import e4m3_grid

import mxmix.mx as mx
from mxmix.errors import MxmixError
from mxmix.mx import reference


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mx.quantize(torch.ones(4, 32, dtype=torch.int32)), "bfloat16, float16 or float32"),
        (lambda: mx.quantize(torch.ones(4, 32, dtype=torch.float64)), "bfloat16, float16 or float32"),
        (lambda: mx.quantize(torch.tensor(1.0)), "at least one dimension"),
        (lambda: mx.quantize([1.0, 2.0]), "torch.Tensor"),
        (lambda: mx.quantize(torch.ones(4, 32), block_size=0), "power of two"),
        (lambda: mx.quantize(torch.ones(4, 32), block_size=24), "power of two"),
        (lambda: mx.quantize(torch.ones(4, 32), block_size=32.0), "must be an int"),
        (lambda: mx.quantize(torch.ones(4, 32), scale_mode="ceil"), "unknown scale_mode"),
        (lambda: mx.quantize(torch.ones(4, 32), backend="cuda"), "unknown codec backend"),
        (lambda: mx.dequantize(torch.ones(4, 32), torch.zeros(4, 1, dtype=torch.uint8)), "float8_e4m3fn"),
        (lambda: mx.dequantize(torch.zeros(4, 32, dtype=torch.float8_e4m3fn), torch.zeros(4, 1)), "uint8"),
        (lambda: mx.dequantize(torch.zeros(4, 32, dtype=torch.float8_e4m3fn), torch.zeros(4, 2, dtype=torch.uint8)),
         "does not match"),
        (lambda: mx.dequantize(torch.zeros(4, 32, dtype=torch.float8_e4m3fn), torch.zeros(4, 1, dtype=torch.uint8),
                               dtype=torch.int8), "can produce"),
    ],
)
def test_bad_input_is_a_clear_error(call, message: str) -> None:
    with pytest.raises(MxmixError, match=message) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_triton_backend_needs_cuda() -> None:
    with pytest.raises(MxmixError, match="CUDA"):
        mx.quantize(torch.ones(2, 32), backend="triton")


def test_scale_mode_is_case_insensitive() -> None:
    x = torch.randn(3, 64)
    assert torch.equal(mx.quantize(x, scale_mode="RCEIL")[1], mx.quantize(x)[1])


@pytest.mark.parametrize("shape", [(0, 32), (4, 0), (2, 0, 64)])
def test_empty_tensors(shape: tuple[int, ...]) -> None:
    x = torch.empty(shape, dtype=torch.bfloat16)
    q, s = mx.quantize(x)
    assert q.shape == x.shape and q.dtype == torch.float8_e4m3fn
    assert s.shape == (*shape[:-1], -(-shape[-1] // 32)) and s.dtype == torch.uint8
    assert mx.dequantize(q, s).shape == x.shape


def test_shapes_3d_and_1d() -> None:
    q, s = mx.quantize(torch.randn(4, 16, 100, dtype=torch.bfloat16))
    assert q.shape == (4, 16, 100) and s.shape == (4, 16, 4)
    q, s = mx.quantize(torch.randn(65))
    assert q.shape == (65,) and s.shape == (3,)
    assert mx.dequantize(q, s, torch.float32).shape == (65,)


def test_reference_encoder_matches_torch_cast_on_grid_and_midpoints() -> None:
    """The reference's own e4m3 rounding agrees with torch's float→float8_e4m3fn cast (RNE) on every grid
    point, every midpoint (ties) and their float32 neighbours, both signs, below saturation."""
    grid = e4m3_grid()
    vals = torch.cat([grid, (grid[1:] + grid[:-1]) / 2]).to(torch.float32)
    vals = torch.cat([vals, torch.nextafter(vals, torch.full_like(vals, math.inf)),
                      torch.nextafter(vals, torch.zeros_like(vals))])
    vals = torch.cat([vals, -vals])
    vals = vals[vals.abs() <= 448]
    want = vals.to(torch.float8_e4m3fn).view(torch.uint8).tolist()
    got = [reference.encode_e4m3(v) for v in vals.tolist()]
    assert got == want


def test_reference_decoder_matches_torch_on_every_byte() -> None:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    want = codes.view(torch.float8_e4m3fn).to(torch.float64).tolist()
    got = [reference.decode_e4m3(b) for b in range(256)]
    for b, (g, w) in enumerate(zip(got, want)):
        assert (math.isnan(g) and math.isnan(w)) or g == w, hex(b)


def test_reference_saturates_and_keeps_sign() -> None:
    assert reference.encode_e4m3(500.0) == 0x7E and reference.encode_e4m3(-1e9) == 0xFE
    assert reference.encode_e4m3(-0.0) == 0x80 and reference.encode_e4m3(2.0**-11) == 0x00
    assert reference.encode_e4m3(3 * 2.0**-11) == 0x01  # 0.75 of the smallest step rounds up
    assert reference.encode_e4m3(2.0**-10) == 0x00  # exact half of the smallest subnormal ties to even 0


def test_cpu_dispatch_uses_torch_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from mxmix.mx import fast

    calls = []
    real = fast.quantize
    monkeypatch.setattr(fast, "quantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    mx.quantize(torch.randn(2, 64))
    assert calls == [1]


def test_parameters_that_require_grad_are_accepted() -> None:
    """Weights often arrive as nn.Parameter; quantizing them must not try to build an autograd graph."""
    w = torch.nn.Parameter(torch.randn(4, 64, dtype=torch.bfloat16))
    q, s = mx.quantize(w)
    q0, s0 = mx.quantize(w.detach(), backend="reference")
    assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)
    assert not mx.dequantize(q, s).requires_grad


def test_cpu_worker_threads_do_not_change_torch_thread_settings() -> None:
    """The torch path runs single-threaded ops in worker threads; neither the caller's thread count
    nor that of threads started afterwards may change."""
    import threading

    before = torch.get_num_threads()
    mx.quantize(torch.randn(64, 1 << 14, dtype=torch.bfloat16))  # several chunks: uses the workers
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == before and seen == [before]
