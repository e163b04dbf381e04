"""`mxmix eval fidelity` on the real SmolLM2: windows, self-comparison, the reference cache, top-K vs exact, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxmix.cli.main import main
from mxmix.eval import logits_cache as lc
from mxmix.eval import stats as st
from mxmix.eval.fidelity import FidelityConfig, ReferenceSide, evaluate, scored_logits, window_targets

pytestmark = pytest.mark.slow

CTX, WINDOWS = 128, 2


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fidelity-cache")


@pytest.fixture(scope="module")
def first_run(smollm2_bf16, smollm2_mixed, cache_dir):
    """The mixed checkpoint against BF16, computing (and caching) the reference."""
    return evaluate(FidelityConfig(str(smollm2_bf16), str(smollm2_mixed), ctx=CTX, windows=WINDOWS,
                                   cache_dir=str(cache_dir), progress=False))


def test_windows_score_the_second_half(smollm2_bf16, first_run, cache_dir) -> None:
    assert not first_run["cache"]["hit"]
    side = ReferenceSide(str(smollm2_bf16), (), ctx=CTX, windows=WINDOWS, device="cpu", dtype="bfloat16",
                         topk=1024, cache_dir=str(cache_dir), use_cache=True, progress=False)
    assert side.cache_hit and len(side.windows) == WINDOWS and all(len(w) == CTX for w in side.windows)
    assert [len(r) for r in side.records] == [CTX - 1 - CTX // 2] * WINDOWS  # llama.cpp: 63 at 128
    assert side.records[0].targets.tolist() == side.windows[0][CTX // 2 + 1:]
    assert first_run["scored_tokens"] == WINDOWS * (CTX - 1 - CTX // 2)


def test_reference_against_itself_is_zero(smollm2_bf16, first_run, cache_dir) -> None:
    doc = evaluate(FidelityConfig(str(smollm2_bf16), str(smollm2_bf16), ctx=CTX, windows=WINDOWS,
                                  cache_dir=str(cache_dir), progress=False))
    s = doc["results"][0]["stats"]
    assert doc["cache"]["hit"]
    assert abs(s["kld"]["mean"]) < 1e-6 and s["same_top"]["p"] == 1.0
    assert s["ppl"]["ratio"]["value"] == pytest.approx(1.0, abs=1e-6)
    mixed = first_run["results"][0]["stats"]
    assert 1e-4 < mixed["kld"]["mean"] < 0.1 and mixed["same_top"]["p"] < 1.0


def test_cache_hit_is_identical_and_damage_is_survived(smollm2_bf16, smollm2_mixed, first_run, tmp_path,
                                                       cache_dir) -> None:
    cfg = FidelityConfig(str(smollm2_bf16), str(smollm2_mixed), ctx=CTX, windows=WINDOWS, cache_dir=str(cache_dir),
                         progress=False)
    second = evaluate(cfg)
    assert second["cache"]["hit"] and second["results"][0]["stats"] == first_run["results"][0]["stats"]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in cache_dir.glob("*.npz"):
        (damaged / f.name).write_bytes(f.read_bytes()[:100])  # truncated copy
    third = evaluate(FidelityConfig(**{**cfg.__dict__, "cache_dir": str(damaged)}))  # warns, recomputes
    assert not third["cache"]["hit"]
    assert third["results"][0]["stats"]["kld"]["mean"] == pytest.approx(
        first_run["results"][0]["stats"]["kld"]["mean"], rel=1e-9)
    assert all(lc.load_records(f) is not None for f in damaged.glob("*.npz"))  # rewritten whole


def test_topk_record_is_close_to_the_exact_kld(smollm2_bf16, smollm2_mixed, cache_dir) -> None:
    from mxmix.eval.models import load_model

    side = ReferenceSide(str(smollm2_bf16), (), ctx=CTX, windows=1, device="cpu", dtype="bfloat16", topk=None,
                         cache_dir=None, use_cache=False, progress=False)
    w = side.windows[0]
    ref_logits = scored_logits(side.model, w)
    cand_logits = scored_logits(load_model(smollm2_mixed), w)
    exact = st.score_candidate(st.base_record(ref_logits, window_targets(w)), cand_logits)
    full = st.score_candidate(st.base_record(ref_logits, window_targets(w), cutoff=-np.inf), cand_logits)
    rec = st.base_record(ref_logits, window_targets(w), topk=1024)
    approx = st.score_candidate(rec, cand_logits)
    cut = ~np.isnan(rec.tail)
    assert cut.sum() > len(rec) // 2  # most positions have more than 1024 entries above the cutoff
    # where K covered every entry above −16, the record is llama.cpp's cutoff sum exactly ...
    np.testing.assert_allclose(approx.kld[~cut], exact.kld[~cut], rtol=1e-9, atol=1e-12)
    # ... elsewhere the coarsened KL never exceeds the full KL (log-sum inequality; up to fp32 rounding)
    assert (approx.kld[cut] <= full.kld[cut] + 1e-6 + 1e-4 * full.kld[cut]).all()
    # ... and reads within a few per cent of llama.cpp's cutoff sum (measured: ~1.4 % low on SmolLM2)
    assert abs(approx.kld.mean() - exact.kld.mean()) < 0.05 * exact.kld.mean()
    np.testing.assert_array_equal(approx.same_top, exact.same_top)  # argmax and NLLs are stored exactly
    np.testing.assert_array_equal(approx.nll_base, exact.nll_base)
    assert side.records[0].counts.mean() > 1024  # the cut really happens on this vocabulary


def test_cli_json_text_and_errors(smollm2_bf16, smollm2_mixed, first_run, cache_dir, tmp_path, capsys) -> None:
    argv = ["eval", "fidelity", "--reference", str(smollm2_bf16), "--candidate", str(smollm2_mixed), "--ctx",
            str(CTX), "--windows", str(WINDOWS), "--cache-dir", str(cache_dir), "--no-progress"]
    out = tmp_path / "fid.json"
    assert main([*argv, "--json", "--as-engine", "sglang", "--as-engine", "sglang-23467", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cache"]["hit"] and json.loads(out.read_text())["results"] == doc["results"]
    assert [r["engine"] for r in doc["results"]] == ["sglang", "sglang-23467"]
    # the fixture's full skip list reads the same in both SGLang states: no difference at all
    assert doc["paired"][0]["difference"] == 0.0
    assert doc["results"][0]["stats"] == first_run["results"][0]["stats"]
    assert main([*argv, "--brief"]) == 0
    text = capsys.readouterr().out
    assert "mean KLD ± SE" in text and "Mean    KLD:" not in text
    assert main(argv) == 0
    assert "Same top p:" in capsys.readouterr().out
    assert main([*argv, "--as-engine", "nonsense"]) == 2
    assert "unknown engine" in capsys.readouterr().err
    assert main(["eval", "fidelity", "--reference", str(tmp_path / "nope"), "--candidate", str(smollm2_mixed)]) == 2
    assert "no such" in capsys.readouterr().err
    assert main([*argv, "--ctx", "200000"]) == 2
    assert "fewer than one" in capsys.readouterr().err
    assert main([*argv, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_records_round_trip_through_the_cache_file(tmp_path) -> None:
    import torch

    rng = np.random.default_rng(0)
    recs = [st.base_record(torch.tensor(rng.normal(0, 3, (20, 50))), torch.tensor(rng.integers(0, 50, 20)), topk=k)
            for k in (None, 8)]
    p = tmp_path / "x.npz"
    lc.save_records(p, recs, {"a": 1})
    back = lc.load_records(p)
    for r, b in zip(recs, back):
        for f in ("targets", "nll", "argmax", "counts", "index", "logp", "tail"):
            np.testing.assert_array_equal(getattr(r, f), getattr(b, f))
