"""Read safetensors headers (and single tensors) from untrusted files without trusting anything.

A header is validated before it is believed: bounded length, strict JSON, known dtypes, sizes that
agree with shapes, offsets that tile the data region exactly. Everything that inspects or converts a
checkpoint goes through here, so a lying file fails the same way everywhere.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxmix.errors import CheckpointError

# Same bound as the reference implementation: a larger header is refused before it is allocated.
MAX_HEADER_BYTES = 100_000_000

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
FP8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry; ``begin``/``end`` are offsets from the start of the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    data_start: int
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header_bytes(raw: bytes, where: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Strict JSON → (tensor entries, metadata). Raises CheckpointError naming ``where``."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where}: header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: header is not a JSON object")
    meta = obj.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings")
    return obj, meta


def _tensor_info(name: str, entry: Any, where: str) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: entry for tensor {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")
    info = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    if info.numel * DTYPE_SIZES[dtype] != info.nbytes:
        raise CheckpointError(
            f"{where}: tensor {name!r} claims {info.nbytes} bytes but {dtype}{list(shape)} needs "
            f"{info.numel * DTYPE_SIZES[dtype]}")
    return info


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and fully validate one file's header; reads no tensor data."""
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{where}: truncated (shorter than the 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{where}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > size:
                raise CheckpointError(f"{where}: truncated (header claims {n} bytes, file has {size - 8})")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read ({exc.strerror or exc})") from None
    entries, meta = parse_header_bytes(raw, where)
    tensors = {name: _tensor_info(name, entry, where) for name, entry in entries.items()}
    data_len = size - 8 - n
    expected = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < expected:
            raise CheckpointError(f"{where}: tensor {info.name!r} overlaps the previous tensor's data")
        if info.begin > expected:
            raise CheckpointError(f"{where}: gap in the data before tensor {info.name!r}")
        expected = info.end
    if expected > data_len:
        raise CheckpointError(
            f"{where}: truncated (tensor data needs {expected} bytes, file holds {data_len})")
    if expected < data_len:
        raise CheckpointError(f"{where}: {data_len - expected} unexplained bytes after the last tensor")
    return SafetensorsHeader(path, 8 + n, size, tensors, meta)


def torch_dtype(dtype: str) -> Any:
    """safetensors dtype string → torch dtype (E8M0 read as raw uint8 bytes)."""
    import torch

    table = {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
        "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
        "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "F8_E8M0": torch.uint8, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    }
    return table[dtype]


def safetensors_dtype(dtype: Any) -> str:
    """torch dtype → safetensors dtype string."""
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
        torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
        torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    }
    return table[dtype]


def read_tensor(header: SafetensorsHeader, name: str) -> Any:
    """Read one tensor's bytes (only those) into a fresh CPU torch tensor."""
    import torch

    info = header.tensors[name]
    buf = bytearray(info.nbytes)
    try:
        with open(header.path, "rb") as f:
            f.seek(header.data_start + info.begin)
            got = f.readinto(buf)
    except OSError as exc:
        raise CheckpointError(f"{header.path}: cannot read tensor {name!r} ({exc.strerror or exc})") from None
    if got != info.nbytes:
        raise CheckpointError(f"{header.path}: truncated while reading tensor {name!r}")
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    return torch.frombuffer(buf, dtype=torch_dtype(info.dtype)).reshape(info.shape)
