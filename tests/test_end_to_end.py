"""The seed's end-to-end story on the real SmolLM2, on CPU, through the CLI.

BF16 checkpoint → `mxmix quantize --keep-last 6 --skip-list-style prefix` (kept layers written as
`model.layers.N.` prefixes, as found in the wild) → `mxmix audit` clean for current SGLang and flagging the
#23467 state → `mxmix eval fidelity` gates → `mxmix serve` + `mxmix eval gsm8k` on the test file.

Fidelity gates, derived from measured levels (shared docs test-assets.md §4: all-MXFP8 weights on SmolLM2
read KLD ≈ 0.03 with FLOOR scales at ctx 512; RCEIL at ctx 256 on the embedded corpus reads ≈ 0.018):
  * the mixed checkpoint (as current SGLang runs it) stays below 0.03, the all-MXFP8 pilot level;
  * last-6-BF16 beats all-MXFP8 by a paired margin of more than 3 SE on the same tokens;
  * the sglang-23467 reading is measurably worse than the sglang reading (paired z > 3) and equals the
    all-MXFP8 checkpoint, because that engine state quantizes the kept layers online.
SmolLM2-135M scores ~0 on GSM8K: the harness must run every item and return a valid score and interval.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mxmix.cli.main import main

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parent / "data" / "gsm8k_mini.jsonl"
CTX, WINDOWS = "256", "4"
ALL_MXFP8_PILOT_KLD = 0.03


def cli(capsys, *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_seed_story_end_to_end(smollm2_bf16, tmp_path, capsys) -> None:
    mixed, allq, cache = tmp_path / "mixed-last6", tmp_path / "all-mxfp8", tmp_path / "cache"

    # 1. quantize: last 6 layers BF16, kept layers expressed as 'model.layers.N.' prefixes
    code, _ = cli(capsys, "quantize", str(smollm2_bf16), str(mixed), "--keep-last", "6",
                        "--skip-list-style", "prefix", "--no-progress")
    assert code == 0
    qc = json.loads((mixed / "config.json").read_text())["quantization_config"]
    assert {f"model.layers.{n}." for n in range(24, 30)} <= set(qc["ignored_layers"])
    assert cli(capsys, "quantize", str(smollm2_bf16), str(allq), "--no-progress")[0] == 0

    # 2. audit: clean for current SGLang, the #23467 state flagged
    code, audit = cli(capsys, "audit", str(mixed), "--engine", "sglang")
    assert code == 0 and audit["engines"][0]["clean"]
    code, audit = cli(capsys, "audit", str(mixed), "--engine", "sglang-23467")
    assert code == 1 and audit["engines"][0]["quantizes_bf16"] == 42

    # 3. fidelity gates
    common = ["eval", "fidelity", "--reference", str(smollm2_bf16), "--ctx", CTX, "--windows", WINDOWS,
              "--cache-dir", str(cache), "--no-progress"]
    code, full = cli(capsys, *common, "--candidate", str(allq))
    assert code == 0
    code, doc = cli(capsys, *common, "--candidate", str(mixed), "--as-engine", "sglang",
                    "--as-engine", "sglang-23467")
    assert code == 0 and doc["cache"]["hit"]  # the reference ran once
    kld_all = full["results"][0]["stats"]["kld"]
    cur, old = (r["stats"]["kld"] for r in doc["results"])
    assert cur["mean"] < ALL_MXFP8_PILOT_KLD
    assert cur["mean"] < kld_all["mean"] - 3 * kld_all["se"]
    paired = doc["paired"][0]
    assert (paired["a"], paired["b"]) == ("sglang", "sglang-23467")
    assert paired["difference"] > 0 and paired["z"] > 3
    assert old["mean"] == pytest.approx(kld_all["mean"], rel=1e-6)
    assert doc["results"][1]["as_engine"]["quantized_online"] == 42

    # 4. serve the mixed checkpoint and run the GSM8K harness against it
    proc = subprocess.Popen([sys.executable, "-m", "mxmix.cli.main", "serve", str(mixed), "--port", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        info = json.loads(proc.stdout.readline())
        out = tmp_path / "gsm8k.json"
        code, res = cli(capsys, "eval", "gsm8k", "--base-url", info["url"], "--data", str(DATA), "--num-shots", "2",
                        "--max-tokens", "24", "--num-threads", "4", "--out", str(out), "--no-progress")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0
    rows = sum(1 for line in DATA.read_text().splitlines() if line.strip())
    assert code == 0 and res["n"] == rows - 2 and res["errors"] == 0
    assert res["model"] == mixed.name
    lo, hi = res["ci95"]
    assert 0.0 <= lo <= res["score"] <= hi <= 1.0 and hi > lo
    items = json.loads(out.read_text())["items"]
    assert len(items) == rows - 2 and sum(1 for i in items if i["output"].strip()) >= len(items) // 2
