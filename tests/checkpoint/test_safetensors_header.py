import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.safetensors_header import read_header, read_tensor
from mxmix.errors import CheckpointError


def test_header_roundtrip_and_single_tensor_read(tmp_path):
    a = torch.randn(3, 5).to(torch.bfloat16)
    b = torch.arange(7, dtype=torch.int32)
    save_file({"a": a, "b": b}, str(tmp_path / "x.safetensors"))
    h = read_header(tmp_path / "x.safetensors")
    assert h.tensors["a"].dtype == "BF16" and h.tensors["a"].shape == (3, 5)
    assert torch.equal(read_tensor(h, "a"), a)
    assert torch.equal(read_tensor(h, "b"), b)


def _raw(tmp_path, header: dict, data: bytes = b"", length: int | None = None):
    raw = json.dumps(header).encode()
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return p


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None, "needs 8"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 6, None, "overlaps"),
        ({"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "unknown dtype"),
        ({}, b"", 10**12, "exceeds"),
    ],
)
def test_lying_headers_are_refused(tmp_path, header, data, length, message):
    p = _raw(tmp_path, header, data, length)
    with pytest.raises(CheckpointError, match=message):
        read_header(p)


def test_index_cannot_escape_directory(tmp_path, make_synthetic):
    ckpt = make_synthetic(shards=2)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside"):
        Checkpoint.open(ckpt)


def test_synthetic_checkpoint_opens(make_synthetic):
    ckpt = Checkpoint.open(make_synthetic(shards=3, moe="experts"))
    assert "model.layers.0.mlp.experts.3.down_proj.weight" in ckpt.tensors
    assert ckpt.config["model_type"] == "qwen3_moe"


def test_hub_cache_snapshot_links_into_blobs_are_accepted(tmp_path, make_synthetic):
    src = make_synthetic("src")
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(f"../../blobs/{blob.name}")
    ckpt = Checkpoint.open(snap)
    assert "lm_head.weight" in ckpt.tensors


def test_symlink_out_of_an_ordinary_directory_is_refused(tmp_path, make_synthetic):
    src = make_synthetic("src")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (src / "model.safetensors").rename(other / "model.safetensors")
    (src / "model.safetensors").symlink_to(other / "model.safetensors")
    with pytest.raises(CheckpointError, match="outside"):
        Checkpoint.open(src)
