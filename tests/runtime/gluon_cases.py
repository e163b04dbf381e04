"""Inputs, the exact reference and shared checks of the Gluon kernel tests (`test_gluon_*_gpu.py`).

Weights cover every finite E4M3 byte; scales span the whole fold range (bytes 3 and 134 included).
Outputs and split-K workspaces are poisoned with NaN by the tests, so that an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

REL_TOL = 1e-2  # bf16 output rounding gives ~2e-3; a wrong block or scale gives O(1)


def require_gluon():
    """The mma.sync Gluon kernel module, or skip (a Triton without Gluon)."""
    from mxmix.runtime.kernels import gluon_decode

    if not gluon_decode.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    return gluon_decode


def require_wgmma():
    """The wgmma kernel module, or skip (a Triton without Gluon, or a GPU that is not a Hopper)."""
    from mxmix.runtime.kernels import gluon_wgmma

    if not gluon_wgmma.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("wgmma needs a Hopper GPU")
    return gluon_wgmma


def random_weights(n: int, k: int, gen: torch.Generator, lo: int = 3, hi: int = 134):
    """E4M3 weights over every finite byte; scale bytes mostly max(lo, 100)..min(hi, 127), 2 % each at lo and hi
    (the default: the edges of the fold range, subnormal products at byte 3, 2^7 multipliers at 134)."""
    q = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.int32)
    q = torch.where((q & 0x7F) == 0x7F, q - 1, q).to(torch.uint8).view(torch.float8_e4m3fn)
    s = torch.randint(max(lo, 100), min(hi, 127) + 1, (n, k // 32), generator=gen, dtype=torch.int32)
    edge = torch.rand(s.shape, generator=gen)
    s[edge < 0.02] = lo
    s[edge > 0.98] = hi
    return q, s.to(torch.uint8)


def reference(x, q, s, bias):
    """x @ dequant(q, s)^T (+ bias) in float64 on the CPU, from the codec's exact dequantization."""
    from mxmix.mx import dequantize

    w = dequantize(q.cpu(), s.cpu(), dtype=torch.float32).double()
    y = x.cpu().double() @ w.T
    return y if bias is None else y + bias.cpu().double()


def rel_err(y, ref) -> float:
    assert not torch.isnan(y).any(), "NaN in output: an element was not written"
    return float((y.cpu().double() - ref).norm() / ref.norm())


def assert_matches_reference(cfg, runs, m: int, n: int, k: int, seed: int, bias: bool) -> None:
    """Fresh random inputs (`random_weights`) through `mxfp8_decode_matmul` with ``cfg``, into a NaN-poisoned
    output with NaN-poisoned split-K workspaces, against the float64 reference. ``runs`` (`td.swab_runs` or
    `td.wgmma_runs`) must accept the operands, so that the kernel under test answers, not a fallback."""
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(seed)
    q, s = random_weights(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    b = torch.randn(n, generator=gen).to(torch.bfloat16) if bias else None
    assert runs(x.cuda(), q.cuda(), s.cuda(), cfg.block_k)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    td.POISON_WORKSPACE = True
    try:
        y = td.mxfp8_decode_matmul(x.cuda(), q.cuda(), s.cuda(), None if b is None else b.cuda(), config=cfg, out=out)
    finally:
        td.POISON_WORKSPACE = False
    assert y.data_ptr() == out.data_ptr()
    err = rel_err(y, reference(x, q, s, b))
    print(f"{cfg.label()} m={m} n={n} k={k}: rel err {err:.2e}")
    assert err < REL_TOL, (cfg, err)


def assert_one_hot_rows_exact(configs, m: int, seed: int) -> None:
    """x = one-hot rows: each output must be the bf16 dequantized weight, bit for bit, over every finite E4M3
    byte and the fold range's extreme scales (subnormal products at byte 3, 2^7 multipliers at byte 134)."""
    from mxmix.mx import dequantize
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(seed)
    n, k = 384, 2048
    byte = torch.arange(n * k, dtype=torch.int32).reshape(n, k) % 256
    byte = byte[:, torch.randperm(k, generator=gen)]
    q = torch.where((byte & 0x7F) == 0x7F, byte - 1, byte).to(torch.uint8).view(torch.float8_e4m3fn)
    s = torch.randint(3, 135, (n, k // 32), generator=gen, dtype=torch.int32).to(torch.uint8)
    s[0, 0], s[1, 1] = 3, 134
    want = dequantize(q, s, dtype=torch.bfloat16)
    for cfg in configs:
        cols = torch.randperm(k, generator=gen)[:m]
        x = torch.zeros(m, k, dtype=torch.bfloat16)
        x[torch.arange(m), cols] = 1.0
        y = td.mxfp8_decode_matmul(x.cuda(), q.cuda(), s.cuda(), config=cfg).cpu()
        bad = (y != want[:, cols].T).sum().item()  # == on floats: -0.0 equals 0.0 (a sum of +0 and -0)
        assert bad == 0, f"{cfg.label()}: {bad} outputs differ from the dequantized weight"


def assert_split_k_repeatable_and_capturable(cfg, m: int, seed: int) -> None:
    """Bit-identical reruns (the per-tile counters are reset by the kernel) and replay from a CUDA graph."""
    from mxmix.runtime.kernels import triton_decode as td

    gen = torch.Generator().manual_seed(seed)
    q, s = random_weights(1536, 4096, gen)
    q, s = q.cuda(), s.cuda()
    x = torch.randn(m, 4096, generator=gen).to(torch.bfloat16).cuda()
    y1 = td.mxfp8_decode_matmul(x, q, s, config=cfg).clone()
    y2 = td.mxfp8_decode_matmul(x, q, s, config=cfg)
    assert torch.equal(y1.view(torch.int16), y2.view(torch.int16))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y3 = td.mxfp8_decode_matmul(x, q, s, config=cfg)
    x.copy_(torch.randn(m, 4096, generator=gen).to(torch.bfloat16))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(y3, reference(x, q.cpu(), s.cpu(), None)) < REL_TOL
