"""`mxmix inspect`: headers-only summary, checked against an independent reading with safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.checkpoint.inspect import checkpoint_dialect, expected_scale_shape, inspect_checkpoint
from mxmix.checkpoint.layout import Checkpoint
from mxmix.cli.main import main
from mxmix.example.synthetic import SyntheticSpec, write_synthetic_checkpoint

DTYPE_OF = {"torch.bfloat16": "BF16", "torch.float8_e4m3fn": "F8_E4M3", "torch.uint8": "U8", "torch.float32": "F32"}
SIZE = {"BF16": 2, "F8_E4M3": 1, "U8": 1, "F32": 4}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    src = write_synthetic_checkpoint(root / "bf16", SyntheticSpec(layers=5, moe="experts", experts=3), shards=3)
    dst = root / "mixed"
    quantize_checkpoint(src, dst, keep=["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                                        "model.layers.1.self_attn.v_proj"], keep_last=1,
                        max_shard_size=60_000, progress=False)
    return dst


def independent(ckpt: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():  # noqa: SIM118
                s = h.get_slice(k)
                out[k] = (s.get_dtype(), tuple(s.get_shape()))
    return out


def test_totals_match_an_independent_reading(mixed):
    s = inspect_checkpoint(Checkpoint.open(mixed))
    ref = independent(mixed)
    assert s.shards == len(list(mixed.glob("*.safetensors"))) > 1 and s.tensors == len(ref)
    by_dtype: dict[str, list[int]] = {}
    for dtype, shape in ref.values():
        n = 1
        for d in shape:
            n *= d
        row = by_dtype.setdefault(dtype, [0, 0])
        row[0] += 1
        row[1] += n
    assert {d: [r["tensors"], r["params"]] for d, r in s.by_dtype.items()} == by_dtype
    linear = {k: v for k, v in ref.items()
              if k.endswith(("_proj.weight", ".mlp.gate.weight")) or k == "lm_head.weight"}   # router gate: Linear
    fp8 = sum(_numel(sh) for dt, sh in linear.values() if dt == "F8_E4M3")
    total = sum(_numel(sh) for _, sh in linear.values())
    assert s.mxfp8_percent == pytest.approx(100 * fp8 / total)
    assert s.linear_params == total
    assert s.linear_by_precision["mxfp8"]["modules"] == sum(dt == "F8_E4M3" for dt, _ in linear.values())
    assert sum(r["bytes"] for r in s.linear_by_precision.values()) + s.other_bytes == sum(
        _numel(sh) * SIZE[dt] for dt, sh in ref.values())


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_modules_companions_and_layers(mixed):
    s = inspect_checkpoint(Checkpoint.open(mixed))
    mods = {m.path: m for m in s.modules}
    q0 = mods["model.layers.0.self_attn.q_proj"]
    assert q0.precision == "mxfp8" and q0.companions == {
        "weight_scale_inv": ("U8", expected_scale_shape(q0.shape))}
    assert mods["model.layers.1.self_attn.q_proj"].precision == "bf16"
    assert mods["model.layers.1.self_attn.q_proj"].companions == {}
    assert mods["model.layers.2.mlp.experts.1.down_proj"].kind == "experts.down_proj"
    assert mods["lm_head"].precision == "bf16" and mods["lm_head"].layer is None
    runs = [(r["first"], r["last"], r["kinds"]) for r in s.layers]
    assert [(a, b) for a, b, _ in runs] == [(0, 0), (1, 1), (2, 3), (4, 4)]
    assert runs[1][2]["q_proj"] == "bf16" and runs[1][2]["o_proj"] == "mxfp8"
    assert set(runs[3][2].values()) == {"bf16"}
    assert {k: v for k, v in runs[2][2].items() if v != "mxfp8"} == {"gate": "bf16"}   # the router stays BF16
    assert runs[0][2] == runs[2][2]


def test_inspect_reads_no_tensor_data(mixed, monkeypatch):
    import mxmix.checkpoint.layout as layout
    import mxmix.checkpoint.safetensors_header as sh

    def boom(*a, **k):
        raise AssertionError("tensor data read")

    monkeypatch.setattr(sh, "read_tensor", boom)
    monkeypatch.setattr(layout, "read_tensor", boom)
    assert inspect_checkpoint(Checkpoint.open(mixed)).tensors > 0


@pytest.mark.parametrize(("dialect", "expected"), [("sglang", "sglang"), ("modelopt", "modelopt"),
                                                   ("compressed-tensors", "compressed-tensors")])
def test_dialects_recognised(tmp_path, dialect, expected):
    src = write_synthetic_checkpoint(tmp_path / "bf16", SyntheticSpec(layers=2))
    dst = tmp_path / "q"
    quantize_checkpoint(src, dst, dialect=dialect, progress=False)
    s = inspect_checkpoint(Checkpoint.open(dst))
    assert s.dialect == expected and s.mxfp8_percent > 0
    suffix = {"sglang": "weight_scale_inv"}.get(dialect, "weight_scale")
    assert all(suffix in m.companions for m in s.modules if m.precision == "mxfp8")
    assert checkpoint_dialect(Checkpoint.open(src)) == "plain"


def test_modelopt_side_file_alone_is_recognised(tmp_path):
    src = write_synthetic_checkpoint(tmp_path / "c", SyntheticSpec(layers=1))
    (src / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "MXFP8",
                                                                           "exclude_modules": ["lm_head"]}}))
    s = inspect_checkpoint(Checkpoint.open(src))
    assert s.dialect == "modelopt"
    assert s.skip_keys == {"hf_quant_config.quantization.exclude_modules": ["lm_head"]}


def test_cli_json_and_text(mixed, capsys):
    assert main(["inspect", str(mixed), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dialect"] == "sglang" and len(data["modules"]) == data["linear_modules"]
    assert data["layers"][1]["kinds"]["k_proj"] == "bf16"
    assert main(["inspect", str(mixed)]) == 0
    text = capsys.readouterr().out
    assert "Linear params in MXFP8:" in text and "weight_scale_inv U8" in text and "decoder layers:" in text
    single = next(mixed.glob("*.safetensors"))
    assert main(["inspect", str(single)]) == 0     # a lone shard works too (no config, dialect plain)
    assert "dialect:    plain" in capsys.readouterr().out
