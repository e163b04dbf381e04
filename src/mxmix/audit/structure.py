"""Check 4: precision must be uniform wherever engines fuse tensors into one module.

Serving engines load ``q/k/v_proj`` into one ``qkv_proj`` and ``gate/up_proj`` into one
``gate_up_proj`` (one precision for the whole fused weight), and load all experts of a MoE layer
into one FusedMoE (quantized or not as a whole). Stored precisions that differ inside such a group
cannot be loaded as written, whatever the skip list says.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from mxmix.audit.findings import Finding
from mxmix.checkpoint.inspect import ModuleView
from mxmix.checkpoint.modules import LinearModule, precisions_of
from mxmix.rules.decision import DEFAULT_FUSED

_SHARD_OF = {shard: fused for fused, shards in DEFAULT_FUSED.items() for shard in shards}


def check_structure(views: Sequence[ModuleView] | Sequence[LinearModule]) -> list[Finding]:
    """Findings for fused shards and FusedMoE experts stored in different precisions.

    ``views``: module views, or the Linear modules themselves (the fields read are the same).

    One pass finds whether any group mixes precisions (first precision per group, compared); only
    then are the groups' members collected (``_mixed_groups``), so a clean checkpoint costs one
    dict lookup or two per module."""
    first_fused: dict[tuple[str, str], str] = {}
    first_moe: dict[str, str] = {}
    moe_of_parent: dict[str, str | None] = {}
    mixed = False
    shard_of = _SHARD_OF
    for v, precision in zip(views, precisions_of(views)):
        path = v.path
        if v.stacked:
            moe: str | None = path
        else:
            parent, _, last = path.rpartition(".")
            fused = shard_of.get(last)
            if fused is not None and first_fused.setdefault((parent, fused), precision) != precision:
                mixed = True
                break
            if v.expert is None:
                continue
            if last == "experts":
                moe = path
            else:
                moe = moe_of_parent.get(parent, "")
                if moe == "":
                    moe = moe_of_parent[parent] = _moe_of_parent(parent)
                if moe is None:
                    continue
        if first_moe.setdefault(moe, precision) != precision:
            mixed = True
            break
    return _mixed_groups(views) if mixed else []


def _moe_of_parent(parent: str) -> str | None:
    """``_moe_module`` of a non-stacked expert view whose path is ``parent.<last>``, last != "experts"."""
    parts = parent.split(".")
    if "experts" not in parts:
        return None
    k = len(parts) - 1 - parts[::-1].index("experts")
    return ".".join(parts[:k + 1])


def _mixed_groups(views: Sequence[ModuleView]) -> list[Finding]:
    """The findings, with every member of each mixed group (the reference definition)."""
    fused_groups: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    moe_groups: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for v in views:
        parent, _, last = v.path.rpartition(".")
        fused = _SHARD_OF.get(last)
        if fused is not None and not v.stacked:
            fused_groups[(parent, fused)][v.path] = v.precision
        moe = _moe_module(v)
        if moe is not None:
            moe_groups[moe][v.precision].add(v.path if not v.stacked else v.weight)
    out: list[Finding] = []
    mixed: dict[str, list[str]] = defaultdict(list)
    for (_, fused), members in fused_groups.items():
        if len(set(members.values())) > 1:
            mixed[fused].extend(members)
    for fused, paths in sorted(mixed.items()):
        shards = "/".join(s.removesuffix("_proj") for s in DEFAULT_FUSED[fused])
        out.append(Finding(
            "error", "structure", f"mixed-precision-{fused.replace('_', '-')}",
            f"{shards} projections of one module are stored in different precisions",
            f"SGLang and vLLM load them into one {fused} of a single precision and raise "
            "(\"some but not all shards ... are skipped\"); transformers would load them but no fused "
            "serving kernel can.", tuple(paths),
            details={"precisions": {p: _precision_of(views, p) for p in paths[:60]}}))
    uneven = {moe: groups for moe, groups in moe_groups.items() if len(groups) > 1}
    if uneven:
        members = [p for groups in uneven.values() for ps in groups.values() for p in sorted(ps)]
        out.append(Finding(
            "error", "structure", "experts-not-uniform",
            f"the experts of {len(uneven)} MoE layer(s) are not all stored in one precision",
            "Engines keep or quantize a FusedMoE as a whole, so some experts will be read in the wrong "
            "precision (vLLM compressed-tensors even decides from expert 0 alone).", tuple(members),
            details={moe: {prec: len(ps) for prec, ps in groups.items()} for moe, groups in uneven.items()}))
    return out


def _moe_module(v: ModuleView) -> str | None:
    """The FusedMoE path an expert weight belongs to (``…mlp.experts``), else None."""
    if v.stacked:
        return v.path
    if v.expert is None:
        return None
    parts = v.path.split(".")
    if "experts" not in parts:
        return None
    k = len(parts) - 1 - parts[::-1].index("experts")
    return ".".join(parts[:k + 1])


def _precision_of(views: Sequence[ModuleView], path: str) -> str:
    return next(v.precision for v in views if v.path == path)
