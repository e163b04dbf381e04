"""Check 1: what the config says (canonical reading) against what the tensors are.

The canonical reading is mxmix's own interpretation of the writer's intent (every skip key merged,
whole dotted components); a disagreement here means the checkpoint contradicts itself, whatever
engine loads it. Tensor-level facts (missing or malformed scales, scales under the wrong dialect
name, K not a multiple of 32) are checked here too: they break every reader.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from itertools import compress, count, repeat
from operator import attrgetter, gt, is_, is_not, lt, not_
from typing import Any

from mxmix.audit.engines import misread_rows
from mxmix.audit.findings import Finding, add_finding
from mxmix.checkpoint.dialects import DIALECTS, SCALE_SUFFIXES
from mxmix.checkpoint.inspect import BLOCK, FP8, MXFP8, SCALE_DTYPES, ModuleView, expected_scale_shape
from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.modules import LinearModule, precisions_of
from mxmix.rules.column import Column
from mxmix.rules.decision import ERROR, KEEP, Decision

QUANTIZED = (MXFP8, FP8)
_QUANTIZED = frozenset(QUANTIZED)
_PATH, _SCALE, _DTYPE, _SHAPE = map(attrgetter, ("path", "scale", "dtype", "shape"))


def check_config_vs_tensors(ckpt: Checkpoint, views: Sequence[ModuleView] | Sequence[LinearModule],
                            canonical: Mapping[str, Decision] | Column | None, dialect: str, *,
                            precisions: Sequence[str] | None = None) -> list[Finding]:
    """``views``: module views, or the Linear modules themselves (the fields read are the same).
    ``canonical``: module path -> the canonical reading's decision, or the plan's canonical column
    over these very modules (row by row); None when the config declares no quantization.
    ``precisions``: ``precisions_of(views)``, when the caller has it."""
    out: list[Finding] = []
    declared = canonical is not None
    keeps_fp8, quantizes_bf16, raises = [], [], []
    reasons: dict[str, str] = {}
    undeclared_fp8: list[str] = []
    expected_suffix = DIALECTS[dialect].scale_suffix if dialect in DIALECTS else None
    # MX scale rules apply to MXFP8 dialects (and to undeclared FP8); another method (block FP8,
    # "other:fp8") has its own scale format, which this audit does not judge.
    mx_rules = dialect in DIALECTS or dialect == "plain"
    if not mx_rules:
        out.append(Finding(
            "info", "config", "not-an-mxfp8-dialect",
            f"the checkpoint declares {dialect.removeprefix('other:')!r}, not an MXFP8 dialect: MX scale checks skipped",
            "Only the skip list and precision checks apply; scale tensors follow that method's own format.", ()))
    paths = list(map(_PATH, views))
    if precisions is None:
        precisions = precisions_of(views)
    if isinstance(canonical, Column) and canonical.asked == paths:
        # row-aligned column: the rows it misreads, found as the engine check finds them (from its
        # decided paths and the stored-BF16 rows); Decisions only for the rows that raise
        quantized = list(map(_QUANTIZED.__contains__, precisions))
        bf16_rows = list(compress(count(), map(not_, quantized)))
        keep_rows, quantize_rows, error_rows = misread_rows(canonical, quantized, bf16_rows)
        keeps_fp8 = list(map(paths.__getitem__, keep_rows))
        quantizes_bf16 = list(map(paths.__getitem__, quantize_rows))
        for i in error_rows:
            raises.append(paths[i])
            reasons.setdefault(canonical[i].reason, paths[i])
    elif declared:
        get_decision = (canonical.get if not isinstance(canonical, Column)
                        else dict(zip(canonical.asked, canonical)).get)
        for path, precision in zip(paths, precisions):
            d = get_decision(path)
            if d is not None:
                outcome = d.decision
                if outcome == ERROR:
                    raises.append(path)
                    reasons.setdefault(d.reason, path)
                elif outcome == KEEP:
                    if precision in QUANTIZED:
                        keeps_fp8.append(path)
                elif precision not in QUANTIZED:
                    quantizes_bf16.append(path)
    else:
        undeclared_fp8 = [path for path, precision in zip(paths, precisions) if precision in QUANTIZED]
    # "<m>.weight_scale_inv" (2-D) or "<m>.experts.down_proj_scale_inv" (stacked experts)
    endings = ("." + expected_suffix, "_" + expected_suffix.removeprefix("weight_")) if expected_suffix else ()
    lists, owned = _tensor_lists(ckpt, views, mx_rules, endings)
    missing_scale, bad_scale_dtype, non_mx, bad_scale_shape, k_not_32, wrong_name, scale_on_bf16 = (
        lists.get(name, []) for name in TENSOR_LISTS)

    where = "the config's skip list (canonical reading)"
    add_finding(out, "error", "config", "config-keeps-but-stored-fp8",
         f"{where} keeps these modules in high precision, but they are stored FP8",
         "A loader that honours the list builds BF16 Linears and reads FP8 bytes as BF16 weights "
         "without their scales: wrong outputs or a dtype error at load time.", keeps_fp8)
    add_finding(out, "error", "config", "stored-bf16-not-kept-by-config",
         f"these modules are stored in high precision, but no rule in {where} keeps them",
         "A loader that follows the config builds MXFP8 Linears here and finds BF16 weights without "
         "scale tensors: it fails on the missing scales, or quantizes the layers you meant to keep.",
         quantizes_bf16)
    add_finding(out, "error", "config", "config-rule-raises",
         f"{where} cannot decide these modules: {next(iter(reasons), '')}",
         "The list itself is contradictory for them (e.g. some but not all fused shards listed); "
         "serving engines raise on such lists.", raises, reasons=list(reasons))
    add_finding(out, "error", "config", "fp8-without-quantization-config",
         "FP8 weights are stored, but " + ("config.json declares no quantization_config" if ckpt.config is not None
                                           else "there is no config.json to declare a quantization_config"),
         "Every loader treats the checkpoint as unquantized and reads FP8 bytes as plain weights "
         "(wrong outputs or a dtype error).", undeclared_fp8)
    add_finding(out, "error", "config", "missing-scale",
         "FP8 weights without a scale tensor (weight_scale_inv / weight_scale)",
         "No reader can dequantize them: loading fails on a missing key, or the weights are used "
         "unscaled (off by a power of two per block).", missing_scale)
    add_finding(out, "error", "config", "scale-wrong-dtype",
         "scale tensors that are not E8M0 bytes (U8 / F8_E8M0)",
         "MXFP8 readers reinterpret them as one byte per 32-block and decode garbage, or refuse to load.",
         bad_scale_dtype)
    add_finding(out, "error", "config", "scale-wrong-shape",
         "scale tensors whose shape is not [..., N, ceil(K/32)] (row-major, one byte per 32 weights)",
         "Readers reject the shape at load time, or (if the byte count happens to match) apply each "
         "scale to the wrong block.", bad_scale_shape,
         shapes={p: _shapes(ckpt, views, p) for p in bad_scale_shape[:50]})
    add_finding(out, "error", "config", "k-not-multiple-of-32",
         "MXFP8 weights whose input dimension K is not a multiple of 32",
         "vLLM, SGLang and ModelOpt require K % 32 == 0 for MXFP8 and refuse these layers; keep them BF16.",
         k_not_32)
    add_finding(out, "error", "config", "fp8-not-mxfp8",
         "FP8 weights that are not MXFP8 (not E4M3, or without E8M0 block scales) in an MXFP8 checkpoint",
         "MXFP8 readers decode them with the wrong scale format: wrong weights or a load error.",
         non_mx if dialect in DIALECTS else [])
    if expected_suffix:
        add_finding(out, "error", "config", "scale-name-not-dialect",
             f"scale tensors are not named '<module>.{expected_suffix}' as the {dialect} dialect requires",
             f"A {dialect}-dialect reader looks for '{expected_suffix}', does not find the scales, and "
             "fails to load (or loads the weights unscaled).", wrong_name)
    add_finding(out, "warning", "config", "scale-beside-bf16-weight",
         "scale tensors next to high-precision weights",
         "Readers that keep these modules BF16 report unexpected keys (or ignore them); the file "
         "probably mixes two conversions.", scale_on_bf16)
    out.extend(_orphan_scales(ckpt, views, owned))
    out.extend(_skip_keys(ckpt, dialect))
    return out


TENSOR_LISTS = ("missing_scale", "bad_scale_dtype", "non_mx", "bad_scale_shape", "k_not_32", "wrong_name",
                "scale_on_bf16")


def _tensor_lists(ckpt: Checkpoint, views: Sequence[ModuleView], mx_rules: bool, endings: tuple[str, ...]
                  ) -> tuple[dict[str, list[str]], list[str] | None]:
    """The tensor checks' module lists (names in ``TENSOR_LISTS``; absent = empty), and the rows (in
    ``ckpt.columns``) of every view's scale when each is known to be a tensor and no view shares one
    (else None).

    Whether any view fails a check is decided on columns (distinct dtypes, shapes and name endings,
    compared in C); only then does ``tensor_lists_by_view`` sort the views one by one."""
    scales = list(map(_SCALE, views))
    dtypes = list(map(_DTYPE, views))
    is_fp8 = {d: d.startswith("F8_") for d in set(dtypes)}      # a handful of distinct dtypes
    fp8 = list(map(is_fp8.__getitem__, dtypes))
    has_scale = list(map(is_not, scales, repeat(None)))
    aligned = fp8 == has_scale                             # every FP8 weight has a scale, no other does
    if not aligned and any(map(lt, fp8, has_scale)):       # a BF16 weight with a scale
        return tensor_lists_by_view(ckpt, views, mx_rules, endings), None
    if not mx_rules:
        return {}, None
    if not aligned and any(map(gt, fp8, has_scale)):       # an FP8 weight without one
        return tensor_lists_by_view(ckpt, views, mx_rules, endings), None
    sel = list(compress(scales, fp8))                      # FP8 weights' scales: every FP8 weight has one
    if not sel:
        return {}, []
    # the scales' header entries from the checkpoint's columns (``ckpt.tensors`` is not built for this)
    columns = ckpt.columns
    own = _own_scale_rows(ckpt, views)
    where = list(compress(own, fp8)) if own is not None else list(map(ckpt.row_of.__getitem__, sel))
    shapes = list(compress(map(_SHAPE, views), fp8))
    expected = {shape: expected_scale_shape(shape) for shape in set(shapes)}
    clean = (set(map(columns.dtypes.__getitem__, where)) <= SCALE_DTYPES
             and set(compress(dtypes, fp8)) == {"F8_E4M3"}
             # (header shapes are tuples; one that is not compares unequal: the definition then decides)
             and list(map(expected.__getitem__, shapes)) == list(map(columns.shapes.__getitem__, where))
             and not any(shape and shape[-1] % BLOCK for shape in expected)
             and (not endings or all(map(str.endswith, sel, repeat(endings)))))
    distinct = len(set(where)) == len(where)
    return ({} if clean else tensor_lists_by_view(ckpt, views, mx_rules, endings)), (where if distinct else None)


def _own_scale_rows(ckpt: Checkpoint, views: Sequence[Any]) -> list[int] | None:
    """Each view's scale row in ``ckpt.columns`` (-1: none), when ``views`` are the checkpoint's own
    Linear modules or their module views, in that order (``linear_table`` found those rows); else None."""
    built = getattr(ckpt, "built", None)
    table = built("linear_modules") if built is not None else None
    if table is None or len(table.modules) != len(views):
        return None
    for own in (table.modules, built("module_views")):
        if own is not None and len(own) == len(views) and all(map(is_, views, own)):
            return table.scale_rows
    return None


def tensor_lists_by_view(ckpt: Checkpoint, views: Sequence[ModuleView], mx_rules: bool,
                         endings: tuple[str, ...]) -> dict[str, list[str]]:
    """``_tensor_lists`` view by view (the definition)."""
    out: dict[str, list[str]] = {}

    def add(name: str, path: str) -> None:
        out.setdefault(name, []).append(path)

    for v in views:
        if v.dtype.startswith("F8_"):
            if not mx_rules:
                continue
            if v.scale is None:
                add("missing_scale", v.path)
                continue
            info = ckpt.tensors[v.scale].info
            if info.dtype not in SCALE_DTYPES:
                add("bad_scale_dtype", v.path)
            elif v.dtype != "F8_E4M3":
                add("non_mx", v.path)
            elif tuple(info.shape) != expected_scale_shape(v.shape):
                add("bad_scale_shape", v.path)
            if v.shape and v.shape[-1] % BLOCK:
                add("k_not_32", v.path)
            if endings and not v.scale.endswith(endings):
                add("wrong_name", v.path)
        elif v.scale is not None:
            add("scale_on_bf16", v.path)
    return out


def _shapes(ckpt: Checkpoint, views: Sequence[ModuleView], path: str) -> dict[str, list[int]]:
    v = next(v for v in views if v.path == path)
    return {"weight": list(v.shape), "scale": list(ckpt.tensors[v.scale].info.shape) if v.scale else [],
            "expected": list(expected_scale_shape(v.shape))}


def _orphan_scales(ckpt: Checkpoint, views: Sequence[ModuleView], known: list[int] | None = None) -> list[Finding]:
    """``known``: the rows (in ``ckpt.columns``) of every view's scale, each a tensor of the checkpoint
    and none repeated (or None)."""
    # a scale tensor: ``rpartition(".")[2] in SCALE_SUFFIXES`` (ends with ".<suffix>", or is a bare suffix)
    endings = tuple("." + s for s in SCALE_SUFFIXES)
    names = ckpt.columns.names
    if known is not None:
        # none is orphaned when no tensor the views do not own is a scale: mark the owned rows, look
        # at the others only
        owned = bytearray(len(names))
        deque(map(owned.__setitem__, known, repeat(1)), maxlen=0)      # C-level marking
        row_of = ckpt.row_of
        if (not any(map(str.endswith, compress(names, map(not_, owned)), repeat(endings)))
                and all(owned[row_of[s]] for s in set(SCALE_SUFFIXES) & row_of.keys())):
            return []
    owned = {v.scale for v in views if v.scale}
    orphans = [n for n in names if n.rpartition(".")[2] in SCALE_SUFFIXES and n not in owned]
    if not orphans:
        return []
    return [Finding("warning", "config", "orphan-scale",
                    "scale tensors with no Linear weight beside them",
                    "Readers report them as unexpected keys; a weight may have been renamed or dropped.",
                    tuple(n.rpartition(".")[0] for n in orphans))]


def _skip_keys(ckpt: Checkpoint, dialect: str) -> list[Finding]:
    """Writer guidance: SGLang-dialect lists go under both keys, identical (engine-semantics.md §8.5)."""
    if dialect != "sglang":
        return []
    qc = ckpt.quantization_config
    a, b = qc.get("ignored_layers"), qc.get("modules_to_not_convert")
    if isinstance(a, list) and isinstance(b, list):
        if a == b:
            return []
        only_a = sorted(set(map(str, a)) - set(map(str, b)))
        only_b = sorted(set(map(str, b)) - set(map(str, a)))
        return [Finding(
            "warning", "config", "skip-keys-differ",
            f"ignored_layers and modules_to_not_convert differ ({len(only_a)} entries only in the first, "
            f"{len(only_b)} only in the second)",
            "SGLang and vLLM read ignored_layers while transformers reads modules_to_not_convert, so the "
            "engines keep different modules in BF16 (see the engine findings for which).",
            (), details={"only_ignored_layers": only_a[:50], "only_modules_to_not_convert": only_b[:50]})]
    present = [k for k, v in (("ignored_layers", a), ("modules_to_not_convert", b)) if v is not None]
    if len(present) == 1 and (a or b):
        missing = "modules_to_not_convert" if present[0] == "ignored_layers" else "ignored_layers"
        return [Finding(
            "info", "config", "single-skip-key",
            f"the skip list is written only under {present[0]}",
            f"Consumers that read {missing} first (or only) fall back differently; writing both keys, "
            "identical, makes every engine read the same list.", ())]
    return []
