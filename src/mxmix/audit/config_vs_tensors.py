"""Check 1: what the config says (canonical reading) against what the tensors are.

The canonical reading is mxmix's own interpretation of the writer's intent (every skip key merged,
whole dotted components); a disagreement here means the checkpoint contradicts itself, whatever
engine loads it. Tensor-level facts (missing or malformed scales, scales under the wrong dialect
name, K not a multiple of 32) are checked here too: they break every reader.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxmix.audit.findings import Finding, add_finding
from mxmix.checkpoint.dialects import DIALECTS, SCALE_SUFFIXES
from mxmix.checkpoint.inspect import BLOCK, FP8, MXFP8, SCALE_DTYPES, ModuleView, expected_scale_shape
from mxmix.checkpoint.layout import Checkpoint
from mxmix.rules.decision import ERROR, KEEP, Decision

QUANTIZED = (MXFP8, FP8)


def check_config_vs_tensors(ckpt: Checkpoint, views: Sequence[ModuleView], canonical: dict[str, Decision] | None,
                            dialect: str) -> list[Finding]:
    """``canonical``: module path -> the canonical reading's decision (None when the config declares
    no quantization)."""
    out: list[Finding] = []
    declared = canonical is not None
    keeps_fp8, quantizes_bf16, raises = [], [], []
    reasons: dict[str, str] = {}
    missing_scale, bad_scale_dtype, bad_scale_shape, k_not_32, wrong_name, non_mx = [], [], [], [], [], []
    scale_on_bf16: list[str] = []
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
    for v in views:
        quantized = v.precision in QUANTIZED
        if declared:
            d = canonical.get(v.path)
            if d is not None:
                if d.decision == ERROR:
                    raises.append(v.path)
                    reasons.setdefault(d.reason, v.path)
                elif d.decision == KEEP and quantized:
                    keeps_fp8.append(v.path)
                elif d.decision != KEEP and not quantized:
                    quantizes_bf16.append(v.path)
        elif quantized:
            undeclared_fp8.append(v.path)
        if v.dtype.startswith("F8_"):
            if not mx_rules:
                continue
            if v.scale is None:
                missing_scale.append(v.path)
                continue
            sdtype, sshape = _scale_info(ckpt, v.scale)
            if sdtype not in SCALE_DTYPES:
                bad_scale_dtype.append(v.path)
            elif v.dtype != "F8_E4M3":
                non_mx.append(v.path)
            elif tuple(sshape) != expected_scale_shape(v.shape):
                bad_scale_shape.append(v.path)
            if v.shape and v.shape[-1] % BLOCK:
                k_not_32.append(v.path)
            if expected_suffix and not _has_suffix(v.scale, expected_suffix):
                wrong_name.append(v.path)
        elif v.scale is not None:
            scale_on_bf16.append(v.path)

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
    out.extend(_orphan_scales(ckpt, views))
    out.extend(_skip_keys(ckpt, dialect))
    return out


def _scale_info(ckpt: Checkpoint, name: str) -> tuple[str, tuple[int, ...]]:
    info = ckpt.tensors[name].info
    return info.dtype, info.shape


def _shapes(ckpt: Checkpoint, views: Sequence[ModuleView], path: str) -> dict[str, list[int]]:
    v = next(v for v in views if v.path == path)
    return {"weight": list(v.shape), "scale": list(ckpt.tensors[v.scale].info.shape) if v.scale else [],
            "expected": list(expected_scale_shape(v.shape))}


def _has_suffix(scale_name: str, suffix: str) -> bool:
    # "<m>.weight_scale_inv" (2-D) or "<m>.experts.down_proj_scale_inv" (stacked experts)
    return scale_name.endswith("." + suffix) or scale_name.endswith("_" + suffix.removeprefix("weight_"))


def _orphan_scales(ckpt: Checkpoint, views: Sequence[ModuleView]) -> list[Finding]:
    owned = {v.scale for v in views if v.scale}
    orphans = [n for n in ckpt.tensors if n.rpartition(".")[2] in SCALE_SUFFIXES and n not in owned]
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
