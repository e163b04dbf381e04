"""Per-module precision of a checkpoint as each engine will run it, against what is stored.

Every engine reads the checkpoint's own skip list with its own key precedence (config_keys) and
its own matcher (engines/), about the module name *it* sees: serving engines ask about runtime
modules (fused ``qkv_proj`` / ``gate_up_proj`` when all shards are present, the FusedMoE
``…experts`` for per-expert tensors); transformers, the compressed-tensors library and the
canonical reading ask about checkpoint names. A module an engine keeps BF16 while the checkpoint
stores it quantized (or the reverse) is a disagreement: that engine will misload the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, eq, ne
from typing import Any, NamedTuple

from mxmix.checkpoint.dialects import recognise_dialect
from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.modules import LinearModule, linear_modules
from mxmix.checkpoint.safetensors_header import FP8_DTYPES
from mxmix.errors import MxmixError
from mxmix.rules.column import Column, RowIndex
from mxmix.rules.config_keys import skip_list_for
from mxmix.rules.decision import DEFAULT_FUSED, ERROR, KEEP, Decision
from mxmix.rules.engines import engines_for_dialect, get_engine
from mxmix.rules.primitives import Backend, fold_from_known_ancestor

SHARD_TO_FUSED = {shard: fused for fused, shards in DEFAULT_FUSED.items() for shard in shards}
_PATH, _DTYPE = attrgetter("path"), attrgetter("dtype")


class PlanRow(NamedTuple):
    """One Linear module and each engine's decision (a named tuple: a plan holds 10^5 of them)."""

    module: LinearModule
    decisions: dict[str, Decision]

    @property
    def stored(self) -> str:
        return self.module.precision

    def runs_as(self, engine: str) -> str:
        """"bf16", "mxfp8" or "error": what ``engine`` makes of this module."""
        d = self.decisions[engine]
        if d.decision == ERROR:
            return "error"
        return "bf16" if d.decision == KEEP else "mxfp8"

    def disagrees(self, engine: str) -> bool:
        d = self.decisions[engine]
        if d.decision == ERROR:
            return True
        return (d.decision == KEEP) == self.module.quantized

    def to_dict(self) -> dict[str, Any]:
        out = self.module.to_dict()
        out["stored"] = self.stored
        out["engines"] = {e: {**d.to_dict(), "runs_as": self.runs_as(e), "disagrees": self.disagrees(e)}
                          for e, d in self.decisions.items()}
        return out


@dataclass
class Plan:
    checkpoint: str
    dialect: str
    quant_method: str | None
    engines: list[str]
    skip_lists: dict[str, list[str]]
    modules: list[LinearModule]
    notes: list[str] = field(default_factory=list)
    # engine -> its decisions, aligned with ``modules`` (built lazily: see ``Column``)
    columns: dict[str, Column] = field(default_factory=dict, repr=False)
    # checkpoint module path -> the module a serving engine asks about (``runtime_path_map``)
    runtime: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _rows: list[PlanRow] | None = field(default=None, init=False, repr=False, compare=False)
    _paths: list[str] | None = field(default=None, init=False, repr=False, compare=False)
    _quantized: list[bool] | None = field(default=None, init=False, repr=False, compare=False)
    _distinct: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def rows(self) -> list[PlanRow]:
        """One PlanRow per module (built on first use: audit and lint read the columns instead)."""
        if self._rows is None:
            from mxmix.checkpoint.safetensors_header import _gc_paused

            new = tuple.__new__   # PlanRow's own __new__ is a Python-level function
            names = list(self.columns)
            with _gc_paused(promote=True):    # 10^5 small acyclic dicts, kept with the plan
                if names:
                    cols = [self.columns[e].decisions() for e in names]
                    self._rows = [new(PlanRow, (m, dict(zip(names, ds))))
                                  for m, ds in zip(self.modules, zip(*cols))]
                else:
                    self._rows = [PlanRow(m, {}) for m in self.modules]
        return self._rows

    @property
    def paths(self) -> list[str]:
        """Each row's module path."""
        if self._paths is None:
            self._paths = [m.path for m in self.modules]
        return self._paths

    @property
    def distinct_paths(self) -> list[str]:
        """The row paths without repeats (first occurrences, in order): ``paths`` itself, the very
        list, when no path repeats (stacked experts share one)."""
        if self._distinct is None:
            distinct = list(dict.fromkeys(self.paths))
            self._distinct = self.paths if len(distinct) == len(self.paths) else distinct
        return self._distinct

    @property
    def quantized(self) -> list[bool]:
        """Each row: is the module stored quantized (FP8)."""
        if self._quantized is None:   # LinearModule.quantized, read as the dtype column (no call per module)
            self._quantized = list(map(FP8_DTYPES.__contains__, map(_DTYPE, self.modules)))
        return self._quantized

    def column(self, engine: str) -> Column:
        """``engine``'s decision for every row, in row order."""
        return self.columns[engine]

    def disagreements(self) -> dict[str, int]:
        quantized = self.quantized
        out = {}
        for e in self.engines:
            outcomes = self.columns[e].outcomes()
            # disagrees: error, or kept while stored quantized, or quantized while stored BF16
            agree = sum(map(ne, map(eq, outcomes, repeat(KEEP)), quantized))
            errors = outcomes.count(ERROR)
            if errors:
                agree -= sum(1 for o, q in zip(outcomes, quantized) if o == ERROR and q)
            out[e] = len(outcomes) - agree
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "dialect": self.dialect, "quant_method": self.quant_method,
                "engines": self.engines, "skip_lists": self.skip_lists, "disagreements": self.disagreements(),
                "notes": self.notes, "modules": [r.to_dict() for r in self.rows]}


def runtime_path_map(paths: Sequence[str]) -> dict[str, str]:
    """Checkpoint module path -> the module a serving engine builds it into.

    ``…experts.N.<proj>`` -> the FusedMoE ``…experts``; ``q/k/v_proj`` -> ``qkv_proj`` and
    ``gate/up_proj`` -> ``gate_up_proj`` when every shard is present under the same parent.

    Same answers as :func:`runtime_path_map_reference`, with what a path's parent fixes (where its
    last ``experts`` component is, whether a fused group is complete) worked out once per parent,
    each parent's from its own parent's: 10^5 expert paths share 10^4 parents and 10^2 grandparents.
    """
    present = set(paths)
    out: dict[str, str] = {}
    experts_of: dict[str, tuple[int, str]] = {"": _NO_EXPERTS}
    complete: dict[tuple[str, str], bool] = {}
    shard_to_fused = SHARD_TO_FUSED
    for path in paths:
        parent, _, last = path.rpartition(".")
        if last != "experts":
            known = experts_of.get(parent)
            if known is None:
                known = _experts_of(parent, experts_of)
            mode, fused_moe = known
            if mode == _EXPERTS_MAPPED or (mode == _EXPERTS_LAST and last.isdigit()):
                out[path] = fused_moe
                continue
        fused = shard_to_fused.get(last)
        if fused is not None:
            key = (parent, fused)
            ok = complete.get(key)
            if ok is None:
                ok = complete[key] = all((f"{parent}.{s}" if parent else s) in present for s in DEFAULT_FUSED[fused])
            if ok:
                out[path] = f"{parent}.{fused}" if parent else fused
                continue
        out[path] = path
    return out


# Where the definition's expert branch lands for paths ``<parent>.<last>`` (last != "experts"): the
# path's last ``experts`` component is then the parent's last one, and the path maps to the prefix
# ending there iff the component after it is a number. That component lies inside the parent
# (MAPPED to the prefix, or NONE), or, when the parent ends in ``experts``, it is ``last`` itself
# (LAST: mapped to the parent iff ``last`` is a number).
_EXPERTS_NONE, _EXPERTS_MAPPED, _EXPERTS_LAST = 0, 1, 2
_NO_EXPERTS = (_EXPERTS_NONE, "")


def _experts_step(known: tuple[int, str], path: str, component: str) -> tuple[int, str]:
    """(mode, prefix) of ``path`` from that of its parent: the last ``experts`` seen and whether the
    components after it still map to it."""
    if component == "experts":
        return (_EXPERTS_LAST, path)
    if known[0] == _EXPERTS_LAST:
        return (_EXPERTS_MAPPED, known[1]) if component.isdigit() else _NO_EXPERTS
    return known


def _experts_of(parent: str, memo: dict[str, tuple[int, str]]) -> tuple[int, str]:
    """The (mode, prefix) of ``parent`` (memoised in ``memo``, which holds ``""``)."""
    return fold_from_known_ancestor(parent, memo, _experts_step)


def runtime_path_map_reference(paths: Sequence[str]) -> dict[str, str]:
    """The definition of :func:`runtime_path_map`, path by path (for tests)."""
    present = set(paths)
    out: dict[str, str] = {}
    for path in paths:
        parts = path.split(".")
        if "experts" in parts[:-1]:
            k = len(parts) - 1 - parts[::-1].index("experts")
            if k + 1 < len(parts) and parts[k + 1].isdigit():
                out[path] = ".".join(parts[:k + 1])
                continue
        fused = SHARD_TO_FUSED.get(parts[-1])
        if fused is not None:
            parent = ".".join(parts[:-1])
            siblings = [f"{parent}.{s}" if parent else s for s in DEFAULT_FUSED[fused]]
            if all(s in present for s in siblings):
                out[path] = f"{parent}.{fused}" if parent else fused
                continue
        out[path] = path
    return out


def runtime_paths(modules: Sequence[LinearModule]) -> dict[str, str]:
    return runtime_path_map([m.path for m in modules])


def default_engines(quantization_config: dict[str, Any] | None) -> list[str]:
    """The readings relevant to a checkpoint's dialect (all of them when it has none we know)."""
    dialect = recognise_dialect(quantization_config)
    return engines_for_dialect(dialect)


def plan_checkpoint(ckpt: Checkpoint | str, engines: Sequence[str] | None = None, *,
                    backend: Backend | None = None) -> Plan:
    """Each Linear of ``ckpt``: stored precision and every engine's decision from the checkpoint's config.

    ``backend``: a ``Backend.shared()`` whose indexes the caller reuses afterwards (audit's lint);
    by default a fresh one, so readings over the same lists share their indexes within this plan."""
    from mxmix.checkpoint.safetensors_header import _gc_paused

    # 10^5-10^6 small acyclic objects (decisions, columns), kept with the plan: GC passes only cost
    # time, during the plan and in the first young collection after it (promoted)
    with _gc_paused(promote=True):
        return _plan_checkpoint(ckpt, engines, backend or Backend.shared())


def _plan_checkpoint(ckpt: Checkpoint | str, engines: Sequence[str] | None, backend: Backend) -> Plan:
    from mxmix.rules import compile_rules

    if not isinstance(ckpt, Checkpoint):
        ckpt = Checkpoint.open(ckpt)
    qc = ckpt.quantization_config
    dialect = recognise_dialect(qc)
    names = list(engines) if engines else default_engines(qc)
    for name in names:
        get_engine(name)
    hf_quant = ckpt.read_json("hf_quant_config.json")
    modules = linear_modules(ckpt)
    paths = list(map(_PATH, modules))
    runtime = ckpt.derived("runtime_path_map", lambda: runtime_path_map(paths))
    notes: list[str] = []
    skip_lists: dict[str, list[str]] = {}
    columns: dict[str, Column] = {}   # per engine, aligned with ``modules``
    runtime_asked = list(map(runtime.__getitem__, paths))
    distinct_paths = list(dict.fromkeys(paths))
    if len(distinct_paths) == len(paths):
        distinct_paths = paths   # the same list lint asks about: shared filter answers
    distinct_runtime = list(dict.fromkeys(runtime_asked))
    path_rows, runtime_rows = RowIndex(paths), RowIndex(runtime_asked)
    declared = bool(qc.get("quant_method"))
    for name in names:
        info = get_engine(name)
        if not declared:
            skip_lists[name] = []
            reason = "the checkpoint declares no quantization: loaded unquantized"
            columns[name] = Column(name, paths, {}, (KEEP, reason), path_rows)
            continue
        rules = skip_list_for(qc, name, hf_quant if isinstance(hf_quant, dict) else None)
        skip_lists[name] = rules
        try:
            compiled = compile_rules(rules, name, backend=backend)
        except MxmixError as exc:  # e.g. an invalid re: rule in the canonical reading
            columns[name] = Column.of(name, paths, [Decision(p, name, ERROR, None, str(exc)) for p in paths])
            notes.append(f"{name}: {exc}")
            continue
        # each distinct asked path decided once (per-expert modules share their FusedMoE's answer)
        if info.runtime_names:
            columns[name] = compiled.decide_column(runtime_asked, distinct_runtime, runtime_rows)
        else:
            columns[name] = compiled.decide_column(paths, distinct_paths, path_rows)
    if not declared:
        notes.append("no quantization_config: every engine loads this checkpoint unquantized")
    plan = Plan(str(ckpt.root), dialect, qc.get("quant_method"), names, skip_lists, modules, notes, columns, runtime)
    plan._paths = paths
    plan._distinct = distinct_paths
    return plan


def compact_groups(plan: Plan) -> list[tuple[str, list[PlanRow]]]:
    """Rows grouped for reading: consecutive decoder layers whose (kind, stored, decisions) agree
    collapse to one block ``layers a-b``; modules outside layers stay one per row."""
    def signature(rows: list[PlanRow]) -> tuple[Any, ...]:
        return tuple((r.module.kind, r.module.expert, r.stored, tuple(r.runs_as(e) for e in plan.engines))
                     for r in rows)

    by_layer: dict[int, list[PlanRow]] = {}
    outside: list[PlanRow] = []
    for r in plan.rows:
        if r.module.layer is None:
            outside.append(r)
        else:
            by_layer.setdefault(r.module.layer, []).append(r)
    groups: list[tuple[str, list[PlanRow]]] = []
    start = prev = None
    prev_sig = None
    first_rows: list[PlanRow] = []
    for layer in sorted(by_layer):
        sig = signature(by_layer[layer])
        if prev_sig is not None and sig == prev_sig and layer == prev + 1:
            prev = layer
            continue
        if prev_sig is not None:
            groups.append((_span(start, prev), first_rows))
        start = prev = layer
        prev_sig = sig
        first_rows = by_layer[layer]
    if prev_sig is not None:
        groups.append((_span(start, prev), first_rows))
    return [(r.module.path, [r]) for r in outside] + groups


def _span(a: int, b: int) -> str:
    return f"layer {a}" if a == b else f"layers {a}-{b}"
