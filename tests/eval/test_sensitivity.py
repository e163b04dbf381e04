"""`mxmix sensitivity` on the real SmolLM2 (1 short window): ranking, budget, keep file, cross-checks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from mxmix.cli.main import main
from mxmix.eval.sensitivity import Unit, choose_keep, extra_bf16_bytes, heuristic_sets, predict

pytestmark = pytest.mark.slow
ARGS = ["--ctx", "64", "--windows", "1", "--no-progress"]


def test_greedy_choice_and_prediction_are_what_the_docs_say() -> None:
    units = [Unit("a", ["a"], 100, 0, cost=0.5), Unit("b", ["b"], 10, 1, cost=0.2), Unit("c", ["c"], 60, 2, cost=0.4),
             Unit("d", ["d"], 10, 3, cost=0.0)]
    # cost per byte: b 0.02, c 0.0067, a 0.005 -> b, c fit in 80 bytes; a does not; d costs nothing
    assert [u.name for u in choose_keep(units, 80)] == ["b", "c"]
    assert [u.name for u in choose_keep(units, 200)] == ["b", "c", "a"]
    assert predict(units, [units[1]], 1.1) == pytest.approx(1.1 * (1.1 - 0.2) / 1.1)
    assert extra_bf16_bytes((64, 128)) == 2 * 64 * 128 - 64 * 128 - 64 * 4
    h = heuristic_sets([], 5, 30)
    assert h["last 5 layers"] == [25, 26, 27, 28, 29]
    assert h["first 2 + last 3 layers"] == [0, 1, 27, 28, 29]


def test_sensitivity_cli_keep_file_feeds_quantize(smollm2_bf16, tmp_path, capsys) -> None:
    keep = tmp_path / "keep.json"
    cache = tmp_path / "cache"
    code = main(["sensitivity", str(smollm2_bf16), *ARGS, "--budget-layers", "2", "--out", str(keep),
                 "--cache-dir", str(cache), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    units = doc["units"]
    assert len(units) == 30 and [u["rank"] for u in units] == list(range(1, 31))
    assert all(a["kld_cost"] >= b["kld_cost"] for a, b in itertools.pairwise(units))
    proposal, last, firstlast = doc["comparisons"]
    assert proposal["extra_bytes"] <= doc["budget_bytes"] and len(proposal["kept_units"]) == 2
    assert set(proposal["kept_units"]) == {u["name"] for u in units[:2]}  # equal-size layers: the 2 costliest
    assert last["name"] == "last 2 layers" and firstlast["name"] == "first 1 + last 1 layers"
    assert proposal["kld"] < doc["kld_all_mxfp8"]
    rules = json.loads(keep.read_text())
    assert rules == doc["keep_rules"] and len(rules) == 14
    assert all(r.startswith(tuple(f"{u}." for u in proposal["kept_units"])) for r in rules)

    # what `mxmix quantize --keep-from-file` reads: the kept layers come out BF16, the rest MXFP8
    dst = tmp_path / "mx"
    assert main(["quantize", str(smollm2_bf16), str(dst), "--keep-from-file", str(keep), "--no-progress"]) == 0
    capsys.readouterr()
    from mxmix.checkpoint.layout import Checkpoint

    ck = Checkpoint.open(dst)
    for r in rules:
        assert ck.tensors[f"{r}.weight"].info.dtype == "BF16"
    quantized = [n for n, loc in ck.tensors.items() if n.endswith(".weight") and loc.info.dtype.startswith("F8")]
    assert len(quantized) == 210 - len(rules)

    # cross-check the top unit's cost by the runtime's path: its Linears swapped for MXFP8Linear modules
    # (codec quantize + the runtime forward), scored on the same cached reference windows
    import torch

    from mxmix.eval.fidelity import ReferenceSide, candidate_scores
    from mxmix.runtime.load import set_submodule
    from mxmix.runtime.mxfp8_linear import MXFP8Linear

    side = ReferenceSide(str(smollm2_bf16), (), ctx=64, windows=1, device="cpu", dtype="bfloat16", topk=1024,
                         cache_dir=str(cache), use_cache=True, progress=False)
    assert side.cache_hit
    model = side.model
    top = units[0]["name"]
    for name, mod in list(model.named_modules()):
        if name.startswith(top + ".") and isinstance(mod, torch.nn.Linear):
            set_submodule(model, name, MXFP8Linear.from_linear(mod))
    cost = float(np.mean(np.concatenate([s.kld for s in candidate_scores(model, side.windows, side.records,
                                                                            progress=False)])))
    assert cost == pytest.approx(units[0]["kld_cost"], rel=1e-5, abs=1e-9)


def test_bad_budgets_are_one_line_errors(smollm2_bf16, tmp_path, capsys) -> None:
    assert main(["sensitivity", str(smollm2_bf16), "--budget-bytes", "lots"]) == 2
    assert "cannot read size" in capsys.readouterr().err
    assert main(["sensitivity", str(tmp_path / "missing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    out = tmp_path / "k.json"
    out.write_text("[]")
    assert main(["sensitivity", str(smollm2_bf16), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
