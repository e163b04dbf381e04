"""Columns (a reading's decisions kept as decided paths + a quiet verdict) against deciding every path
one by one, and the plan and audit computations that work on columns against their row-by-row
definitions."""

from __future__ import annotations

import random

import pytest
from test_batch_readings import _path, _rule  # tests/rules is on sys.path (no __init__.py)

from mxmix.audit.engines import misread_rows
from mxmix.checkpoint.modules import LinearModule
from mxmix.errors import MxmixError
from mxmix.rules import ENGINES, compile_rules, reference_rules
from mxmix.rules import reading as reading_module
from mxmix.rules.column import Column, RowIndex
from mxmix.rules.decision import ERROR, KEEP, QUANTIZE, Decision
from mxmix.rules.plan import Plan, PlanRow
from mxmix.rules.primitives import Backend


@pytest.mark.parametrize("batch_min", [0, 256])
@pytest.mark.parametrize("seed", range(4))
def test_decide_column_equals_reference(seed: int, batch_min: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading_module, "BATCH_MIN", batch_min)
    rng = random.Random(seed)
    for _ in range(15):
        rules = [_rule(rng) for _ in range(rng.choice([0, 1, 3, 8, 30]))]
        if rng.random() < 0.5:
            rules = [r for r in rules if not r.startswith("re:") and not set("*?[") & set(r)]
        distinct = list(dict.fromkeys(_path(rng) for _ in range(rng.choice([1, 40, 300]))))
        asked = [rng.choice(distinct) for _ in range(rng.choice([1, 50, 400]))]   # repeats, some unasked
        distinct = list(dict.fromkeys(asked))
        backend = Backend.shared()
        rows = RowIndex(asked)
        for engine in ENGINES:
            try:
                bulk = compile_rules(rules, engine, backend=backend)
            except MxmixError:
                continue
            ref = reference_rules(rules, engine)
            expected = [ref.decide(p) for p in asked]
            col = bulk.decide_column(asked, distinct if rng.random() < 0.5 else None, rows)
            assert len(col) == len(asked)
            assert [col[i] for i in range(len(asked))] == expected, (engine, rules)   # before materialising
            assert col.outcomes() == [d.decision for d in expected]
            assert list(col) == expected and col == expected and col[1:3] == expected[1:3]
            assert all(col.outcome_of(p) == ref.decide(p).decision for p in distinct)
            truth: dict[str, list[int]] = {}
            for i, p in enumerate(asked):
                truth.setdefault(p, []).append(i)
            assert col.rows_of() == truth


def _module(path: str, quantized: bool) -> LinearModule:
    return LinearModule(path, f"{path}.weight", "F8_E4M3" if quantized else "BF16", (16, 32), None, "x",
                        f"{path}.weight_scale_inv" if quantized else None, False, None)


def _random_column(rng: random.Random, engine: str, asked: list[str]) -> Column:
    outcomes = [KEEP, QUANTIZE, ERROR]
    distinct = list(dict.fromkeys(asked))
    decided = [p for p in distinct if rng.random() < 0.3]
    found = {p: Decision(p, engine, rng.choice(outcomes), rng.choice([None, "r1", "r2"]),
                         rng.choice(["why 1", "why 22", "no rule matches"])) for p in decided}
    if rng.random() < 0.4:   # every path decided
        found.update((p, Decision(p, engine, rng.choice(outcomes), None, "x")) for p in distinct if p not in found)
        return Column(engine, asked, found, None)
    return Column(engine, asked, found, (rng.choice([QUANTIZE, QUANTIZE, KEEP, ERROR]), "quiet 3"))


def test_plan_rows_disagreements_and_misreads_follow_the_columns() -> None:
    rng = random.Random(11)
    for _ in range(200):
        n = rng.randint(0, 30)
        paths = [f"m.{rng.randint(0, 12)}" for _ in range(n)]   # repeats: stacked experts share a path
        modules = [_module(p, rng.random() < 0.6) for p in paths]
        runtime = [p.rsplit(".", 1)[0] if rng.random() < 0.5 else p for p in paths]
        engines = ["canonical", "sglang", "vllm"]
        columns = {e: _random_column(rng, e, rng.choice([paths, runtime])) for e in engines}
        plan = Plan("ck", "sglang", "mxfp8", engines, {}, modules, [], columns)
        decisions = {e: list(columns[e]) for e in engines}
        expected_rows = [PlanRow(m, {e: decisions[e][i] for e in engines}) for i, m in enumerate(modules)]
        assert plan.rows == expected_rows
        assert plan.distinct_paths == list(dict.fromkeys(paths))
        assert (plan.distinct_paths is plan.paths) == (len(set(paths)) == len(paths))
        assert plan.disagreements() == {e: sum(r.disagrees(e) for r in expected_rows) for e in engines}
        quantized = [m.quantized for m in modules]
        bf16 = [i for i, q in enumerate(quantized) if not q]
        for e in engines:
            ds = decisions[e]
            keeps = [i for i, (d, q) in enumerate(zip(ds, quantized)) if d.decision == KEEP and q]
            quants = [i for i, (d, q) in enumerate(zip(ds, quantized)) if d.decision == QUANTIZE and not q]
            errors = [i for i, d in enumerate(ds) if d.decision == ERROR]
            assert misread_rows(columns[e], quantized, bf16) == (keeps, quants, errors)



def test_backend_ends_component_memo_answers_each_list() -> None:
    from mxmix.rules.primitives import ends_component

    backend = Backend.shared()
    rng = random.Random(9)
    lists = [[_path(rng) for _ in range(rng.randint(0, 30))] for _ in range(6)]
    for names in (("qkv_proj", "gate_up_proj"), ("qkv_proj", "gate_up_proj", "experts"), ("experts",)):
        for paths in lists * 2:
            got = backend.ends_component(paths, names)
            assert got == ends_component(paths, names) == {i for i, p in enumerate(paths) if p.endswith(names)}
            got.add(-1)   # the caller's own set: the memo is not changed
