"""The audit checks' column-wise fast paths against their view-by-view definitions, on random and
adversarial module views (mixed precisions, missing / shared / misnamed / orphaned scales, odd shapes)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from mxmix.audit.config_vs_tensors import _orphan_scales, _tensor_lists, tensor_lists_by_view
from mxmix.audit.structure import _mixed_groups, check_structure
from mxmix.checkpoint.inspect import ModuleView
from mxmix.checkpoint.layout import TensorColumns
from mxmix.checkpoint.modules import LinearTable

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate", "experts", "w1"]
ENDINGS = [(), (".weight_scale_inv", "_scale_inv"), (".weight_scale", "_scale")]


class FakeCheckpoint:
    """What the checks read of a Checkpoint: ``columns``, ``row_of``, ``tensors[name].info`` and ``derived``."""

    def __init__(self, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        names = list(tensors)
        self.columns = TensorColumns(names, [t[0] for t in tensors.values()], [t[1] for t in tensors.values()],
                                     [0] * len(names))
        self.tensors = {n: SimpleNamespace(info=SimpleNamespace(dtype=d, shape=s)) for n, (d, s) in tensors.items()}
        self._derived: dict[str, Any] = {}

    def derived(self, key: str, build: Any) -> Any:
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]

    def built(self, key: str) -> Any:
        return self._derived.get(key)

    @property
    def row_of(self) -> dict[str, int]:
        return self.derived("row_of", lambda: {n: i for i, n in enumerate(self.columns.names)})


def _random_case(rng: random.Random) -> tuple[FakeCheckpoint, list[ModuleView]]:
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    views = []
    clean = rng.random() < 0.5        # mostly well-formed: the fast path answers alone
    for _ in range(rng.randint(0, 14)):
        layer = rng.randint(0, 2)
        expert = rng.choice([None, None, rng.randint(0, 2)])
        stacked = rng.random() < 0.1
        parent = f"model.layers.{layer}.mlp.experts.{expert}" if expert is not None else f"model.layers.{layer}.mlp"
        path = parent if stacked else f"{parent}.{rng.choice(PROJ)}"
        if rng.random() < 0.05:
            path = rng.choice(["experts", "experts.1.up_proj", "q_proj", "a.experts"])
        fp8 = rng.random() < 0.7
        dtype = "F8_E4M3" if fp8 and (clean or rng.random() < 0.8) else (rng.choice(["F8_E5M2", "BF16"]) if fp8 else "BF16")
        k = 32 * rng.randint(1, 3) if clean or rng.random() < 0.8 else rng.randint(1, 70)
        shape = (16, k) if not stacked else (4, 16, k)
        weight = f"{path}.weight" if not stacked else f"{path}.w{len(views)}"
        tensors[weight] = (dtype, shape)
        scale = None
        if (dtype.startswith("F8_") and (clean or rng.random() < 0.85)) or (not clean and rng.random() < 0.1):
            suffix = rng.choice(["weight_scale_inv", "weight_scale"]) if not clean else "weight_scale_inv"
            scale = f"{path}.{suffix}" if rng.random() < 0.9 else rng.choice(["weight_scale", f"{path}.scales"])
            if not clean and views and rng.random() < 0.1:
                scale = views[-1].scale or scale                      # two views share one scale
            sshape = (*shape[:-1], -(-k // 32)) if clean or rng.random() < 0.8 else (16, 5)
            tensors[scale] = (rng.choice(["U8", "F8_E8M0"]) if clean or rng.random() < 0.8 else "F32", sshape)
        precision = "mxfp8" if dtype == "F8_E4M3" and scale else ("fp8" if dtype.startswith("F8_") else "bf16")
        if not clean and rng.random() < 0.1:
            precision = rng.choice(["mxfp8", "bf16", "fp8"])
        views.append(ModuleView(path, "x", layer, expert, stacked, weight, dtype, shape, precision, scale, {}, 0, 0))
    for _ in range(rng.choice([0, 0, 1, 2])):                           # orphans and other tensors
        name = rng.choice(["lm_head.weight_scale_inv", "model.norm.weight", "weight_scale", "x.weight_scale",
                           "weight_scale_inv", "model.layers.9.mlp.up_proj.weight_scale_inv"])
        tensors.setdefault(name, ("U8", (16, 1)))
    if rng.random() < 0.3:
        order = list(tensors.items())
        rng.shuffle(order)
        tensors = dict(order)
    return FakeCheckpoint(tensors), views


def _as_own(ckpt: FakeCheckpoint, views: list[ModuleView], rng: random.Random) -> None:
    """Register ``views`` as the checkpoint's own Linear table (scale rows known, as ``linear_table``
    finds them), directly or as the module views of that table."""
    scale_rows = [ckpt.row_of[v.scale] if v.scale else -1 for v in views]
    weight_rows = [ckpt.row_of[v.weight] for v in views]
    if rng.random() < 0.5:
        ckpt._derived["linear_modules"] = LinearTable(views, weight_rows, scale_rows)   # type: ignore[arg-type]
    else:
        ckpt._derived["linear_modules"] = LinearTable([object() for _ in views], weight_rows, scale_rows)  # type: ignore[misc]
        ckpt._derived["module_views"] = list(views)


def test_tensor_lists_and_orphans_equal_the_view_by_view_definition() -> None:
    rng = random.Random(2)
    fast_answers = 0
    for _ in range(4000):
        ckpt, views = _random_case(rng)
        if rng.random() < 0.5:
            _as_own(ckpt, views, rng)
        endings = rng.choice(ENDINGS)
        mx_rules = rng.random() < 0.85
        lists, known = _tensor_lists(ckpt, views, mx_rules, endings)   # type: ignore[arg-type]
        assert lists == tensor_lists_by_view(ckpt, views, mx_rules, endings)   # type: ignore[arg-type]
        assert _orphan_scales(ckpt, views, known) == _orphan_scales(ckpt, views)   # type: ignore[arg-type]
        fast_answers += known is not None
    assert fast_answers > 500


def test_structure_fast_pass_equals_the_definition() -> None:
    rng = random.Random(4)
    mixed = 0
    for _ in range(4000):
        _, views = _random_case(rng)
        found = check_structure(views)
        assert found == _mixed_groups(views)
        mixed += bool(found)
    assert 200 < mixed < 3800


def test_moe_of_parent_memo_equals_the_definition() -> None:
    from mxmix.audit.structure import _moe_of_parent, _moe_of_parent_memo

    rng = random.Random(6)
    parts = ["model", "layers", "3", "mlp", "experts", "experts", "1", "", "x", "shared_experts"]
    for _ in range(300):
        memo: dict[str, str | None] = {"": None}
        parents = [".".join(rng.choice(parts) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 30))]
        parents += ["experts", ".experts", "a..experts", "experts.experts.x", "a.experts.1.experts", "a.b"]
        rng.shuffle(parents)
        for _ in range(2):                       # second pass: answered from the memo
            for p in parents:
                assert _moe_of_parent_memo(p, memo) == _moe_of_parent(p), p


def _moe_layout(rng: random.Random) -> list[ModuleView]:
    """A larger MoE-like layout, mostly one precision: the minority-first path of the structure check."""
    views = []
    majority = rng.choice(["mxfp8", "bf16"])
    others = [p for p in ("mxfp8", "bf16", "fp8") if p != majority]
    for layer in range(rng.randint(1, 4)):
        base = rng.choice([f"model.layers.{layer}", f"m.experts.{layer}", f"experts.{layer}", ""])
        dot = base + "." if base else ""
        names = [f"{dot}self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [f"{dot}mlp.experts.{e}.{p}" for e in range(rng.randint(0, 6)) for p in ("gate_proj", "up_proj", "down_proj")]
        names += rng.sample(["q_proj", "k_proj", "gate_proj", "up_proj", f"{dot}mlp.experts", f"{dot}mlp.gate",
                             f"{dot}mlp.experts.x.up_proj", f"{dot}mlp.experts.3.experts.1.up_proj"], rng.randint(0, 3))
        for name in names:
            expert = 1 if ".experts." in "." + name and rng.random() < 0.95 else None
            stacked = name.endswith(".mlp.experts") and rng.random() < 0.5
            views.append(ModuleView(name, "x", layer, expert, stacked, name + ".weight", "BF16", (16, 32),
                                    majority, None, {}, 0, 0))
    for _ in range(rng.choice([0, 1, 1, 2, 3])):                 # a few rows in a minority precision
        i = rng.randrange(len(views)) if views else 0
        if views:
            views[i] = views[i]._replace(precision=rng.choice(others))
    if rng.random() < 0.3:
        rng.shuffle(views)
    return views


def test_structure_minority_path_equals_the_definition() -> None:
    from mxmix.audit.structure import _any_group_mixed, _first_mismatch

    rng = random.Random(8)
    mixed = 0
    for _ in range(3000):
        views = _moe_layout(rng)
        precisions = [v.precision for v in views]
        assert _any_group_mixed(views, precisions) == _first_mismatch(views, precisions), views
        assert check_structure(views) == _mixed_groups(views)
        mixed += bool(_first_mismatch(views, precisions))
    assert 300 < mixed < 2700
