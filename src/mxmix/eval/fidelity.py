"""`mxmix eval fidelity`: a candidate against its reference on real text, with llama.cpp's statistics.

Protocol (llama.cpp ``--kl-divergence``): the text is tokenised with the reference's tokenizer and cut
into consecutive ``ctx``-token windows (a spread-out subset with ``--windows``); the first token of each
window becomes BOS when the tokenizer adds one; only the second half of each window is scored
(predictions from position ctx/2 on: ctx − 1 − ctx/2 tokens). Log-softmax in fp32. The reference's
scored distributions are cached (``logits_cache``) so a second candidate costs one model, not two.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mxmix.errors import MxmixError
from mxmix.eval import stats as st

DEFAULT_CTX = 512
DEFAULT_WINDOWS = 16
DEFAULT_TOPK = 1024


@dataclass
class FidelityConfig:
    reference: str
    candidate: str
    texts: Sequence[str] = ()
    ctx: int = DEFAULT_CTX
    windows: int | None = DEFAULT_WINDOWS
    engines: Sequence[str | None] = (None,)   # None = the checkpoint as stored (mxmix.load)
    device: str = "cpu"
    dtype: str = "bfloat16"
    cache_dir: str | None = None
    use_cache: bool = True
    topk: int | None = DEFAULT_TOPK
    scale_mode: str = "rceil"
    progress: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def first_scored(ctx: int) -> int:
    return ctx // 2


def tokenize_windows(tokenizer: Any, text: str, ctx: int, windows: int | None) -> list[list[int]]:
    """Token windows as llama.cpp builds them (BOS replaces each window's first token if the model uses one)."""
    from mxmix.eval.corpus import token_windows

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = token_windows(ids, ctx, windows)
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    if adds_bos:
        for w in out:
            w[0] = bos
    return out


def scored_logits(model: Any, window: Sequence[int]) -> Any:
    """Logits for positions ctx/2 … ctx−2 (each predicts the next token), fp32, on the model's device."""
    import torch

    ctx = len(window)
    first = first_scored(ctx)
    dev = next(model.parameters()).device
    x = torch.tensor([list(window)], device=dev)
    with torch.inference_mode():
        try:
            logits = model(input_ids=x, use_cache=False, logits_to_keep=ctx - first).logits[0]
        except TypeError:  # older model classes without logits_to_keep
            logits = model(input_ids=x, use_cache=False).logits[0, first:]
    return logits[:-1].float()


def window_targets(window: Sequence[int]) -> list[int]:
    ctx = len(window)
    return list(window[first_scored(ctx) + 1:])


def reference_records(model: Any, windows: list[list[int]], *, topk: int | None, progress: bool | None,
                      desc: str = "reference") -> list[st.BaseRecord]:
    from mxmix.progress import progress as bar

    return [st.base_record(scored_logits(model, w), window_targets(w), topk=topk)
            for w in bar(windows, total=len(windows), desc=desc, enabled=progress, unit="win")]


def candidate_scores(model: Any, windows: list[list[int]], records: list[st.BaseRecord], *,
                     progress: bool | None, desc: str = "candidate") -> list[st.TokenScores]:
    from mxmix.progress import progress_bar

    out = []
    bar = progress_bar(total=len(windows), desc=desc, enabled=progress, unit="win")
    try:
        for w, rec in zip(windows, records):
            out.append(st.score_candidate(rec, scored_logits(model, w)))
            bar.update(1)
            allk = np.concatenate([s.kld for s in out])
            bar.set_postfix(kld=f"{allk.mean():.5f}")
    finally:
        bar.close()
    return out


def per_window_lines(parts: list[st.TokenScores]) -> list[dict[str, float]]:
    """llama.cpp's per-chunk progress columns (running values after each window)."""
    rows = []
    for i in range(len(parts)):
        s = st.TokenScores.concat(parts[: i + 1])
        ppl = math.exp(float(s.nll_cand.mean()))
        dp = s.p_cand - s.p_base
        rows.append({"window": i + 1, "ppl": ppl, "ln_ratio": float((s.nll_cand - s.nll_base).mean()),
                     "kld": float(s.kld.mean()), "rms_dp": float(np.sqrt((dp * dp).mean())),
                     "same_top": float(s.same_top.mean())})
    return rows


def paired_kld_difference(a: st.TokenScores, b: st.TokenScores) -> dict[str, float]:
    """Mean of per-token KLD(b) − KLD(a) on the same tokens, its SE and z: 'measurably worse' when z ≫ 2."""
    d = b.kld - a.kld
    mean, se = st.mean_and_uncertainty(d)
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {"difference": mean, "se": se, "z": z}


class ReferenceSide:
    """The reference's tokenizer, windows and (cached) records, prepared once for many candidates."""

    def __init__(self, reference: str, texts: Sequence[str], *, ctx: int, windows: int | None, device: str,
                 dtype: str, topk: int | None, cache_dir: str | None, use_cache: bool,
                 progress: bool | None) -> None:
        from mxmix.eval import logits_cache as lc
        from mxmix.eval.corpus import load_text, windows_digest
        from mxmix.eval.models import check_device, load_tokenizer

        self.reference = reference
        self.device = check_device(device)
        self.dtype = dtype
        self.ctx = ctx
        self.tokenizer = load_tokenizer(reference)
        text, self.text_desc = load_text(list(texts) if texts else None)
        self.windows = tokenize_windows(self.tokenizer, text, ctx, windows)
        self.cache_path: Path | None = None
        self.cache_hit = False
        self.reference_seconds = 0.0
        self._model = None
        if use_cache:
            key = lc.cache_key(reference, windows_digest(self.windows), ctx=ctx, topk=topk,
                               cutoff=st.LOGPROB_CUTOFF, dtype=dtype, device=self.device)
            self.cache_path = Path(cache_dir) / f"{key}.npz" if cache_dir else lc.default_cache_dir() / f"{key}.npz"
            records = lc.load_records(self.cache_path)
            if records is not None and len(records) == len(self.windows):
                self.records = records
                self.cache_hit = True
                return
        from mxmix.eval.models import load_model

        t0 = time.perf_counter()
        self._model = load_model(reference, device=self.device, dtype=dtype)
        self.records = reference_records(self._model, self.windows, topk=topk, progress=progress)
        self.reference_seconds = time.perf_counter() - t0
        if self.cache_path is not None:
            lc.save_records(self.cache_path, self.records,
                            {"reference": str(reference), "ctx": ctx, "windows": len(self.windows), "topk": topk})

    @property
    def model(self) -> Any:
        """The reference model itself (loaded on demand; sensitivity perturbs copies of it)."""
        if self._model is None:
            from mxmix.eval.models import load_model

            self._model = load_model(self.reference, device=self.device, dtype=self.dtype)
        return self._model

    def describe(self) -> dict[str, Any]:
        return {"reference": str(self.reference), "text": self.text_desc, "ctx": self.ctx,
                "windows": len(self.windows), "scored_tokens": sum(len(r) for r in self.records),
                "first_scored": first_scored(self.ctx), "device": self.device, "dtype": self.dtype,
                "cache": {"path": str(self.cache_path) if self.cache_path else None, "hit": self.cache_hit},
                "reference_seconds": self.reference_seconds}


def evaluate(cfg: FidelityConfig) -> dict[str, Any]:
    """Reference vs candidate (once per requested engine reading) → the full report document."""
    from mxmix.eval.as_engine import load_as_engine
    from mxmix.eval.models import load_model

    if cfg.ctx < 8:
        raise MxmixError(f"--ctx {cfg.ctx} is too small (at least 8)")
    for p in (cfg.reference, cfg.candidate):
        if not Path(p).exists():
            raise MxmixError(f"{p}: no such checkpoint")
    ref = ReferenceSide(cfg.reference, cfg.texts, ctx=cfg.ctx, windows=cfg.windows, device=cfg.device,
                        dtype=cfg.dtype, topk=cfg.topk, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache,
                        progress=cfg.progress)
    ref._model = None  # free it before loading candidates
    results = []
    scores_by_row: list[st.TokenScores] = []
    for engine in cfg.engines or (None,):
        t0 = time.perf_counter()
        if engine is None:
            model, view = load_model(cfg.candidate, device=ref.device, dtype=cfg.dtype), None
        else:
            model, view = load_as_engine(cfg.candidate, engine, device=ref.device, dtype=cfg.dtype,
                                         scale_mode=cfg.scale_mode)
        parts = candidate_scores(model, ref.windows, ref.records, progress=cfg.progress,
                                 desc=f"candidate{' as ' + engine if engine else ''}")
        del model
        scores = st.TokenScores.concat(parts)
        scores_by_row.append(scores)
        results.append({"engine": engine, "as_engine": view.to_dict() if view else None,
                        "as_engine_summary": view.summary() if view else None,
                        "stats": st.summarize(scores), "per_window": per_window_lines(parts),
                        "seconds": time.perf_counter() - t0})
    doc: dict[str, Any] = {"candidate": str(cfg.candidate), **ref.describe(),
                           "kld_cutoff": st.LOGPROB_CUTOFF, "topk": cfg.topk, "results": results}
    if len(results) > 1:
        doc["paired"] = [{"a": results[0]["engine"], "b": r["engine"],
                          **paired_kld_difference(scores_by_row[0], s)}
                         for r, s in zip(results[1:], scores_by_row[1:])]
    return doc


def _f(x: float, nd: int = 6) -> str:
    return f"{x:.{nd}f}"


def format_fidelity(doc: dict[str, Any], full: bool = True) -> str:
    """Summary table (one row per reading), then llama.cpp's full blocks for each reading."""
    from mxmix.cli.output import format_table

    head = (f"reference {doc['reference']}\ncandidate {doc['candidate']}\n"
            f"text: {doc['text']}; {doc['windows']} windows x {doc['ctx']} tokens, "
            f"{doc['scored_tokens']} scored tokens (second half of each window); device {doc['device']}, "
            f"{doc['dtype']}; reference logits {'from cache' if doc['cache']['hit'] else 'computed'}"
            f"{' (top-' + str(doc['topk']) + ' + tail)' if doc['topk'] else ' (exact)'}")
    rows = []
    for r in doc["results"]:
        s = r["stats"]
        rows.append([r["engine"] or "as stored", f"{_f(s['kld']['mean'])} ± {_f(s['kld']['se'])}",
                     _f(s["kld"]["p99"], 4), _f(s["kld"]["max"], 4),
                     f"{100 * s['same_top']['p']:.2f} ± {100 * s['same_top']['se']:.2f}",
                     f"{100 * s['delta_p']['rms']:.3f}",
                     f"{s['ppl']['ratio']['value']:.4f} ± {s['ppl']['ratio']['unc']:.4f}",
                     f"{s['ppl']['candidate']['value']:.3f}"])
    table = format_table(["reading", "mean KLD ± SE", "KLD p99", "KLD max", "same top %", "RMS Δp %",
                          "PPL ratio", "PPL(Q)"], rows, align="lrrrrrrr")
    out = [head, "", table]
    for p in doc.get("paired", []):
        out.append(f"paired: KLD({p['b']}) − KLD({p['a'] or 'as stored'}) = {p['difference']:.6f} ± "
                   f"{p['se']:.6f} (z = {p['z']:.1f})")
    for r in doc["results"]:
        if r["as_engine_summary"]:
            out.append(r["as_engine_summary"])
    if full:
        for r in doc["results"]:
            out += ["", f"--- {r['engine'] or 'as stored'} ---", st.format_report(r["stats"])]
    return "\n".join(out)


def write_json(path: str | os.PathLike[str], doc: dict[str, Any], force: bool = True) -> None:
    import json

    from mxmix.fsutil import atomic_output_file

    with atomic_output_file(Path(path), force=force) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=str))


__all__ = ["FidelityConfig", "ReferenceSide", "evaluate", "format_fidelity"]
