"""`mxmix sensitivity`: which layers (or modules) to keep in BF16, measured rather than guessed.

Method: quantize one unit at a time (MXFP8 round trip of its Linear weights, everything else BF16) and
measure its KLD cost against the reference on the same windows (the reference's distributions come
from the fidelity cache). Proposal: within the budget, keep the units that buy the most KLD per byte —
greedy by cost per extra BF16 byte (for whole layers of equal size this is simply the N costliest).
Prediction: KLD(all MXFP8) × (sum of single-unit costs still quantized) / (sum of all single-unit
costs), i.e. the single-unit costs rescaled to the measured all-MXFP8 level. The proposal is then
measured once (predicted vs measured) next to the usual heuristics at the same budget: the last N
layers, and the first ⌊N/2⌋ + last ⌈N/2⌉ layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mxmix.checkpoint.modules import decoder_layer, natural_key
from mxmix.errors import MxmixError
from mxmix.eval import stats as st

GRANULARITIES = ("layer", "module")


@dataclass
class Unit:
    name: str
    modules: list[str]
    extra_bytes: int          # bytes a BF16 copy costs over MXFP8 (weights + E8M0 scales)
    layer: int | None
    cost: float = float("nan")  # mean KLD with only this unit quantized


def extra_bf16_bytes(shape: Sequence[int]) -> int:
    n, k = int(shape[0]), int(shape[-1])
    return 2 * n * k - (n * k + n * ((k + 31) // 32))


def make_units(model: Any, granularity: str) -> list[Unit]:
    from mxmix.eval.as_engine import quantizable_linears

    if granularity not in GRANULARITIES:
        raise MxmixError(f"--granularity must be one of {', '.join(GRANULARITIES)}")
    units: dict[str, Unit] = {}
    for path, mod in quantizable_linears(model):
        w = getattr(mod, "weight", None)
        if w is None or w.ndim != 2 or w.shape[-1] % 32 or not w.dtype.is_floating_point or w.dtype.itemsize < 2:
            continue
        found = decoder_layer(path)
        layer = found[1] if found else None
        key = found[0] if (granularity == "layer" and found) else path
        u = units.setdefault(key, Unit(key, [], 0, layer))
        u.modules.append(path)
        u.extra_bytes += extra_bf16_bytes(w.shape)
    if not units:
        raise MxmixError("the reference has no BF16 Linear modules to quantize")
    return list(units.values())


class Perturber:
    """Quantize sets of modules of the reference in place and restore them exactly afterwards."""

    def __init__(self, model: Any, scale_mode: str = "rceil") -> None:
        self.model = model
        self.mods = dict(model.named_modules())
        self.scale_mode = scale_mode

    def measure(self, paths: Sequence[str], windows: list[list[int]], records: list[st.BaseRecord],
                progress: bool | None = False, desc: str = "") -> st.TokenScores:
        from mxmix.eval.as_engine import fake_quantize_
        from mxmix.eval.fidelity import candidate_scores

        saved = {p: self.mods[p].weight.detach().clone() for p in paths}
        try:
            for p in paths:
                fake_quantize_(self.mods[p], self.scale_mode)
            return st.TokenScores.concat(candidate_scores(self.model, windows, records, progress=progress, desc=desc))
        finally:
            import torch

            with torch.no_grad():
                for p, w in saved.items():
                    self.mods[p].weight.copy_(w)


def choose_keep(units: list[Unit], budget_bytes: int) -> list[Unit]:
    """Greedy by KLD cost per extra byte, skipping units that no longer fit."""
    chosen, used = [], 0
    for u in sorted(units, key=lambda u: (-(u.cost / max(u.extra_bytes, 1)), u.name)):
        if used + u.extra_bytes <= budget_bytes and u.cost > 0:
            chosen.append(u)
            used += u.extra_bytes
    return chosen


def predict(units: list[Unit], kept: list[Unit], kld_all: float) -> float:
    total = sum(max(u.cost, 0.0) for u in units)
    left = total - sum(max(u.cost, 0.0) for u in kept)
    return kld_all * left / total if total > 0 else kld_all


def heuristic_sets(units: list[Unit], n_layers: int, model_layers: int) -> dict[str, list[int]]:
    n = max(0, min(n_layers, model_layers))
    first = n // 2
    return {f"last {n} layers": list(range(model_layers - n, model_layers)),
            f"first {first} + last {n - first} layers": list(range(first)) +
            list(range(model_layers - (n - first), model_layers))}


def run_sensitivity(reference: str, texts: Sequence[str] = (), *, ctx: int = 256, windows: int = 4,
                    granularity: str = "layer", budget_layers: int | None = None, budget_bytes: int | None = None,
                    device: str = "cpu", dtype: str = "bfloat16", cache_dir: str | None = None,
                    use_cache: bool = True, topk: int | None = 1024, scale_mode: str = "rceil",
                    progress: bool | None = None) -> dict[str, Any]:
    from mxmix.eval.fidelity import ReferenceSide
    from mxmix.progress import progress_bar

    if budget_layers is not None and budget_bytes is not None:
        raise MxmixError("give --budget-layers or --budget-bytes, not both")
    if budget_layers is not None and budget_layers < 0:
        raise MxmixError("--budget-layers must be >= 0")
    ref = ReferenceSide(reference, texts, ctx=ctx, windows=windows, device=device, dtype=dtype, topk=topk,
                        cache_dir=cache_dir, use_cache=use_cache, progress=progress)
    model = ref.model
    units = make_units(model, granularity)
    layer_units = make_units(model, "layer")
    layer_ids = sorted({u.layer for u in layer_units if u.layer is not None})
    n_model_layers = (max(layer_ids) + 1) if layer_ids else 0
    per_layer = max(u.extra_bytes for u in layer_units) if layer_units else 0
    if budget_bytes is None:
        n = budget_layers if budget_layers is not None else max(1, round(0.2 * n_model_layers))
        budget_bytes = n * per_layer
    n_layers_equiv = budget_bytes // per_layer if per_layer else 0
    pert = Perturber(model, scale_mode)

    bar = progress_bar(total=len(units), desc=f"sensitivity ({granularity})", enabled=progress, unit=granularity)
    try:
        for u in units:
            u.cost = float(pert.measure(u.modules, ref.windows, ref.records).kld.mean())
            bar.update(1)
    finally:
        bar.close()
    all_mods = [m for u in units for m in u.modules]
    kld_all = float(pert.measure(all_mods, ref.windows, ref.records).kld.mean())
    kept = choose_keep(units, budget_bytes)
    kept_mods = {m for u in kept for m in u.modules}
    proposal_scores = pert.measure([m for m in all_mods if m not in kept_mods], ref.windows, ref.records)
    proposal = st.summarize(proposal_scores)

    comparisons = [{"name": "proposal", "kept_units": [u.name for u in kept],
                    "extra_bytes": sum(u.extra_bytes for u in kept), "predicted_kld": predict(units, kept, kld_all),
                    "kld": proposal["kld"]["mean"], "kld_se": proposal["kld"]["se"],
                    "same_top": proposal["same_top"]["p"]}]
    by_layer = {u.layer: u for u in layer_units}
    for name, layers in heuristic_sets(layer_units, int(n_layers_equiv), n_model_layers).items():
        keep_h = {m for li in layers if li in by_layer for m in by_layer[li].modules}
        s = st.summarize(pert.measure([m for m in all_mods if m not in keep_h], ref.windows, ref.records))
        comparisons.append({"name": name, "kept_units": [f"layer {li}" for li in layers],
                            "extra_bytes": sum(by_layer[li].extra_bytes for li in layers if li in by_layer),
                            "predicted_kld": None, "kld": s["kld"]["mean"], "kld_se": s["kld"]["se"],
                            "same_top": s["same_top"]["p"]})
    ranking = sorted(units, key=lambda u: -u.cost)
    return {
        **ref.describe(), "granularity": granularity, "scale_mode": scale_mode,
        "budget_bytes": budget_bytes, "budget_layers_equivalent": int(n_layers_equiv),
        "kld_all_mxfp8": kld_all, "kld_sum_of_singles": sum(u.cost for u in units),
        "units": [{"name": u.name, "layer": u.layer, "modules": len(u.modules), "extra_bytes": u.extra_bytes,
                   "kld_cost": u.cost, "rank": i + 1} for i, u in enumerate(ranking)],
        "keep_rules": sorted(kept_mods, key=natural_key),
        "comparisons": comparisons,
    }


def format_sensitivity(doc: dict[str, Any], top: int = 12) -> str:
    from mxmix.cli.output import format_table, human_bytes

    lines = [f"reference {doc['reference']}; text: {doc['text']}; {doc['windows']} windows x {doc['ctx']} tokens "
             f"({doc['scored_tokens']} scored)",
             f"all {doc['granularity']}s MXFP8: mean KLD {doc['kld_all_mxfp8']:.6f} "
             f"(sum of single-{doc['granularity']} costs {doc['kld_sum_of_singles']:.6f})", "",
             f"most sensitive {doc['granularity']}s (KLD with only that one quantized):"]
    rows = [[u["rank"], u["name"], f"{u['kld_cost']:.6f}", human_bytes(u["extra_bytes"])]
            for u in doc["units"][:top]]
    lines.append(format_table(["rank", doc["granularity"], "KLD cost", "BF16 extra"], rows, align="rlrr"))
    lines += ["", f"budget {human_bytes(doc['budget_bytes'])} (~{doc['budget_layers_equivalent']} layers): "
                  f"keep set vs heuristics at the same budget"]
    rows = [[c["name"], human_bytes(c["extra_bytes"]),
             "" if c["predicted_kld"] is None else f"{c['predicted_kld']:.6f}",
             f"{c['kld']:.6f} ± {c['kld_se']:.6f}", f"{100 * c['same_top']:.2f}"] for c in doc["comparisons"]]
    lines.append(format_table(["keep set", "BF16 extra", "predicted KLD", "measured KLD", "same top %"], rows,
                              align="lrrrr"))
    lines += ["", "proposed keep set: " + (", ".join(doc["comparisons"][0]["kept_units"]) or "(none)")]
    return "\n".join(lines)
