"""What a checkpoint holds, from headers and JSON only: per-module precision, companions, totals.

`mxmix inspect` prints this; `mxmix audit` builds on the same per-module view (stored precision),
so both always agree on what "stored MXFP8" means.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections import Counter, defaultdict, deque
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
    ``companions`` dicts are read-only: views with equal companions may share one.
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
    from mxmix.checkpoint.modules import linear_table

    table = linear_table(ckpt)
    own = table.modules
    with _gc_paused(promote=True):   # 10^5 views: see _gc_paused
        if mods is None or (len(mods) == len(own) and all(map(operator.is_, mods, own))):
            return list(ckpt.derived("module_views", lambda: _module_views(ckpt, own, table.weight_rows,
                                                                          table.scale_rows)))
        return _module_views(ckpt, mods)


def _module_views(ckpt: Checkpoint, mods: Sequence[Any], weight_rows: list[int] | None = None,
                  scale_rows: list[int] | None = None) -> list[ModuleView]:
    """Views of ``mods``; ``weight_rows``/``scale_rows`` (their tensors' rows in ``ckpt.columns``,
    -1 for no scale) when already known. Equal companion sets share one (read-only) dict: 10^5
    identical {"weight_scale_inv": ("U8", shape)} are one object."""
    from mxmix.checkpoint.modules import LinearModule, stored_precision

    cols = ckpt.columns
    names, dtypes, shapes, nbytes = cols
    if all(type(m) is LinearModule for m in mods):
        records: Sequence[Any] = mods                       # fields read by position
        precisions = None
    else:                                                   # any objects with LinearModule's attributes
        records = list(map(_MODULE_FIELDS, mods))
        precisions = [m.precision for m in mods]
    if weight_rows is None or scale_rows is None:
        row_of = ckpt.row_of
        weight_rows = [row_of[m[1]] for m in records]
        scale_rows = [row_of.get(m[6], -1) if m[6] else -1 for m in records]
    # any other "<m>.<x>" tensor (input_scale, bias, ...) of a "<m>.weight" module: scan only what is
    # neither a weight nor a scale
    taken = bytearray(len(names) + 1)                        # the extra slot absorbs scale row -1
    taken_by_weight = bytearray(len(names) + 1)
    for marks, rows in ((taken_by_weight, weight_rows), (taken, weight_rows), (taken, scale_rows)):
        deque(map(marks.__setitem__, rows, itertools.repeat(1)), maxlen=0)   # C-level marking
    extra: dict[int, list[tuple[str, int]]] = {}
    rest = itertools.compress(names, map(operator.not_, taken[:-1]))
    for name in sorted(rest):
        prefix, _, suffix = name.rpartition(".")
        owner = ckpt.row_of.get(prefix + ".weight")
        if owner is not None and taken_by_weight[owner]:
            extra.setdefault(owner, []).append((suffix, ckpt.row_of[name]))
    out = []
    append = out.append
    new = tuple.__new__
    sizes = DTYPE_SIZES      # params from the byte count: validated equal to the shape's product, and O(1)
    no_companions: dict[str, tuple[str, tuple[int, ...]]] = {}
    shared: dict[tuple[str, str, tuple[int, ...]], dict[str, tuple[str, tuple[int, ...]]]] = {}
    precision_of: dict[tuple[str, str | None, bool], str] = {}
    for k, (path, w, m_dtype, _, layer, kind, scale, stacked, expert, scale_dtype) in enumerate(records):
        if precisions is None:
            key = (m_dtype, scale_dtype, scale is not None)
            precision = precision_of.get(key)
            if precision is None:
                precision = precision_of[key] = stored_precision(*key)
        else:
            precision = precisions[k]
        i = weight_rows[k]
        size = nbytes[i]
        dtype = dtypes[i]
        j = scale_rows[k]
        if j < 0:
            comps = no_companions
            comp_bytes = 0
        else:
            comp = (scale.rpartition(".")[2], dtypes[j], shapes[j])
            comps = shared.get(comp)   # type: ignore[assignment]
            if comps is None:
                comps = shared[comp] = {comp[0]: comp[1:]}
            comp_bytes = nbytes[j]
        if extra:
            more = extra.get(i)
            if more:
                comps = dict(comps)      # this module's own dict
                for suffix, r in more:
                    comps[suffix] = (dtypes[r], shapes[r])
                    comp_bytes += nbytes[r]
        append(new(ModuleView, (path, kind, layer, expert, stacked, w, dtype, shapes[i], precision, scale,
                                comps, size // sizes[dtype], size + comp_bytes)))
    return out


_MODULE_FIELDS = operator.attrgetter("path", "weight", "dtype", "shape", "layer", "kind", "scale", "stacked",
                                     "expert", "scale_dtype")


def layer_summary(modules: Sequence[ModuleView]) -> list[dict[str, Any]]:
    """Decoder layers grouped into runs with the same precision per module kind.

    A kind whose modules disagree inside one layer (e.g. some experts MXFP8, some BF16) reads "mixed".
    """
    per_layer: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    # distinct (layer, kind, precision) first: one set comprehension over 10^5 modules, then ~10^2 adds
    distinct = set(zip(map(_LAYER, modules), map(_KIND, modules), map(_PRECISION, modules)))
    for layer, kind, precision in distinct:
        if layer is not None:
            per_layer[layer][kind].add(precision)
    runs: list[dict[str, Any]] = []
    for layer in sorted(per_layer):
        kinds = {k: (next(iter(v)) if len(v) == 1 else "mixed") for k, v in sorted(per_layer[layer].items())}
        if runs and runs[-1]["kinds"] == kinds and runs[-1]["last"] == layer - 1:
            runs[-1]["last"] = layer
        else:
            runs.append({"first": layer, "last": layer, "kinds": kinds})
    return runs


_LAYER = operator.attrgetter("layer")
_KIND = operator.attrgetter("kind")


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
    with _gc_paused(promote=True):   # ~10^5 small acyclic objects, kept with the checkpoint
        return _inspect(ckpt, modules)


def _inspect(ckpt: Checkpoint, modules: Sequence[ModuleView] | None) -> InspectSummary:
    views = list(modules) if modules is not None else module_views(ckpt)
    cols = ckpt.columns
    dtypes, nbytes = cols.dtypes, cols.nbytes
    by_dtype: dict[str, dict[str, int]] = {}
    # whole-list sums per distinct value (a handful of dtypes and precisions over 10^5 tensors)
    totals = grouped_sums(dtypes, nbytes)
    for dtype in sorted(totals):
        count, size = totals[dtype]
        by_dtype[dtype] = {"tensors": count, "params": size // DTYPE_SIZES[dtype], "bytes": size}
    precisions = list(map(_PRECISION, views))
    params = list(map(_PARAMS, views))
    sizes = list(map(_NBYTES, views))
    linear = {}
    totals = grouped_sums(precisions, params, sizes)
    for precision in sorted(totals, key=_precision_rank):
        count, size, nbytes_of = totals[precision]
        linear[precision] = {"modules": count, "params": size, "bytes": nbytes_of}
    linear_bytes = sum(sizes)
    linear_params_all = sum(params)
    linear_companion_params = sum(map(math.prod, map(_SECOND, itertools.chain.from_iterable(
        map(dict.values, map(_COMPANIONS, views))))))
    total_params = sum(r["params"] for r in by_dtype.values())
    total_bytes = sum(r["bytes"] for r in by_dtype.values())
    qc = ckpt.quantization_config
    return InspectSummary(
        root=str(ckpt.root), dialect=checkpoint_dialect(ckpt), quant_method=qc.get("quant_method"),
        shards=len(ckpt.headers), tensors=len(cols.names), modules=views, by_dtype=by_dtype,
        linear_by_precision=linear, other_params=total_params - linear_params_all - linear_companion_params,
        other_bytes=total_bytes - linear_bytes, layers=layer_summary(views), skip_keys=skip_key_values(ckpt))


def grouped_sums(keys: Sequence[Any], *columns: Sequence[int]) -> dict[Any, tuple[int, ...]]:
    """Per distinct key (in order of first appearance): (how many rows hold it, then the sum of each
    column over those rows). Counted in C; each column summed per key but the last, which takes the
    rest of the column's total (a handful of keys over 10^5 rows)."""
    counts = Counter(keys)
    distinct = list(counts)
    rest = [sum(column) for column in columns]
    out: dict[Any, tuple[int, ...]] = {}
    for n, key in enumerate(distinct):
        if n == len(distinct) - 1:
            sums = rest
        else:
            sums = [sum(itertools.compress(column, map(operator.eq, keys, itertools.repeat(key)))) for column in columns]
            rest = list(map(operator.sub, rest, sums))
        out[key] = (counts[key], *sums)
    return out


def grouped_sums_reference(keys: Sequence[Any], *columns: Sequence[int]) -> dict[Any, tuple[int, ...]]:
    """The definition of :func:`grouped_sums`, row by row (for tests)."""
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        acc = out.setdefault(key, [0] * (1 + len(columns)))
        acc[0] += 1
        for j, column in enumerate(columns):
            acc[1 + j] += column[i]
    return {k: tuple(v) for k, v in out.items()}


_PRECISION = operator.attrgetter("precision")
_PARAMS = operator.attrgetter("params")
_NBYTES = operator.attrgetter("nbytes")
_COMPANIONS = operator.attrgetter("companions")
_SECOND = operator.itemgetter(1)


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
