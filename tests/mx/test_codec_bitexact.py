"""Fast backends (vectorised torch on CPU, Triton on CUDA) equal the pure reference bit for bit."""

from __future__ import annotations

import pytest
import torch
from backends import FAST_BACKENDS, assert_same_bytes, assert_same_values, dequantize_values, device_for
from mx_inputs import all_bf16_patterns, mixed_magnitudes, shuffled_with_large, ties_and_edges

import mxmix.mx as mx

MODES = ["rceil", "floor"]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_every_bf16_pattern_in_order(backend: str, mode: str) -> None:
    """All 65536 bf16 bit patterns, 32 consecutive patterns per block (includes NaN/Inf blocks)."""
    assert_same_bytes(all_bf16_patterns(), backend, mode, note="bf16 patterns in order")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_every_bf16_pattern_shuffled_among_large_values(backend: str, mode: str, fresh_seed: int) -> None:
    """Every finite bf16 pattern in blocks dominated by large values: scaled into subnormals/underflow."""
    x = all_bf16_patterns().reshape(-1)
    x = x[torch.isfinite(x)]
    assert_same_bytes(shuffled_with_large(x, fresh_seed), backend, mode, note=f"seed {fresh_seed}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_every_fp16_pattern(backend: str, mode: str, fresh_seed: int) -> None:
    x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).reshape(-1, 32)
    assert_same_bytes(x, backend, mode, note="fp16 patterns in order")
    finite = x.reshape(-1)[torch.isfinite(x.reshape(-1))]
    assert_same_bytes(shuffled_with_large(finite, fresh_seed).to(torch.float32), backend, mode,
                      note=f"fp16 shuffled, seed {fresh_seed}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_random_fp32_bit_patterns(backend: str, mode: str, fresh_seed: int) -> None:
    """Random 32-bit patterns: fp32 subnormals, huge values, NaN payloads, mixed within blocks."""
    g = torch.Generator().manual_seed(fresh_seed)
    bits = torch.randint(-(2**31), 2**31, (256, 96), generator=g, dtype=torch.int64).to(torch.int32)
    # narrow the exponent in most rows so the blocks are not all NaN-poisoned or dominated by 2^127
    exp = torch.randint(0, 40, (256, 1), generator=g, dtype=torch.int32) + torch.randint(0, 215, (256, 1), generator=g,
                                                                                          dtype=torch.int32)
    narrowed = (bits & ~0x7F800000) | (((exp + torch.randint(0, 12, bits.shape, generator=g,
                                                               dtype=torch.int32)).clamp(0, 254)) << 23)
    x = torch.cat([bits, narrowed]).view(torch.float32)
    assert_same_bytes(x, backend, mode, note=f"fp32 bits, seed {fresh_seed}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_ties_and_neighbours(backend: str, mode: str, dtype: torch.dtype, fresh_seed: int) -> None:
    """Scaled values exactly on e4m3 midpoints (round-half-even ties), grid points and their neighbours."""
    assert_same_bytes(ties_and_edges(dtype, fresh_seed), backend, mode, note=f"{dtype}, seed {fresh_seed}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(7, 3, 200), (33, 64), (100,), (5, 1), (3, 2, 4, 40)])
def test_fresh_random_shapes(backend: str, mode: str, dtype: torch.dtype, shape: tuple[int, ...],
                             fresh_seed: int) -> None:
    """Fresh random data, 1-D to 4-D, full and partial blocks."""
    x = mixed_magnitudes(shape, dtype, fresh_seed)
    assert_same_bytes(x, backend, mode, note=f"{dtype} {shape}, seed {fresh_seed}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("block_size", [1, 16, 64, 128])
def test_other_block_sizes(backend: str, block_size: int, fresh_seed: int) -> None:
    x = mixed_magnitudes((12, 300), torch.bfloat16, fresh_seed)
    assert_same_bytes(x, backend, "rceil", block_size, note=f"block {block_size}, seed {fresh_seed}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_input(backend: str, fresh_seed: int) -> None:
    x = mixed_magnitudes((96, 64), torch.bfloat16, fresh_seed).t()  # [64, 96] view, strides swapped
    assert not x.is_contiguous()
    assert_same_bytes(x, backend, "rceil", note=f"transposed, seed {fresh_seed}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dequantize_every_byte_pair(backend: str, dtype: torch.dtype) -> None:
    """Every element byte under scale bytes spanning the range (0, 1, 100, 127, 200, 253, 254, 255)."""
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(8, 32).view(torch.float8_e4m3fn)
    scale_bytes = [0, 1, 100, 127, 140, 200, 253, 254, 255]
    q = q.repeat(len(scale_bytes), 1).reshape(len(scale_bytes), 8 * 32)
    s = torch.tensor(scale_bytes, dtype=torch.uint8).reshape(-1, 1).expand(-1, 8).contiguous()
    want = mx.dequantize(q, s, dtype, backend="reference")
    got = dequantize_values(q, s, backend, dtype)
    assert_same_values(got, want)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_dequantize_partial_block_and_3d(backend: str, fresh_seed: int) -> None:
    x = mixed_magnitudes((4, 5, 72), torch.bfloat16, fresh_seed)
    q, s = mx.quantize(x, backend="reference")
    want = mx.dequantize(q, s, torch.bfloat16, backend="reference")
    got = dequantize_values(q, s, backend, torch.bfloat16)
    assert_same_values(got, want)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_large_random_against_torch_backend(backend: str, fresh_seed: int) -> None:
    """A bigger tensor (reference too slow here): the backend matches the CPU torch backend, itself
    checked against the reference above."""
    g = torch.Generator().manual_seed(fresh_seed)
    x = (torch.randn(512, 4096, generator=g) * torch.exp2(torch.randint(-30, 30, (512, 1), generator=g))).to(
        torch.bfloat16)
    dev = device_for(backend)
    for mode in MODES:
        q, s = mx.quantize(x.to(dev), scale_mode=mode, backend=backend)
        q0, s0 = mx.quantize(x, scale_mode=mode, backend="torch")
        assert torch.equal(q.view(torch.uint8).cpu(), q0.view(torch.uint8)) and torch.equal(s.cpu(), s0)


@pytest.mark.parametrize("chunk", [32, 96, 1000, 1 << 30])
def test_torch_backend_chunk_boundaries(chunk: int, monkeypatch: pytest.MonkeyPatch, fresh_seed: int) -> None:
    """Chunks smaller than a row, not a multiple of the row, and one chunk for everything (the GPU case)."""
    from mxmix.mx import fast

    monkeypatch.setattr(fast, "CHUNK_ELEMENTS", chunk)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        x = mixed_magnitudes((6, 3, 200), dtype, fresh_seed)
        x[2, 1, 70] = float("nan")
        for mode in MODES:
            assert_same_bytes(x, "torch", mode, note=f"chunk {chunk}, {dtype}, seed {fresh_seed}")
        q, s = mx.quantize(x, backend="reference")
        assert_same_values(fast.dequantize(q, s, torch.bfloat16), mx.dequantize(q, s, backend="reference"))
