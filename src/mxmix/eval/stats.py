"""The statistics of llama.cpp's ``--kl-divergence`` mode, reproduced exactly.

Why: KLD/Δp/"same top" numbers are only comparable across tools when computed the same way. This
module follows ``tools/perplexity/perplexity.cpp``: per scored token, KLD = Σᵢ p_base(i)·(log p_base(i) −
log p_q(i)) over the entries with log p_base(i) > −16 (smaller terms skipped), Δp = p_q(y) − p_base(y)
for the actual next token y, and "same top" = equal argmaxes (first maximum wins). Summaries use
llama.cpp's ``mean_and_uncertainty`` (SE = √(var/(count−1)), 0 below 11 tokens), its ``covariance`` for
the ln-PPL ratio, and linearly interpolated percentiles over the sorted values.

The reference side is a :class:`BaseRecord`: only the entries that can contribute (log p > −16), so it
can be cached without keeping full-vocabulary logits (see ``logits_cache``). With ``topk=K`` only the
K most likely of them are kept and the rest of the vocabulary becomes one "tail" bucket whose KLD term is
p_tail·(log p_tail,base − log p_tail,q) — the KL of the coarsened distributions, never above the full
KL (log-sum inequality); on SmolLM2 MXFP8, K = 1024 reads 1.4 % below llama.cpp's cutoff sum. Positions
where K covers every entry above the cutoff are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LOGPROB_CUTOFF = -16.0
KLD_PERCENTILES = (("max", 1.0), ("p99.9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90),
                   ("median", 0.5), ("p10", 0.10), ("p5", 0.05), ("p1", 0.01), ("p0.1", 0.001), ("min", 0.0))
DP_PERCENTILES = (("max", 1.0), ("p99.9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90), ("p75", 0.75),
                  ("median", 0.5), ("p25", 0.25), ("p10", 0.10), ("p5", 0.05), ("p1", 0.01), ("p0.1", 0.001),
                  ("min", 0.0))
MIN_REPORTED_COUNT = 100  # llama.cpp prints nothing below this many scored tokens


@dataclass
class BaseRecord:
    """The reference distribution at the scored positions of one window (ragged, cutoff-filtered).

    ``index``/``logp`` hold, position after position, the vocabulary ids and log-probs of every entry
    with log p > cutoff; ``counts[i]`` says how many belong to position i (row-major order).
    """

    targets: np.ndarray   # int64 [N]   actual next token
    nll: np.ndarray       # float64 [N] −log p_base(y)
    argmax: np.ndarray    # int64 [N]   first argmax of the reference
    counts: np.ndarray    # int64 [N]
    index: np.ndarray     # int32 [M]
    logp: np.ndarray      # float32 [M]
    tail: np.ndarray      # float64 [N] log of the reference mass not stored; NaN where nothing was cut

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclass
class TokenScores:
    """Per scored token: everything the llama.cpp summary needs (float64 arrays)."""

    nll_base: np.ndarray
    nll_cand: np.ndarray
    kld: np.ndarray
    p_base: np.ndarray
    p_cand: np.ndarray
    same_top: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.kld.shape[0])

    @staticmethod
    def concat(parts: list[TokenScores]) -> TokenScores:
        if not parts:
            e = np.zeros(0)
            return TokenScores(e, e, e, e, e, np.zeros(0, dtype=bool))
        return TokenScores(*(np.concatenate([getattr(p, f) for p in parts])
                             for f in ("nll_base", "nll_cand", "kld", "p_base", "p_cand", "same_top")))


def _log_softmax(logits: Any) -> Any:
    import torch

    x = logits if logits.dtype == torch.float64 else logits.float()
    return torch.log_softmax(x, dim=-1)


def base_record(logits: Any, targets: Any, cutoff: float = LOGPROB_CUTOFF, topk: int | None = None) -> BaseRecord:
    """Reference logits [N, V] at scored positions + next tokens [N] → :class:`BaseRecord`.

    Log-probs are computed in fp32 (fp64 if the logits are fp64), as llama.cpp does in float.
    ``topk``: keep at most this many entries per position (None/0: all above the cutoff, exact).
    """
    import torch

    lp = _log_softmax(logits)
    n, v = lp.shape
    t = torch.as_tensor(targets, device=lp.device, dtype=torch.long)
    nll = -lp.gather(1, t[:, None])[:, 0]
    mask = lp > cutoff
    tail = torch.full((n,), float("nan"), dtype=torch.float64, device=lp.device)
    if topk and topk < v:
        above = mask.sum(dim=1)
        cut = above > topk
        if bool(cut.any()):
            top = lp.topk(topk, dim=-1).indices
            keep = torch.zeros_like(mask).scatter_(1, top, True) & mask
            mask = torch.where(cut[:, None], keep, mask)
            tail = torch.where(cut, _masked_lse(lp, mask).double(), tail)
    rows, cols = mask.nonzero(as_tuple=True)
    return BaseRecord(
        targets=t.cpu().numpy().astype(np.int64),
        nll=nll.double().cpu().numpy(),
        argmax=lp.argmax(dim=-1).cpu().numpy().astype(np.int64),
        counts=mask.sum(dim=1).cpu().numpy().astype(np.int64),
        index=cols.to(torch.int32).cpu().numpy(),
        logp=lp[rows, cols].float().cpu().numpy(),
        tail=tail.cpu().numpy(),
    )


def _masked_lse(lp: Any, stored: Any) -> Any:
    """log Σ exp(lp) over the entries NOT stored, per row."""
    import torch

    return torch.logsumexp(lp.masked_fill(stored, float("-inf")), dim=-1)


def score_candidate(record: BaseRecord, logits: Any) -> TokenScores:
    """Candidate logits [N, V] at the same positions → per-token KLD, NLLs, p(y) and same-top."""
    import torch

    lq = _log_softmax(logits)
    n = len(record)
    if lq.shape[0] != n:
        raise ValueError(f"candidate has {lq.shape[0]} positions, reference {n}")
    dev = lq.device
    counts = torch.as_tensor(record.counts, device=dev)
    rows = torch.repeat_interleave(torch.arange(n, device=dev), counts)
    cols = torch.as_tensor(record.index, device=dev).long()
    lpb = torch.as_tensor(record.logp, device=dev).double()
    terms = lpb.exp() * (lpb - lq[rows, cols].double())
    kld = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, rows, terms)
    tail_b = torch.as_tensor(record.tail, device=dev)
    cut = ~torch.isnan(tail_b)
    if bool(cut.any()):
        stored = torch.zeros(lq.shape, dtype=torch.bool, device=dev)
        stored[rows, cols] = True
        idx = cut.nonzero(as_tuple=True)[0]
        tq = _masked_lse(lq[idx], stored[idx]).double()
        tb = tail_b[idx]
        kld[idx] += torch.where(torch.isinf(tb), torch.zeros_like(tb), tb.exp() * (tb - tq))
    t = torch.as_tensor(record.targets, device=dev)
    nll_c = (-lq.gather(1, t[:, None])[:, 0]).double().cpu().numpy()
    same = (lq.argmax(dim=-1).cpu().numpy() == record.argmax)
    return TokenScores(nll_base=record.nll.astype(np.float64), nll_cand=nll_c, kld=kld.cpu().numpy(),
                       p_base=np.exp(-record.nll.astype(np.float64)), p_cand=np.exp(-nll_c), same_top=same)


# --- summaries, llama.cpp's formulas -------------------------------------------------------------

def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp: mean and √(var/(count−1)) with the population variance; 0 when count ≤ 10."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 1:
        return 0.0, 0.0
    f = float(x.sum() / n)
    df = float((x * x).sum() / n - f * f)
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def covariance(a: np.ndarray, b: np.ndarray) -> float:
    """llama.cpp: (E[ab] − E[a]E[b]) / (count−1), 0 below 10 tokens: the covariance of the two means."""
    n = a.size
    if n < 10:
        return 0.0
    return float(((a * b).sum() / n - (a.sum() / n) * (b.sum() / n)) / (n - 1))


def percentile(values: np.ndarray, fraction: float) -> float:
    """Linear interpolation over the sorted values, as llama.cpp's ``percentile`` lambda."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        return float("nan")
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = fraction * (v.size - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * v[ip] + p * v[min(ip + 1, v.size - 1)])


def summarize(scores: TokenScores) -> dict[str, Any]:
    """The full llama.cpp KL-divergence report as a dict (probabilities as fractions, not %)."""
    n = len(scores)
    nll_q, nll_b = scores.nll_cand, scores.nll_base
    mq, uq = mean_and_uncertainty(nll_q)
    mb, ub = mean_and_uncertainty(nll_b)
    cov = covariance(nll_q, nll_b)
    ppl_q, ppl_b = math.exp(mq), math.exp(mb)
    ppl_q_unc, ppl_b_unc = ppl_q * uq, ppl_b * ub
    cor = cov / (uq * ub) if uq > 0 and ub > 0 else float("nan")
    ln_ratio = mq - mb
    ln_ratio_unc = math.sqrt(max(uq * uq + ub * ub - 2.0 * cov, 0.0))
    ratio = math.exp(ln_ratio)
    ppl_cov = ppl_q * ppl_b * cov
    diff_unc = math.sqrt(max(ppl_q_unc ** 2 + ppl_b_unc ** 2 - 2.0 * ppl_cov, 0.0))

    kld_mean, kld_se = mean_and_uncertainty(scores.kld)
    kld = {"mean": kld_mean, "se": kld_se}
    kld.update({k: percentile(scores.kld, f) for k, f in KLD_PERCENTILES})

    dp = scores.p_cand - scores.p_base
    dp_mean, dp_se = mean_and_uncertainty(dp)
    mse, mse_unc = mean_and_uncertainty(dp * dp)
    rms = math.sqrt(mse)
    delta_p: dict[str, float] = {"mean": dp_mean, "se": dp_se}
    delta_p.update({k: percentile(dp, f) for k, f in DP_PERCENTILES})
    delta_p["rms"] = rms
    delta_p["rms_se"] = 0.5 / rms * mse_unc if rms > 0 else 0.0

    same = float(np.count_nonzero(scores.same_top)) / n if n else float("nan")
    same_se = math.sqrt(same * (1.0 - same) / (n - 1)) if n > 1 else 0.0
    return {
        "count": n,
        "ppl": {
            "candidate": {"value": ppl_q, "unc": ppl_q_unc},
            "reference": {"value": ppl_b, "unc": ppl_b_unc},
            "cor_ln": cor,
            "ln_ratio": {"value": ln_ratio, "unc": ln_ratio_unc},
            "ratio": {"value": ratio, "unc": ratio * ln_ratio_unc},
            "diff": {"value": ppl_q - ppl_b, "unc": diff_unc},
        },
        "kld": kld,
        "delta_p": delta_p,
        "same_top": {"p": same, "se": same_se},
    }


_KLD_LABELS = {"max": "Maximum", "p99.9": "99.9%", "p99": "99.0%", "p95": "95.0%", "p90": "90.0%",
               "p75": "75.0%", "median": "Median", "p25": "25.0%", "p10": "10.0%", "p5": " 5.0%",
               "p1": " 1.0%", "p0.1": " 0.1%", "min": "Minimum"}


def format_report(s: dict[str, Any]) -> str:
    """llama.cpp's three final blocks, with its labels and number formats."""
    p = s["ppl"]
    lines = ["====== Perplexity statistics ======",
             f"Mean PPL(Q)                   : {p['candidate']['value']:10.6f} ± {p['candidate']['unc']:10.6f}",
             f"Mean PPL(base)                : {p['reference']['value']:10.6f} ± {p['reference']['unc']:10.6f}",
             f"Cor(ln(PPL(Q)), ln(PPL(base))): {100.0 * p['cor_ln']:6.2f}%",
             f"Mean ln(PPL(Q)/PPL(base))     : {p['ln_ratio']['value']:10.6f} ± {p['ln_ratio']['unc']:10.6f}",
             f"Mean PPL(Q)/PPL(base)         : {p['ratio']['value']:10.6f} ± {p['ratio']['unc']:10.6f}",
             f"Mean PPL(Q)-PPL(base)         : {p['diff']['value']:10.6f} ± {p['diff']['unc']:10.6f}",
             "", "====== KL divergence statistics ======",
             f"Mean    KLD: {s['kld']['mean']:10.6f} ± {s['kld']['se']:10.6f}"]
    lines += [f"{_KLD_LABELS[k]:<7} KLD: {s['kld'][k]:10.6f}" for k, _ in KLD_PERCENTILES]
    d = s["delta_p"]
    lines += ["", "====== Token probability statistics ======",
              f"Mean    Δp: {100 * d['mean']:6.3f} ± {100 * d['se']:5.3f} %"]
    lines += [f"{_KLD_LABELS[k]:<7} Δp: {100 * d[k]:6.3f}%" for k, _ in DP_PERCENTILES]
    lines += [f"RMS Δp    : {100 * d['rms']:6.3f} ± {100 * d['rms_se']:5.3f} %",
              f"Same top p: {100 * s['same_top']['p']:6.3f} ± {100 * s['same_top']['se']:5.3f} %"]
    if s["count"] < MIN_REPORTED_COUNT:
        lines.append(f"(only {s['count']} scored tokens: llama.cpp would print nothing below "
                     f"{MIN_REPORTED_COUNT}; treat these numbers as rough)")
    return "\n".join(lines)
