"""Bad input: one clear error, non-zero exit, nothing written (no destination, no temporary sibling)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from convert_util import assert_nothing_written, load_tensors
from safetensors.torch import load_file, save_file

from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.cli.main import main
from mxmix.errors import MxmixError


def _fails(src: Path, dst: Path, match: str, **kwargs) -> None:
    with pytest.raises(MxmixError, match=match):
        quantize_checkpoint(src, dst, **kwargs)
    assert_nothing_written(dst)


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_missing_source(tmp_path: Path) -> None:
    _fails(tmp_path / "nope", tmp_path / "out", "no such directory")


def test_missing_config(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=1)
    (src / "config.json").unlink()
    _fails(src, tmp_path / "out", "no config.json")


def test_truncated_shard(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=1)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    _fails(src, tmp_path / "out", "truncated")


def test_header_that_lies_about_sizes(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=1)
    f = src / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    entry = header["model.layers.0.mlp.up_proj.weight"]
    entry["shape"] = [entry["shape"][0] * 2, entry["shape"][1]]  # claims twice the data it has
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    _fails(src, tmp_path / "out", "claims .* bytes")


def test_index_naming_file_outside(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=2, shards=2)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    outside = tmp_path / "elsewhere.safetensors"
    first = next(iter(index["weight_map"]))
    (src / index["weight_map"][first]).rename(outside)
    for k, v in index["weight_map"].items():
        if v == index["weight_map"][first]:
            index["weight_map"][k] = "../elsewhere.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails(src, tmp_path / "out", "outside the checkpoint directory")


def test_index_naming_missing_shard(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=2, shards=2)
    (src / "model-00002-of-00002.safetensors").unlink()
    _fails(src, tmp_path / "out", "does not exist")


def test_non_float_weight(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=1)
    name = "model.layers.0.self_attn.q_proj.weight"

    def to_int8(t: dict) -> None:
        t[name] = torch.zeros_like(t[name], dtype=torch.int8)

    _rewrite(src / "model.safetensors", to_int8)
    _fails(src, tmp_path / "out", f"{name}.*not a float type")


def test_already_quantized_source(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=1, extra_config={"quantization_config": {"quant_method": "fp8"}})
    _fails(src, tmp_path / "out", "already has a quantization_config")


def test_existing_destination_needs_force(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=1)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    with pytest.raises(MxmixError, match="already exists; pass --force"):
        quantize_checkpoint(src, dst)
    assert (dst / "precious.txt").read_text() == "keep me"
    quantize_checkpoint(src, dst, force=True)
    assert not (dst / "precious.txt").exists() and (dst / "model.safetensors").is_file()


def test_destination_is_or_holds_source(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=1)
    with pytest.raises(MxmixError, match="is the source"):
        quantize_checkpoint(src, src, force=True)
    with pytest.raises(MxmixError, match="inside the source"):
        quantize_checkpoint(src, src / "sub")
    with pytest.raises(MxmixError, match="contains the source"):
        quantize_checkpoint(src, src.parent, force=True)
    assert (src / "model.safetensors").is_file() and not (src / "sub").exists()


def test_nonfinite_refused_naming_tensor(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("s", layers=2)
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(t: dict) -> None:
        t[name][3, 17] = float("-inf")

    _rewrite(src / "model.safetensors", poison)
    _fails(src, tmp_path / "out", rf"'{name}' contains NaN/Inf \(first at index \[3, 17\]\).*--allow-nonfinite")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"keep_last": 9}, "exceeds the model's 4 decoder layers"),
    ({"keep_first": -1}, "non-negative"),
    ({"dialect": "gguf"}, "unknown dialect"),
    ({"scale_mode": "nearest"}, "unknown scale mode"),
    ({"skip_list_style": "glob"}, "unknown skip-list style"),
    ({"max_shard_size": 0}, "positive"),
    ({"device": "tpu"}, "unknown device"),
    ({"keep_from_file": "/nonexistent/keep.txt"}, "file not found"),
])
def test_bad_options(make_synthetic, tmp_path: Path, kwargs: dict, match: str) -> None:
    _fails(make_synthetic("s", layers=4), tmp_path / "out", match, **kwargs)


def test_cuda_without_gpu(make_synthetic, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _fails(make_synthetic("s", layers=1), tmp_path / "out", "no CUDA GPU", device="cuda")


def test_failure_midway_leaves_nothing(make_synthetic, tmp_path: Path, monkeypatch) -> None:
    """A crash after some shards were written removes the partial output, and a --force target survives."""
    import mxmix.mx as mx

    src = make_synthetic("s", layers=4, shards=2)
    real = mx.quantize
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mx, "quantize", flaky)
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(src, dst, max_shard_size=50_000)
    assert calls["n"] == 20
    assert_nothing_written(dst)
    quantize_checkpoint(src, dst, keep_last=4)  # a previous good output ...
    before = load_tensors(dst)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(src, dst, force=True)
    after = load_tensors(dst)  # ... is untouched by a failed --force run
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_cli_errors_are_one_line(make_synthetic, tmp_path: Path, capsys) -> None:
    src = make_synthetic("s", layers=2)
    assert main(["quantize", str(src), str(tmp_path / "out"), "--keep-last", "3", "--dialect", "sglang"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mxmix: error: --keep-last 3 exceeds") and err.count("\n") == 1
    assert_nothing_written(tmp_path / "out")
    assert main(["quantize", str(src), str(tmp_path / "out"), "--max-shard-size", "lots"]) == 2
    assert "cannot read size" in capsys.readouterr().err


def test_cli_json(make_synthetic, tmp_path: Path, capsys) -> None:
    src = make_synthetic("s", layers=2)
    assert main(["quantize", str(src), str(tmp_path / "out"), "--keep-first", "1", "--json",
                 "--max-shard-size", "20KB"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["kept"] == 8 and len(data["shards"]) > 1
    assert data["skip_list"][0] == "lm_head" and data["modules"][0]["action"] in ("keep", "quantize")
