"""Run a codec backend on CPU-held inputs and bring the results back, so tests compare bytes on CPU."""

from __future__ import annotations

import pytest
import torch

import mxmix.mx as mx

FAST_BACKENDS = [pytest.param("torch", id="torch-cpu"), pytest.param("triton", id="triton", marks=pytest.mark.gpu)]
ALL_BACKENDS = [pytest.param("reference", id="reference"), *FAST_BACKENDS]


def device_for(backend: str) -> str:
    return "cuda" if backend == "triton" else "cpu"


def quantize_bytes(x: torch.Tensor, backend: str, scale_mode: str = "rceil",
                   block_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(element bytes uint8, scale bytes uint8), on CPU."""
    q, s = mx.quantize(x.to(device_for(backend)), block_size, scale_mode, backend=backend)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.uint8
    assert q.shape == x.shape and s.shape == (*x.shape[:-1], -(-x.shape[-1] // block_size))
    return q.view(torch.uint8).cpu(), s.cpu()


def dequantize_values(q: torch.Tensor, s: torch.Tensor, backend: str, dtype: torch.dtype,
                      block_size: int = 32) -> torch.Tensor:
    dev = device_for(backend)
    out = mx.dequantize(q.to(dev), s.to(dev), dtype, block_size, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    return out.cpu()


def assert_same_values(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same NaN positions and identical bits everywhere else (NaN payloads differ between CPU and CUDA
    conversions and carry no meaning)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), "NaN positions differ"
    bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[want.dtype]
    assert torch.equal(got.masked_fill(nan, 0).view(bits), want.masked_fill(nan, 0).view(bits))


def assert_same_bytes(x: torch.Tensor, backend: str, scale_mode: str, block_size: int = 32,
                      note: str = "") -> None:
    """Backend bytes == reference bytes; on mismatch, show the first differing block."""
    q_ref, s_ref = quantize_bytes(x, "reference", scale_mode, block_size)
    q, s = quantize_bytes(x, backend, scale_mode, block_size)
    if torch.equal(q, q_ref) and torch.equal(s, s_ref):
        return
    k = x.shape[-1]
    q2, qr2 = q.reshape(-1, k), q_ref.reshape(-1, k)
    bad = (q2 != qr2).nonzero()
    sb = (s.reshape(-1, s.shape[-1]) != s_ref.reshape(-1, s.shape[-1])).nonzero()
    where = bad[0].tolist() if len(bad) else None
    detail = ""
    if where is not None:
        r, c = where
        detail = (f"first element mismatch at row {r} col {c}: x={x.reshape(-1, k)[r, c].item()!r} "
                  f"got 0x{q2[r, c].item():02x} want 0x{qr2[r, c].item():02x}; ")
    raise AssertionError(f"{backend} differs from reference ({scale_mode}, {note}): "
                         f"{len(bad)} element bytes, {len(sb)} scale bytes differ; {detail}"
                         f"first scale mismatch {sb[0].tolist() if len(sb) else None}")
