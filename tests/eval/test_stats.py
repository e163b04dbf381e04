"""llama.cpp KLD statistics vs a direct float64 numpy computation on fresh random and adversarial logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mxmix.eval.stats import (
    DP_PERCENTILES,
    KLD_PERCENTILES,
    TokenScores,
    base_record,
    format_report,
    percentile,
    score_candidate,
    summarize,
)


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _reference_scores(base: np.ndarray, cand: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Straight from the definition, float64, one token at a time."""
    lb, lq = _np_log_softmax(base), _np_log_softmax(cand)
    kld = np.array([sum(math.exp(lb[i, j]) * (lb[i, j] - lq[i, j]) for j in range(lb.shape[1]) if lb[i, j] > -16)
                    for i in range(lb.shape[0])])
    idx = np.arange(len(targets))
    return {"kld": kld, "nll_base": -lb[idx, targets], "nll_cand": -lq[idx, targets],
            "same_top": lb.argmax(1) == lq.argmax(1)}


def _logits(rng: np.random.Generator, n: int, v: int, spread: float) -> np.ndarray:
    return rng.normal(0, spread, size=(n, v))


@pytest.mark.parametrize("seed,spread", [(0, 1.0), (1, 4.0), (2, 12.0)])
def test_per_token_scores_match_float64_definition(seed: int, spread: float) -> None:
    rng = np.random.default_rng(seed)
    n, v = 150, 97
    base = _logits(rng, n, v, spread)
    cand = base + rng.normal(0, 0.3, size=base.shape)
    targets = rng.integers(0, v, size=n)
    ref = _reference_scores(base, cand, targets)
    # the record keeps base log-probs as float32 (what the cache stores), so even the fp64 path is ~1e-7
    for dtype, tol in ((torch.float64, 1e-7), (torch.float32, 2e-5)):
        rec = base_record(torch.tensor(base, dtype=dtype), torch.tensor(targets))
        got = score_candidate(rec, torch.tensor(cand, dtype=dtype))
        np.testing.assert_allclose(got.kld, ref["kld"], rtol=1e-3, atol=tol)
        np.testing.assert_allclose(got.nll_base, ref["nll_base"], rtol=tol, atol=tol)
        np.testing.assert_allclose(got.nll_cand, ref["nll_cand"], rtol=tol, atol=tol)
        if dtype == torch.float64:
            np.testing.assert_array_equal(got.same_top, ref["same_top"])
    if spread >= 12.0:  # wide logits: the −16 cutoff must actually drop entries
        assert rec.counts.min() < v


def test_cutoff_skips_exactly_the_tiny_terms() -> None:
    # one dominant token, the rest far below e^-16: only the dominant entry is kept.
    base = torch.full((3, 10), -40.0, dtype=torch.float64)
    base[:, 0] = 0.0
    rec = base_record(base, torch.tensor([0, 1, 2]))
    assert rec.counts.tolist() == [1, 1, 1]
    cand = torch.zeros(3, 10, dtype=torch.float64)  # uniform
    got = score_candidate(rec, cand)
    # KLD ≈ 1·(0 − log(1/10)) = log 10 (the base's own log p(0) is ~ −9e-17)
    np.testing.assert_allclose(got.kld, math.log(10), rtol=1e-12)
    assert got.same_top.all()  # both argmaxes are index 0 (first max wins on the uniform candidate)


def test_identical_models_give_zero_kld_and_full_agreement() -> None:
    rng = np.random.default_rng(5)
    x = torch.tensor(_logits(rng, 200, 64, 3.0), dtype=torch.float32)
    t = torch.tensor(rng.integers(0, 64, 200))
    s = summarize(score_candidate(base_record(x, t), x))
    assert abs(s["kld"]["mean"]) < 1e-6 and abs(s["kld"]["max"]) < 1e-5
    assert s["same_top"]["p"] == 1.0 and s["same_top"]["se"] == 0.0
    assert s["delta_p"]["rms"] < 1e-6
    assert s["ppl"]["ratio"]["value"] == pytest.approx(1.0, abs=1e-6)


def test_summary_matches_independent_numpy_formulas() -> None:
    rng = np.random.default_rng(11)
    n = 1000
    kld = rng.exponential(0.03, n)
    nb = rng.gamma(2.0, 1.5, n)
    nq = nb + rng.normal(0.02, 0.1, n)
    same = rng.random(n) < 0.9
    scores = TokenScores(nll_base=nb, nll_cand=nq, kld=kld, p_base=np.exp(-nb), p_cand=np.exp(-nq), same_top=same)
    s = summarize(scores)

    def se(x):
        return math.sqrt(np.var(x) / (len(x) - 1))

    assert s["count"] == n
    assert s["kld"]["mean"] == pytest.approx(kld.mean(), rel=1e-12)
    assert s["kld"]["se"] == pytest.approx(se(kld), rel=1e-9)
    for key, frac in KLD_PERCENTILES:
        assert s["kld"][key] == pytest.approx(np.percentile(kld, 100 * frac, method="linear"), rel=1e-12)
    dp = np.exp(-nq) - np.exp(-nb)
    for key, frac in DP_PERCENTILES:
        assert s["delta_p"][key] == pytest.approx(np.percentile(dp, 100 * frac, method="linear"), rel=1e-9, abs=1e-15)
    assert s["delta_p"]["mean"] == pytest.approx(dp.mean(), rel=1e-9)
    assert s["delta_p"]["se"] == pytest.approx(se(dp), rel=1e-9)
    rms = math.sqrt(np.mean(dp ** 2))
    assert s["delta_p"]["rms"] == pytest.approx(rms, rel=1e-12)
    assert s["delta_p"]["rms_se"] == pytest.approx(0.5 / rms * se(dp ** 2), rel=1e-9)
    p = same.mean()
    assert s["same_top"]["p"] == pytest.approx(p)
    assert s["same_top"]["se"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    # PPL block: ln ratio uncertainty from the NLL covariance (delta method on the paired difference)
    d = nq - nb
    assert s["ppl"]["ln_ratio"]["value"] == pytest.approx(d.mean(), rel=1e-9)
    assert s["ppl"]["ln_ratio"]["unc"] == pytest.approx(se(d), rel=1e-6)
    assert s["ppl"]["candidate"]["value"] == pytest.approx(math.exp(nq.mean()), rel=1e-12)
    assert s["ppl"]["reference"]["unc"] == pytest.approx(math.exp(nb.mean()) * se(nb), rel=1e-9)
    assert s["ppl"]["ratio"]["value"] == pytest.approx(math.exp(d.mean()), rel=1e-12)
    assert s["ppl"]["cor_ln"] == pytest.approx(np.corrcoef(nq, nb)[0, 1], rel=1e-6)
    text = format_report(s)
    assert "Mean    KLD:" in text and "Same top p:" in text and "99.9%   KLD:" in text


def test_percentile_edges() -> None:
    v = np.array([3.0, 1.0, 2.0])
    assert percentile(v, 0.0) == 1.0 and percentile(v, 1.0) == 3.0 and percentile(v, 0.5) == 2.0
    assert percentile(v, 0.25) == pytest.approx(1.5)


def test_small_counts_have_zero_uncertainty_like_llama_cpp() -> None:
    x = np.arange(10, dtype=float)
    s = summarize(TokenScores(x, x + 1, x, np.exp(-x), np.exp(-x - 1), np.ones(10, dtype=bool)))
    assert s["kld"]["se"] == 0.0  # llama.cpp: no uncertainty at count ≤ 10
    assert "only 10 scored tokens" in format_report(s)


def test_topk_record_is_exact_when_k_covers_and_bounded_by_the_full_kl_otherwise() -> None:
    rng = np.random.default_rng(3)
    n, v = 120, 300
    base = torch.tensor(_logits(rng, n, v, 2.0), dtype=torch.float64)
    cand = base + torch.tensor(rng.normal(0, 0.5, size=(n, v)))
    t = torch.tensor(rng.integers(0, v, n))
    exact = score_candidate(base_record(base, t), cand).kld
    covered = score_candidate(base_record(base, t, topk=v), cand).kld
    np.testing.assert_allclose(covered, exact, rtol=1e-6, atol=1e-9)
    approx = score_candidate(base_record(base, t, topk=32), cand).kld
    full = score_candidate(base_record(base, t, cutoff=-np.inf), cand).kld
    # KL of a coarsening never exceeds the KL of the full distributions (log-sum inequality)
    assert (approx <= full + 1e-7).all()
    assert approx.mean() > 0.5 * exact.mean()  # the tail bucket keeps most of it
    rec = base_record(base, t, topk=32)
    assert rec.counts.max() <= 32 and not np.isnan(rec.tail).any()
    # the stored entries are the 32 most likely ones
    lp = torch.log_softmax(base, -1)
    assert set(rec.index[:rec.counts[0]].tolist()) == set(lp[0].topk(32).indices.tolist())
