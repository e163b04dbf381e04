"""`mxmix eval fidelity` on the real SmolLM2: self-comparison, the reference cache, top-K vs exact, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxmix.cli.main import main
from mxmix.eval import logits_cache as lc
from mxmix.eval.fidelity import FidelityConfig, ReferenceSide, evaluate, tokenize_windows

pytestmark = pytest.mark.slow

CTX, WINDOWS = 128, 3


def test_windows_score_the_second_half(smollm2_bf16) -> None:
    from mxmix.eval.corpus import default_text
    from mxmix.eval.models import load_tokenizer

    tok = load_tokenizer(smollm2_bf16)
    w = tokenize_windows(tok, default_text(), CTX, WINDOWS)
    assert len(w) == WINDOWS and all(len(x) == CTX for x in w)
    side = ReferenceSide(str(smollm2_bf16), (), ctx=CTX, windows=WINDOWS, device="cpu", dtype="bfloat16",
                         topk=None, cache_dir=None, use_cache=False, progress=False)
    assert [len(r) for r in side.records] == [CTX - 1 - CTX // 2] * WINDOWS  # llama.cpp: 63 for 128
    assert side.records[0].targets.tolist() == side.windows[0][CTX // 2 + 1:]


def test_reference_against_itself_is_zero(smollm2_bf16, tmp_path) -> None:
    doc = evaluate(FidelityConfig(str(smollm2_bf16), str(smollm2_bf16), ctx=CTX, windows=WINDOWS,
                                  cache_dir=str(tmp_path), progress=False))
    s = doc["results"][0]["stats"]
    assert s["count"] == WINDOWS * (CTX - 1 - CTX // 2)
    assert abs(s["kld"]["mean"]) < 1e-6 and s["same_top"]["p"] == 1.0
    assert s["ppl"]["ratio"]["value"] == pytest.approx(1.0, abs=1e-6)


def test_cache_is_reused_and_damage_is_survived(smollm2_bf16, smollm2_mixed, tmp_path) -> None:
    cfg = FidelityConfig(str(smollm2_bf16), str(smollm2_mixed), ctx=CTX, windows=WINDOWS, cache_dir=str(tmp_path),
                         progress=False)
    first = evaluate(cfg)
    files = list(tmp_path.glob("*.npz"))
    assert not first["cache"]["hit"] and len(files) == 1
    second = evaluate(cfg)
    assert second["cache"]["hit"]
    assert second["results"][0]["stats"] == first["results"][0]["stats"]
    files[0].write_bytes(b"garbage")
    third = evaluate(cfg)  # warns, recomputes, rewrites
    assert not third["cache"]["hit"]
    assert third["results"][0]["stats"]["kld"]["mean"] == pytest.approx(first["results"][0]["stats"]["kld"]["mean"])
    assert lc.load_records(files[0]) is not None
    # a different window count is a different key
    other = evaluate(FidelityConfig(str(smollm2_bf16), str(smollm2_mixed), ctx=CTX, windows=2,
                                    cache_dir=str(tmp_path), progress=False))
    assert not other["cache"]["hit"] and len(list(tmp_path.glob("*.npz"))) == 2


def test_topk_cache_is_a_tight_lower_bound_of_the_exact_kld(smollm2_bf16, smollm2_mixed) -> None:
    base = dict(reference=str(smollm2_bf16), candidate=str(smollm2_mixed), ctx=CTX, windows=WINDOWS,
                use_cache=False, progress=False)
    exact = evaluate(FidelityConfig(**base, topk=None))["results"][0]["stats"]
    approx = evaluate(FidelityConfig(**base, topk=1024))["results"][0]["stats"]
    e, a = exact["kld"]["mean"], approx["kld"]["mean"]
    assert 0 < a <= e * (1 + 1e-6) and a > 0.9 * e
    assert exact["same_top"] == approx["same_top"]  # the argmax and the NLLs are stored exactly
    assert exact["ppl"] == approx["ppl"]


def test_cli_json_and_errors(smollm2_bf16, smollm2_mixed, tmp_path, capsys) -> None:
    argv = ["eval", "fidelity", "--reference", str(smollm2_bf16), "--candidate", str(smollm2_mixed), "--ctx",
            str(CTX), "--windows", "2", "--cache-dir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--json", "--as-engine", "sglang", "--as-engine", "sglang-23467"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["engine"] for r in doc["results"]] == ["sglang", "sglang-23467"]
    assert doc["paired"][0]["b"] == "sglang-23467"
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Mean    KLD:" in text and "Same top p:" in text and "from cache" in text
    assert main([*argv, "--as-engine", "nonsense"]) == 2
    assert "unknown engine" in capsys.readouterr().err
    assert main(["eval", "fidelity", "--reference", str(tmp_path / "nope"), "--candidate", str(smollm2_mixed)]) == 2
    assert "no such" in capsys.readouterr().err
    assert main([*argv, "--ctx", "100000"]) == 2
    assert "fewer than one" in capsys.readouterr().err


def test_records_round_trip_through_the_cache_file(tmp_path) -> None:
    import torch

    from mxmix.eval.stats import base_record

    rng = np.random.default_rng(0)
    recs = [base_record(torch.tensor(rng.normal(0, 3, (20, 50))), torch.tensor(rng.integers(0, 50, 20)), topk=k)
            for k in (None, 8)]
    p = tmp_path / "x.npz"
    lc.save_records(p, recs, {"a": 1})
    back = lc.load_records(p)
    for r, b in zip(recs, back):
        for f in ("targets", "nll", "argmax", "counts", "index", "logp", "tail"):
            np.testing.assert_array_equal(getattr(r, f), getattr(b, f))
