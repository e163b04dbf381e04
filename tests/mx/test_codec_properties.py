"""Property-based check (hypothesis): the torch backend equals the reference on arbitrary float blocks."""

from __future__ import annotations

import pytest
import torch
from backends import assert_same_bytes

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=150),
    dtype=st.sampled_from(sorted(DTYPES)),
    mode=st.sampled_from(["rceil", "floor"]),
    block_size=st.sampled_from([1, 8, 32]),
    exponent=st.integers(-140, 120),
)
def test_torch_backend_equals_reference(values: list[float], dtype: str, mode: str, block_size: int,
                                        exponent: int) -> None:
    """Any finite/non-finite float32 values (hypothesis favours edge values: 0, ±max, subnormals, ties),
    shifted by a power of two, in any dtype and block size."""
    x = (torch.tensor(values, dtype=torch.float64) * 2.0**exponent).to(DTYPES[dtype])
    assert_same_bytes(x, "torch", mode, block_size, note=f"{dtype} values {values[:6]}… ×2^{exponent}")
