"""What a checkpoint holds, from headers and JSON only: per-module precision, companions, totals.

`mxmix inspect` prints this; `mxmix audit` builds on the same per-module view (stored precision),
so both always agree on what "stored MXFP8" means.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mxmix.checkpoint.dialects import recognise_dialect
from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.safetensors_header import DTYPE_SIZES, _gc_paused

MXFP8 = "mxfp8"      # FP8 E4M3 elements + E8M0 block scales (LinearModule.precision)
FP8 = "fp8"          # an FP8 weight without E8M0 block scales (per-tensor/per-channel FP8, or scales missing)
SCALE_DTYPES = frozenset({"U8", "F8_E8M0"})
BLOCK = 32
# Display order of precisions (tables, legends, colour maps).
PRECISION_ORDER = (MXFP8, FP8, "bf16", "f16", "f32", "f64")


def expected_scale_shape(weight_shape: Sequence[int], block: int = BLOCK) -> tuple[int, ...]:
    """Row-major E8M0 scales of a weight ``[..., N, K]``: ``[..., N, ceil(K / block)]``."""
    if not weight_shape:
        return ()
    *lead, k = weight_shape
    return (*lead, -(-k // block))


class ModuleView(NamedTuple):
    """One Linear module as stored: its weight, its companions, and the precision they add up to.

    A named tuple (10^5 of them for a large MoE checkpoint; a frozen dataclass costs 5x more to build).
    """

    path: str
    kind: str
    layer: int | None
    expert: int | None
    stacked: bool
    weight: str
    dtype: str
    shape: tuple[int, ...]
    precision: str
    scale: str | None
    companions: dict[str, tuple[str, tuple[int, ...]]]   # suffix -> (dtype, shape)
    params: int
    nbytes: int                                           # weight + companions

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "kind": self.kind, "layer": self.layer, "expert": self.expert,
            "stacked": self.stacked, "weight": self.weight, "dtype": self.dtype, "shape": list(self.shape),
            "precision": self.precision, "scale": self.scale,
            "companions": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in self.companions.items()},
            "params": self.params, "bytes": self.nbytes,
        }


@dataclass
class InspectSummary:
    root: str
    dialect: str
    quant_method: str | None
    shards: int
    tensors: int
    modules: list[ModuleView]
    by_dtype: dict[str, dict[str, int]]
    linear_by_precision: dict[str, dict[str, int]]
    other_params: int
    other_bytes: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    skip_keys: dict[str, Any] = field(default_factory=dict)

    @property
    def linear_params(self) -> int:
        return sum(v["params"] for v in self.linear_by_precision.values())

    @property
    def mxfp8_percent(self) -> float:
        total = self.linear_params
        return 100.0 * self.linear_by_precision.get(MXFP8, {}).get("params", 0) / total if total else 0.0

    def to_dict(self, *, modules: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checkpoint": self.root, "dialect": self.dialect, "quant_method": self.quant_method,
            "shards": self.shards, "tensors": self.tensors, "linear_modules": len(self.modules),
            "linear_params": self.linear_params, "linear_mxfp8_percent": round(self.mxfp8_percent, 3),
            "linear_by_precision": self.linear_by_precision, "by_dtype": self.by_dtype,
            "other_params": self.other_params, "other_bytes": self.other_bytes,
            "skip_keys": self.skip_keys, "layers": self.layers,
        }
        if modules:
            out["modules"] = [m.to_dict() for m in self.modules]
        return out


def module_views(ckpt: Checkpoint, mods: Sequence[Any] | None = None) -> list[ModuleView]:
    """Every Linear module (``mxmix.checkpoint.modules.linear_modules``) with its companions.

    Companions are the scale tensor plus, for a ``<m>.weight`` module, every other ``<m>.<x>`` tensor
    (``input_scale``, ``bias``, ``weight_scale_2``...). Stacked experts share one module path, so a
    view is identified by its weight tensor.

    For the checkpoint's own ``linear_modules`` (``mods`` None, or those very objects in that order) the
    views are computed once per opened checkpoint and shared (a fresh list each call).
    """
    from mxmix.checkpoint.modules import linear_modules

    own = linear_modules(ckpt)
    if mods is None or (len(mods) == len(own) and all(map(operator.is_, mods, own))):
        return list(ckpt.derived("module_views", lambda: _module_views(ckpt, own)))
    return _module_views(ckpt, mods)


def _module_views(ckpt: Checkpoint, mods: Sequence[Any]) -> list[ModuleView]:
    tensors = ckpt.tensors
    # any other "<m>.<x>" tensor (input_scale, bias, ...): scan only what is neither weight nor scale
    weights = [m.weight for m in mods]
    owner_of_prefix = {w[:-7]: w for w in weights if w.endswith(".weight")}
    rest = tensors.keys() - set(weights) - {m.scale for m in mods if m.scale}
    extra: dict[str, list[tuple[str, str, tuple[int, ...], int]]] = {}
    for name in sorted(rest):
        prefix, _, suffix = name.rpartition(".")
        owner = owner_of_prefix.get(prefix)
        if owner is not None:
            info = tensors[name].info
            extra.setdefault(owner, []).append((suffix, info.dtype, info.shape, info.end - info.begin))
    out = []
    append = out.append
    new = tuple.__new__
    sizes = DTYPE_SIZES      # params from the byte count: validated equal to the shape's product, and O(1)
    no_companions: dict[str, tuple[str, tuple[int, ...]]] = {}
    for m, w in zip(mods, weights):
        info = tensors[w].info
        nbytes = info.end - info.begin
        scale = m.scale
        comps = no_companions
        comp_bytes = 0
        if scale and scale in tensors:       # the scale: known per module, no scan needed
            sinfo = tensors[scale].info
            comps = {scale.rpartition(".")[2]: (sinfo.dtype, sinfo.shape)}
            comp_bytes = sinfo.end - sinfo.begin
        more = extra.get(w) if extra else None
        if more:
            if comps is no_companions:
                comps = {}
            for suffix, dtype, shape, size in more:
                comps[suffix] = (dtype, shape)
                comp_bytes += size
        append(new(ModuleView, (
            m.path, m.kind, m.layer, m.expert, m.stacked, w, info.dtype, info.shape, m.precision, scale,
            comps, nbytes // sizes[info.dtype], nbytes + comp_bytes)))
    return out


def layer_summary(modules: Sequence[ModuleView]) -> list[dict[str, Any]]:
    """Decoder layers grouped into runs with the same precision per module kind.

    A kind whose modules disagree inside one layer (e.g. some experts MXFP8, some BF16) reads "mixed".
    """
    per_layer: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    # distinct (layer, kind, precision) first: one set comprehension over 10^5 modules, then ~10^2 adds
    for layer, kind, precision in {(m.layer, m.kind, m.precision) for m in modules if m.layer is not None}:
        per_layer[layer][kind].add(precision)
    runs: list[dict[str, Any]] = []
    for layer in sorted(per_layer):
        kinds = {k: (next(iter(v)) if len(v) == 1 else "mixed") for k, v in sorted(per_layer[layer].items())}
        if runs and runs[-1]["kinds"] == kinds and runs[-1]["last"] == layer - 1:
            runs[-1]["last"] = layer
        else:
            runs.append({"first": layer, "last": layer, "kinds": kinds})
    return runs


def skip_key_values(ckpt: Checkpoint) -> dict[str, Any]:
    """Every skip-list key present in config.json's quantization_config and hf_quant_config.json."""
    out: dict[str, Any] = {}
    qc = ckpt.quantization_config
    for key in ("ignored_layers", "modules_to_not_convert", "ignore", "exclude_modules", "exclude",
                "quantized_layers"):
        if key in qc:
            out[f"quantization_config.{key}"] = qc[key]
    hf = hf_quant_config(ckpt)
    quant = hf.get("quantization") if isinstance(hf, dict) else None
    if isinstance(quant, dict) and "exclude_modules" in quant:
        out["hf_quant_config.quantization.exclude_modules"] = quant["exclude_modules"]
    return out


def hf_quant_config(ckpt: Checkpoint) -> dict[str, Any] | None:
    """ModelOpt's side file, when the checkpoint has one (a directory, not a lone .safetensors file)."""
    if ckpt.config is None:
        return None
    from mxmix.errors import CheckpointError

    data = ckpt.read_json("hf_quant_config.json")
    if data is not None and not isinstance(data, dict):
        raise CheckpointError(f"{ckpt.root}/hf_quant_config.json: not a JSON object")
    return data


def checkpoint_dialect(ckpt: Checkpoint) -> str:
    """Dialect from config.json, falling back to ModelOpt's hf_quant_config.json."""
    qc = ckpt.quantization_config
    dialect = recognise_dialect(qc)
    if dialect == "plain":
        hf = hf_quant_config(ckpt)
        quant = hf.get("quantization") if isinstance(hf, dict) else None
        if isinstance(quant, dict) and quant.get("quant_algo"):
            return "modelopt"
    return dialect


def inspect_checkpoint(ckpt: Checkpoint, modules: Sequence[ModuleView] | None = None) -> InspectSummary:
    """Summarise ``ckpt`` (already opened: headers only)."""
    with _gc_paused():   # ~10^5 small acyclic objects; cyclic GC passes would only cost time
        return _inspect(ckpt, modules)


def _inspect(ckpt: Checkpoint, modules: Sequence[ModuleView] | None) -> InspectSummary:
    views = list(modules) if modules is not None else module_views(ckpt)
    by_dtype: dict[str, dict[str, int]] = {}
    for loc in ckpt.tensors.values():
        info = loc.info
        row = by_dtype.get(info.dtype)
        if row is None:
            row = by_dtype[info.dtype] = {"tensors": 0, "params": 0, "bytes": 0}
        row["tensors"] += 1
        row["bytes"] += info.end - info.begin
    for dtype, row in by_dtype.items():
        row["params"] = row["bytes"] // DTYPE_SIZES[dtype]
    # per precision: [modules, params, bytes]; plain locals and lists, 10^5 modules
    acc: dict[str, list[int]] = {}
    linear_bytes = linear_params_all = linear_companion_params = 0
    prod = math.prod
    for m in views:
        a = acc.get(m.precision)
        if a is None:
            a = acc[m.precision] = [0, 0, 0]
        a[0] += 1
        a[1] += m.params
        a[2] += m.nbytes
        linear_bytes += m.nbytes
        linear_params_all += m.params
        for _, shape in m.companions.values():
            linear_companion_params += prod(shape)
    linear = {k: {"modules": acc[k][0], "params": acc[k][1], "bytes": acc[k][2]}
              for k in sorted(acc, key=_precision_rank)}
    total_params = sum(r["params"] for r in by_dtype.values())
    total_bytes = sum(r["bytes"] for r in by_dtype.values())
    qc = ckpt.quantization_config
    return InspectSummary(
        root=str(ckpt.root), dialect=checkpoint_dialect(ckpt), quant_method=qc.get("quant_method"),
        shards=len(ckpt.headers), tensors=len(ckpt.tensors), modules=views, by_dtype=dict(sorted(by_dtype.items())),
        linear_by_precision=linear, other_params=total_params - linear_params_all - linear_companion_params,
        other_bytes=total_bytes - linear_bytes, layers=layer_summary(views), skip_keys=skip_key_values(ckpt))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _precision_rank(p: str) -> tuple[int, str]:
    return (PRECISION_ORDER.index(p) if p in PRECISION_ORDER else len(PRECISION_ORDER), p)


def format_summary(s: InspectSummary, *, max_modules: int = 40) -> str:
    """Readable report: header facts, precision totals, per-layer runs, then modules (capped)."""
    from mxmix.cli.output import format_table, human_bytes

    lines = [
        f"checkpoint: {s.root}",
        f"dialect:    {s.dialect}" + (f" (quant_method {s.quant_method!r})" if s.quant_method else ""),
        f"shards:     {s.shards}, tensors: {s.tensors}, Linear modules: {len(s.modules)}",
        f"Linear params in MXFP8: {s.mxfp8_percent:.1f} %",
        "",
    ]
    rows = [[p, r["modules"], f"{r['params']:,}", human_bytes(r["bytes"])] for p, r in s.linear_by_precision.items()]
    rows.append(["other tensors", "", f"{s.other_params:,}", human_bytes(s.other_bytes)])
    lines.append(format_table(["precision", "Linear modules", "params", "bytes"], rows, align="lrrr"))
    lines.append("")
    lines.append(format_table(["dtype", "tensors", "params", "bytes"],
                              [[d, r["tensors"], f"{r['params']:,}", human_bytes(r["bytes"])]
                               for d, r in s.by_dtype.items()], align="lrrr"))
    if s.skip_keys:
        lines.append("")
        for key, value in s.skip_keys.items():
            n = len(value) if isinstance(value, (list, dict)) else "?"
            preview = ", ".join(map(str, list(value)[:4])) if isinstance(value, (list, dict)) else repr(value)
            more = ", ..." if isinstance(value, (list, dict)) and len(value) > 4 else ""
            lines.append(f"{key}: {n} entries [{preview}{more}]")
    if s.layers:
        lines.append("")
        lines.append("decoder layers:")
        rows = []
        for run in s.layers:
            span = str(run["first"]) if run["first"] == run["last"] else f"{run['first']}-{run['last']}"
            by_prec: dict[str, list[str]] = defaultdict(list)
            for kind, prec in run["kinds"].items():
                by_prec[prec].append(kind)
            rows.append([span, "; ".join(f"{p}: {' '.join(k)}" for p, k in
                                         sorted(by_prec.items(), key=lambda kv: _precision_rank(kv[0])))])
        lines.append(format_table(["layers", "module kinds by precision"], rows))
    others = [m for m in s.modules if m.layer is None]
    shown = others + [m for m in s.modules if m.layer is not None][: max(0, max_modules - len(others))]
    if shown:
        lines.append("")
        rows = []
        for m in shown:
            comps = ", ".join(f"{k} {d}{list(sh)}" for k, (d, sh) in m.companions.items())
            rows.append([m.weight if m.stacked else m.path, m.precision, f"{m.dtype}{list(m.shape)}", comps])
        lines.append(format_table(["module", "precision", "weight", "companions"], rows))
        if len(shown) < len(s.modules):
            lines.append(f"... {len(s.modules) - len(shown)} more modules (use --json for all)")
    return "\n".join(lines)
