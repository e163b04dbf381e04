"""Check 4: precision must be uniform wherever engines fuse tensors into one module.

Serving engines load ``q/k/v_proj`` into one ``qkv_proj`` and ``gate/up_proj`` into one
``gate_up_proj`` (one precision for the whole fused weight), and load all experts of a MoE layer
into one FusedMoE (quantized or not as a whole). Stored precisions that differ inside such a group
cannot be loaded as written, whatever the skip list says.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import compress, count, repeat
from operator import attrgetter, ne
from typing import Any

from mxmix.audit.findings import Finding
from mxmix.checkpoint.inspect import ModuleView
from mxmix.checkpoint.modules import LinearModule, precisions_of
from mxmix.rules.decision import DEFAULT_FUSED
from mxmix.rules.primitives import NeedleFilter, fold_from_known_ancestor

_SHARD_OF = {shard: fused for fused, shards in DEFAULT_FUSED.items() for shard in shards}


def check_structure(views: Sequence[ModuleView] | Sequence[LinearModule], *,
                    precisions: Sequence[str] | None = None) -> list[Finding]:
    """Findings for fused shards and FusedMoE experts stored in different precisions.

    ``views``: module views, or the Linear modules themselves (the fields read are the same);
    ``precisions``: ``precisions_of(views)``, when the caller has it.

    Whether any group mixes precisions is decided first (``_any_group_mixed``); only then are the
    groups' members collected (``_mixed_groups``, the definition)."""
    if precisions is None:
        precisions = precisions_of(views)
    return _mixed_groups(views) if _any_group_mixed(views, precisions) else []


def _any_group_mixed(views: Sequence[Any], precisions: Sequence[str]) -> bool:
    """Whether some fused group or FusedMoE holds two precisions.

    A mixed group holds a row of a minority precision (any but the commonest). The minority rows'
    groups are found one by one (10^3 rows where 10^5 are stored alike); a majority row can only
    mix one of those if its path starts with that group's prefix (the fused module's parent, or the
    FusedMoE path), which one anchored needle scan over all paths finds in C. When that scan cannot
    filter (an empty prefix) or the minority is large, every row is looked at (``_first_mismatch``)."""
    counts = Counter(precisions)
    if len(counts) <= 1:
        return False
    majority, most = counts.most_common(1)[0]
    if 4 * (len(precisions) - most) > len(precisions):
        return _first_mismatch(views, precisions)
    moe_memo: dict[str, str | None] = {"": None}
    first: dict[tuple[str, ...], str] = {}        # group -> the minority precision seen first
    for i in compress(count(), map(ne, precisions, repeat(majority))):
        precision = precisions[i]
        for group in _groups_of(views[i], moe_memo):
            if first.setdefault(group, precision) != precision:
                return True
    if not first:
        return False
    prefixes = [(g[1] + "." if g[1] else "") if g[0] == "fused" else g[1] for g in first]
    candidates = NeedleFilter(prefixes, anchored=True).candidates(list(map(_PATH, views)))
    if candidates is None:
        return _first_mismatch(views, precisions)
    for i in candidates:
        if precisions[i] == majority:
            for group in _groups_of(views[i], moe_memo):
                if group in first:       # a minority precision, and this majority one
                    return True
    return False


def _groups_of(v: Any, moe_memo: dict[str, str | None]) -> list[tuple[str, ...]]:
    """The groups view ``v`` belongs to: ("fused", parent, fused name) and ("moe", FusedMoE path)."""
    path = v.path
    if v.stacked:
        return [("moe", path)]
    parent, _, last = path.rpartition(".")
    out = []
    fused = _SHARD_OF.get(last)
    if fused is not None:
        out.append(("fused", parent, fused))
    if v.expert is not None:
        if last == "experts":
            out.append(("moe", path))
        else:
            moe = moe_memo.get(parent, "")
            if moe == "":
                moe = _moe_of_parent_memo(parent, moe_memo)
            if moe is not None:
                out.append(("moe", moe))
    return out


def _first_mismatch(views: Sequence[Any], precisions: Sequence[str]) -> bool:
    """``_any_group_mixed`` row by row: the first precision per group, compared (one pass)."""
    first_fused: dict[tuple[str, str], str] = {}
    first_moe: dict[str, str] = {}
    moe_of_parent: dict[str, str | None] = {"": None}
    shard_of = _SHARD_OF
    for v, precision in zip(views, precisions):
        path = v.path
        if v.stacked:
            moe: str | None = path
        else:
            parent, _, last = path.rpartition(".")
            fused = shard_of.get(last)
            if fused is not None and first_fused.setdefault((parent, fused), precision) != precision:
                return True
            if v.expert is None:
                continue
            if last == "experts":
                moe = path
            else:
                moe = moe_of_parent.get(parent, "")
                if moe == "":
                    moe = _moe_of_parent_memo(parent, moe_of_parent)
                if moe is None:
                    continue
        if first_moe.setdefault(moe, precision) != precision:
            return True
    return False


_PATH = attrgetter("path")


def _moe_of_parent(parent: str) -> str | None:
    """``_moe_module`` of a non-stacked expert view whose path is ``parent.<last>``, last != "experts":
    ``parent`` up to its last ``experts`` component, else None (the definition)."""
    parts = parent.split(".")
    if "experts" not in parts:
        return None
    k = len(parts) - 1 - parts[::-1].index("experts")
    return ".".join(parts[:k + 1])


def _moe_step(moe: str | None, path: str, component: str) -> str | None:
    return path if component == "experts" else moe


def _moe_of_parent_memo(parent: str, memo: dict[str, str | None]) -> str | None:
    """``_moe_of_parent`` from the answer for the parent's own parent (``memo`` holds ``""``: None):
    a path's answer is itself when it ends in ``experts``, else its parent's."""
    return fold_from_known_ancestor(parent, memo, _moe_step)


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
