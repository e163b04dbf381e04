"""`mxmix inspect` and `mxmix audit` print exactly what the library computes (JSON and tables), with
the audit's exit status, and refuse a missing checkpoint in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mxmix.audit import audit_checkpoint
from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.checkpoint.inspect import format_summary, inspect_checkpoint
from mxmix.checkpoint.layout import Checkpoint
from mxmix.cli.main import main


@pytest.fixture
def moe_prefix(make_synthetic, tmp_path: Path) -> Path:
    """A 2-shard MoE checkpoint whose last layer is listed as a 'model.layers.N.' prefix (findings)."""
    src = make_synthetic("bf16", layers=3, moe="experts", experts=4, shards=2)
    dst = tmp_path / "mixed"
    quantize_checkpoint(src, dst, keep_last=1, skip_list_style="prefix", progress=False)
    return dst


def test_inspect_prints_the_summary(moe_prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = inspect_checkpoint(Checkpoint.open(moe_prefix))
    assert main(["inspect", str(moe_prefix), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary.to_dict(), default=str))
    assert main(["inspect", str(moe_prefix), "--modules", "5"]) == 0
    assert capsys.readouterr().out == format_summary(summary, max_modules=5) + "\n"


def test_audit_prints_the_result_and_exits_with_its_code(moe_prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for engines in ([], ["sglang", "sglang-23467"]):
        result = audit_checkpoint(moe_prefix, engines=engines or None)
        flags = [a for e in engines for a in ("--engine", e)]
        assert main(["audit", str(moe_prefix), *flags, "--json"]) == result.exit_code
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result.to_dict(), default=str))
        assert main(["audit", str(moe_prefix), *flags]) == result.exit_code
        assert capsys.readouterr().out == result.format() + "\n"
    assert result.exit_code == 1           # the #23467 state misreads the prefix-listed layer


def test_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("inspect", "audit"):
        assert main([command, str(tmp_path / "nope")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mxmix: error: ") and err.count("\n") == 1
