"""Sibling fusion (q/k/v, gate/up served by one matmul) changes nothing but the launch count."""

from __future__ import annotations

import torch
from torch import nn

from mxmix.runtime import MXFP8Linear
from mxmix.runtime.fusion import fuse_sibling_linears


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        mk = lambda n, k, b=False: MXFP8Linear.from_linear(nn.Linear(k, n, bias=b).to(torch.bfloat16))  # noqa: E731
        self.q_proj, self.k_proj, self.v_proj = mk(64, 64, True), mk(32, 64), mk(32, 64)
        self.gate_proj, self.up_proj = mk(96, 64), mk(96, 64)
        self.other = nn.Linear(64, 64).to(torch.bfloat16)   # not a sibling group: left alone


def _outputs(block: Block, x: torch.Tensor) -> list[torch.Tensor]:
    return [block.q_proj(x), block.k_proj(x), block.v_proj(x), block.gate_proj(x), block.up_proj(x)]


def test_fused_outputs_equal_unfused_and_memory_is_shared() -> None:
    x = torch.randn(3, 64).to(torch.bfloat16)
    plain = Block()
    want = _outputs(plain, x)
    fused = Block()
    assert fuse_sibling_linears(fused) == 2
    assert fuse_sibling_linears(fused) == 0  # idempotent
    got = _outputs(fused, x)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.allclose(g.float(), w.float(), rtol=1e-2, atol=1e-2)
    # buffers are views into one allocation per group
    assert fused.k_proj.weight.untyped_storage().data_ptr() == fused.q_proj.weight.untyped_storage().data_ptr()
    assert set(fused.state_dict()) == set(plain.state_dict())


def test_cached_result_is_only_reused_for_the_same_input_once() -> None:
    block = Block()
    fuse_sibling_linears(block)
    group = block.q_proj._sibling[0]
    calls = []
    original = group.output

    def counting(index, x, fwd):
        def wrapped(*a):
            calls.append(index)
            return fwd(*a)
        return original(index, x, wrapped)

    group.output = counting
    x = torch.randn(2, 64).to(torch.bfloat16)
    block.q_proj(x), block.k_proj(x), block.v_proj(x)
    assert calls == [0]                       # one matmul for all three
    block.k_proj(x)
    assert calls == [0, 1]                    # a fresh pass recomputes
    block.q_proj(x)                           # consumes the cached result (not yet served to q)
    assert calls == [0, 1]
    block.q_proj(x)                           # q already served: recompute
    assert calls == [0, 1, 0]
    y = torch.randn(2, 64).to(torch.bfloat16)
    out = block.k_proj(y)                     # different input: recompute, and it is y's result
    assert calls == [0, 1, 0, 1]
    assert torch.allclose(out.float(), Block().k_proj(y).float(), rtol=1e-2, atol=1e-2)
    y.mul_(2)                                 # in-place edit bumps the version: recompute
    block.v_proj(y)
    assert calls == [0, 1, 0, 1, 2]
