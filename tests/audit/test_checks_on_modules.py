"""Audit runs its checks on the plan's Linear modules and the canonical column (no module views, no
per-row Decisions): those fast inputs must give exactly the findings of views + a path -> Decision
dict, on random and adversarial checkpoints (mixed precisions, missing / misnamed / orphaned scales,
stacked experts, odd names). Also: ``precisions_of`` against the property."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from mxmix.audit.config_vs_tensors import check_config_vs_tensors
from mxmix.audit.structure import check_structure
from mxmix.checkpoint.inspect import checkpoint_dialect, module_views
from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.modules import LinearModule, linear_modules, precisions_of
from mxmix.rules.plan import plan_checkpoint

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate", "experts", "w1", "3"]
SIZES = {"F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "F8_E8M0": 1, "BF16": 2, "F16": 2, "F32": 4}


def _write(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header, off = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(off))


def _random_checkpoint(rng: random.Random, d: Path) -> Path:
    d.mkdir()
    clean = rng.random() < 0.4
    tensors: dict[str, tuple[str, list[int]]] = {"model.embed_tokens.weight": ("BF16", [8, 32])}
    for _ in range(rng.randint(1, 30)):
        layer = rng.randint(0, 3)
        expert = rng.choice([None, None, rng.randint(0, 2)])
        parent = f"model.layers.{layer}.mlp.experts.{expert}" if expert is not None else \
            f"model.layers.{layer}.{rng.choice(['self_attn', 'mlp'])}"
        if rng.random() < 0.1:
            parent = rng.choice(["", "experts", "a.experts.x", "model.layers.1.mlp.experts", "lm_head"])
        fp8 = rng.random() < 0.7
        dtype = "F8_E4M3" if fp8 and (clean or rng.random() < 0.8) else rng.choice(["F8_E5M2", "BF16", "F16"])
        k = 32 * rng.randint(1, 2) if clean or rng.random() < 0.8 else rng.randint(1, 40)
        if rng.random() < 0.1:                                              # stacked experts
            base = f"model.layers.{layer}.mlp.experts.{rng.choice(['gate_up_proj', 'down_proj'])}"
            tensors[base] = (dtype, [2, 4, k])
            if dtype.startswith("F8_") and rng.random() < 0.9:
                tensors[base + "_scale_inv"] = (rng.choice(["U8", "F8_E8M0", "F32"]), [2, 4, -(-k // 32)])
            continue
        module = f"{parent}.{rng.choice(PROJ)}" if parent else rng.choice(PROJ)
        tensors[module + ".weight"] = (dtype, [4, k])
        if (dtype.startswith("F8_") and (clean or rng.random() < 0.85)) or (not clean and rng.random() < 0.1):
            suffix = "weight_scale_inv" if clean or rng.random() < 0.7 else "weight_scale"
            sdtype = rng.choice(["U8", "F8_E8M0"]) if clean or rng.random() < 0.8 else rng.choice(["F32", "BF16"])
            tensors[f"{module}.{suffix}"] = (sdtype, [4, -(-k // 32)] if clean or rng.random() < 0.8 else [2, 1])
        if rng.random() < 0.1:
            tensors[f"{module}.input_scale"] = ("F32", [1])
    for _ in range(rng.choice([0, 0, 1])):
        tensors.setdefault(rng.choice(["x.weight_scale_inv", "weight_scale", "model.norm.weight"]), ("U8", [4, 1]))
    items = list(tensors.items())
    rng.shuffle(items)
    _write(d / "model.safetensors", dict(items))
    qc: dict[str, object] = {}
    if rng.random() < 0.85:
        modules = [n.rpartition(".")[0] for n in tensors if n.endswith(".weight")]
        rules = rng.sample(modules, min(len(modules), rng.randint(0, 4)))
        rules += rng.sample(["lm_head", "re:.*experts.*", "re:(bad", "model.layers.1.", "gate", "*.q_proj"], rng.randint(0, 2))
        qc = {"quant_method": rng.choice(["mxfp8", "fp8", "compressed-tensors", "modelopt"]),
              "ignored_layers": rules, "modules_to_not_convert": rules[::-1] if rng.random() < 0.3 else rules}
    (d / "config.json").write_text(json.dumps({"quantization_config": qc} if qc else {}))
    return d


def test_checks_on_modules_and_column_equal_checks_on_views_and_decisions(tmp_path: Path) -> None:
    rng = random.Random(5)
    seen_findings = 0
    for i in range(250):
        ckpt = Checkpoint.open(_random_checkpoint(rng, tmp_path / f"c{i}"))
        plan = plan_checkpoint(ckpt, ["canonical", "sglang", "vllm"])
        views = module_views(ckpt, plan.modules)
        dialect = checkpoint_dialect(ckpt)
        column = plan.column("canonical") if plan.quant_method else None
        reference = dict(zip(plan.paths, list(column))) if column is not None else None
        fast = check_config_vs_tensors(ckpt, plan.modules, column, dialect)
        assert fast == check_config_vs_tensors(ckpt, views, reference, dialect), i
        assert check_structure(plan.modules) == check_structure(views), i
        assert precisions_of(plan.modules) == [v.precision for v in views] == [m.precision for m in plan.modules]
        seen_findings += bool(fast)
    assert seen_findings > 50          # the cases do exercise findings, not only clean checkpoints


def test_precisions_of_equals_the_property_on_hand_made_modules() -> None:
    rng = random.Random(7)
    dtypes = ["F8_E4M3", "F8_E5M2", "BF16", "F32", "U8"]
    for _ in range(2000):
        mods = [LinearModule(f"m{j}", f"m{j}.weight", rng.choice(dtypes), (4, 32), None, "x",
                             rng.choice([None, f"m{j}.weight_scale_inv"]), False, None,
                             rng.choice([None, "U8", "F8_E8M0", "F32", "BF16"]))
                for j in range(rng.randint(0, 6))]
        assert precisions_of(mods) == [m.precision for m in mods]


def test_audit_result_views_are_built_on_first_use(tmp_path: Path) -> None:
    from mxmix.audit import audit_checkpoint

    d = _random_checkpoint(random.Random(3), tmp_path / "c")
    result = audit_checkpoint(d)
    assert result._views is None
    assert result.views == module_views(Checkpoint.open(d)) == module_views(Checkpoint.open(d), linear_modules(Checkpoint.open(d)))
    assert f"modules:    {len(result.views)} Linear" in result.format()


def test_audit_after_inspect_on_one_open_reads_the_views_and_agrees(tmp_path: Path) -> None:
    from mxmix.audit import audit_checkpoint
    from mxmix.checkpoint.inspect import inspect_checkpoint

    rng = random.Random(13)
    for i in range(40):
        d = _random_checkpoint(rng, tmp_path / f"c{i}")
        alone = audit_checkpoint(d)
        ckpt = Checkpoint.open(d)
        inspect_checkpoint(ckpt)
        assert ckpt.built("module_views") is not None
        shared = audit_checkpoint(ckpt)
        assert shared._views is not None                      # the checks read the views inspect built
        assert shared.to_dict() == alone.to_dict() and shared.format() == alone.format()
        assert shared.views == alone.views
