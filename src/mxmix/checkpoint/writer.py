"""Streaming safetensors writing: plan every shard's header from shapes alone, then write tensors one by one.

A converter knows every output name, dtype and shape before it reads a single weight, so each shard's
header can be written first and the tensor bytes appended as they are produced. Nothing accumulates in
memory, and a shard that ends up with a different size than planned is an error, not a corrupt file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mxmix.checkpoint.safetensors_header import DTYPE_SIZES
from mxmix.errors import MxmixError

INDEX_NAME = "model.safetensors.index.json"
HEADER_ALIGN = 8


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str                  # safetensors dtype string, e.g. "F8_E4M3"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass
class ShardPlan:
    """One output file: its tensors in write order, with offsets fixed up front."""

    filename: str
    groups: list[list[OutTensor]] = field(default_factory=list)

    @property
    def tensors(self) -> list[OutTensor]:
        return [t for g in self.groups for t in g]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def header_bytes(self, metadata: dict[str, str] | None = None) -> bytes:
        """The 8-byte length + JSON header (space-padded so the data region starts 8-aligned)."""
        obj: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for t in self.tensors:
            obj[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        raw += b" " * ((-len(raw)) % HEADER_ALIGN)
        return len(raw).to_bytes(8, "little") + raw


def plan_shards(groups: Sequence[Sequence[OutTensor]], max_shard_size: int) -> list[ShardPlan]:
    """Pack groups (tensors that belong together, e.g. a weight and its scales) into shards in order.

    A shard closes when the next group would push it past ``max_shard_size`` (counting tensor bytes, like
    transformers); a single group larger than the limit gets a shard of its own. Within a shard, groups
    are ordered by element size (largest first, stable) so every tensor's data is aligned to its size.
    """
    shards: list[list[list[OutTensor]]] = [[]]
    size = 0
    for group in groups:
        g = list(group)
        if not g:
            continue
        gbytes = sum(t.nbytes for t in g)
        if shards[-1] and size + gbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(g)
        size += gbytes
    if not shards[-1]:
        shards.pop()
    n = len(shards)
    plans = []
    for i, s in enumerate(shards):
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        ordered = sorted(s, key=lambda g: -max(t.itemsize for t in g))
        plans.append(ShardPlan(name, ordered))
    return plans


class ShardWriter:
    """Writes one planned shard: ``write(name, data)`` in plan order; ``close()`` checks completeness."""

    def __init__(self, directory: Path, plan: ShardPlan, metadata: dict[str, str] | None = None) -> None:
        self.path = directory / plan.filename
        self.plan = plan
        self._expected = plan.tensors
        self._next = 0
        header = plan.header_bytes(metadata)
        self._size = len(header) + plan.nbytes
        self._f: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close() / abort()
        self._f.write(header)

    def _advance(self, name: str) -> OutTensor:
        if self._next >= len(self._expected):
            raise MxmixError(f"internal error: {self.path.name} got unplanned tensor {name!r}")
        t = self._expected[self._next]
        if t.name != name:
            raise MxmixError(f"internal error: {self.path.name} expected {t.name!r} next, got {name!r}")
        self._next += 1
        return t

    def write_tensor(self, name: str, tensor: Any) -> None:
        """Append a torch tensor's bytes (CPU, contiguous, dtype and shape as planned)."""
        from mxmix.checkpoint.safetensors_header import safetensors_dtype

        t = self._advance(name)
        if safetensors_dtype(tensor.dtype) != t.dtype or tuple(tensor.shape) != t.shape:
            raise MxmixError(f"internal error: {name!r} is {safetensors_dtype(tensor.dtype)}{list(tensor.shape)}, "
                             f"planned {t.dtype}{list(t.shape)}")
        self.write_chunks(t, [tensor])

    def write_piece_tensor(self, name: str, array: Any) -> None:
        """Append a whole tensor given as a C-contiguous numpy array (its bytes, in order)."""
        t = self._advance(name)
        self.write_chunks(t, [memoryview(array.reshape(-1).view("uint8"))])

    def begin(self, name: str) -> OutTensor:
        """Start a tensor written in pieces with :meth:`write_piece`; returns its plan entry."""
        t = self._advance(name)
        self._pending = (t, 0)
        return t

    def write_piece(self, piece: Any) -> None:
        t, done = self._pending
        done += self._write_raw(piece)
        if done > t.nbytes:
            raise MxmixError(f"internal error: {t.name!r} got more than its {t.nbytes} bytes")
        self._pending = (t, done)

    def end(self) -> None:
        t, done = self._pending
        if done != t.nbytes:
            raise MxmixError(f"internal error: {t.name!r} got {done} bytes, planned {t.nbytes}")

    def write_chunks(self, t: OutTensor, pieces: Sequence[Any]) -> None:
        done = sum(self._write_raw(p) for p in pieces)
        if done != t.nbytes:
            raise MxmixError(f"internal error: {t.name!r} got {done} bytes, planned {t.nbytes}")

    def copy_range(self, name: str, src: BinaryIO, offset: int, nbytes: int, chunk: int = 16 << 20) -> None:
        """Append ``nbytes`` raw bytes from ``src`` at ``offset`` (a tensor copied unchanged)."""
        t = self._advance(name)
        if nbytes != t.nbytes:
            raise MxmixError(f"internal error: {name!r} has {nbytes} bytes, planned {t.nbytes}")
        src.seek(offset)
        left = nbytes
        while left:
            buf = src.read(min(chunk, left))
            if not buf:
                raise MxmixError(f"{getattr(src, 'name', 'source')}: truncated while copying tensor {name!r}")
            self._f.write(buf)
            left -= len(buf)

    def _write_raw(self, piece: Any) -> int:
        if isinstance(piece, (bytes, bytearray, memoryview)):
            self._f.write(piece)
            return memoryview(piece).nbytes
        import torch

        flat = piece.detach().contiguous().reshape(-1)
        if flat.numel() == 0:
            return 0
        raw = flat.view(torch.uint8).numpy()
        self._f.write(memoryview(raw))
        return raw.nbytes

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if self._next != len(self._expected):
            missing = self._expected[self._next].name
            raise MxmixError(f"internal error: {self.path.name} closed before tensor {missing!r} was written")
        size = self.path.stat().st_size
        if size != self._size:
            raise MxmixError(f"internal error: {self.path.name} is {size} bytes, planned {self._size}")

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()


def write_index(directory: Path, shards: Sequence[ShardPlan]) -> Path:
    """model.safetensors.index.json for a sharded output (HF layout)."""
    weight_map = {t.name: s.filename for s in shards for t in s.tensors}
    index = {"metadata": {"total_size": sum(s.nbytes for s in shards)},
             "weight_map": dict(sorted(weight_map.items()))}
    path = directory / INDEX_NAME
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path
