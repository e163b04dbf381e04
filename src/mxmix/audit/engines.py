"""Check 2: each engine's reading of the checkpoint's own config against the stored tensors.

Every reading (``mxmix.rules.ENGINES``) takes the skip list *it* reads (its key precedence,
``skip_list_for``) and decides each module by its own matcher (``mxmix.rules.plan.plan_checkpoint``).
Where it would keep a module that is stored FP8, quantize one stored BF16, or raise, that engine
misloads the checkpoint.

A reading only *loads* checkpoints of the dialects it consumes (``EngineInfo.dialects``): an
SGLang-dialect (``quant_method: mxfp8``) checkpoint is never read by the compressed-tensors paths.
Disagreements of readings that consume the checkpoint's dialect are errors; those of the others
are reported as notes ("if this list were reused by ...") and never fail the audit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, count
from operator import not_
from typing import Any

from mxmix.audit.findings import Finding
from mxmix.rules.column import Column
from mxmix.rules.decision import ERROR, KEEP, QUANTIZE
from mxmix.rules.engines import get_engine
from mxmix.rules.plan import Plan

_NUMBERS = re.compile(r"\d+")


@dataclass(frozen=True)
class EngineVerdict:
    """One reading's summary line: does it load this dialect, and how many modules does it misread."""

    engine: str
    version: str
    consumes: bool
    skip_list_len: int
    keeps_fp8: int
    quantizes_bf16: int
    raises: int

    @property
    def clean(self) -> bool:
        return not (self.keeps_fp8 or self.quantizes_bf16 or self.raises)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "version": self.version, "consumes_dialect": self.consumes,
                "skip_list_entries": self.skip_list_len, "keeps_fp8": self.keeps_fp8,
                "quantizes_bf16": self.quantizes_bf16, "raises": self.raises, "clean": self.clean}


def consumes(engine: str, dialect: str) -> bool:
    return dialect in get_engine(engine).dialects


def check_engines(plan: Plan, engines: Sequence[str]) -> tuple[list[Finding], list[EngineVerdict]]:
    findings: list[Finding] = []
    verdicts: list[EngineVerdict] = []
    if not plan.quant_method:
        return findings, verdicts   # no quantization_config: engines load everything unquantized (config check)
    row_paths = plan.paths
    quantized = plan.quantized
    bf16_rows = list(compress(count(), map(not_, quantized)))
    for engine in engines:
        info = get_engine(engine)
        applies = plan.dialect in info.dialects
        keep_rows, quantize_rows, error_rows = misread_rows(plan.column(engine), quantized, bf16_rows)
        keeps = [row_paths[i] for i in keep_rows]
        quantizes = [row_paths[i] for i in quantize_rows]
        raises = [row_paths[i] for i in error_rows]
        reasons: dict[str, list[str]] = {}
        column = plan.column(engine)
        abstract: dict[str, str] = {}
        for i in error_rows:
            reason = column[i].reason
            # one finding per kind of error, not per layer: numbers in the reason are abstracted
            key = abstract.get(reason)
            if key is None:
                key = abstract[reason] = _NUMBERS.sub("N", reason)
            group = reasons.setdefault(key, [reason])
            group.append(row_paths[i])
        # stacked experts: two weights (gate_up, down) under one FusedMoE path
        keeps, quantizes, raises = (list(dict.fromkeys(x)) for x in (keeps, quantizes, raises))
        verdicts.append(EngineVerdict(engine, info.version, applies, len(plan.skip_lists.get(engine, [])),
                                      len(keeps), len(quantizes), len(raises)))
        severity = "error" if applies else "info"
        who = f"{engine} ({info.version})"
        if applies:
            scope = f"{who} loads {plan.dialect}-dialect checkpoints and"
        else:
            loads = ", ".join(info.dialects) or "no MXFP8 dialect"
            scope = (f"{who} does not load {plan.dialect}-dialect checkpoints (it reads {loads}); "
                     f"were it given this one, it")
        rules = plan.skip_lists.get(engine, [])
        if not rules:
            scope += (" would find no skip list under the keys it reads and" if not applies
                      else " finds no skip list under the keys it reads, so it")
        detail = {"skip_list_entries": len(rules), "consumes_dialect": applies,
                  "engine_summary": info.summary}
        if keeps:
            findings.append(Finding(
                severity, "engine", "engine-keeps-stored-fp8",
                f"{scope} would keep these modules BF16, but they are stored FP8",
                "It builds BF16 Linears and loads FP8 bytes without their scales: wrong outputs, or a "
                "dtype/unexpected-key error at load time.", tuple(keeps), engine=engine, details=detail))
        if quantizes:
            findings.append(Finding(
                severity, "engine", "engine-quantizes-stored-bf16",
                f"{scope} would quantize these modules (expects FP8 + scales), but they are stored BF16",
                "It finds no scale tensors: loading fails, or the layers meant to stay BF16 are quantized "
                "after all, silently costing accuracy.", tuple(quantizes), engine=engine, details=detail))
        for example, *members in reasons.values():
            members = list(dict.fromkeys(members))
            eg = "" if len(members) == 1 else "e.g. "
            findings.append(Finding(
                severity, "engine", "engine-raises",
                f"{scope} raises on these modules: {eg}{example}",
                "Model loading stops with this error; nothing is served.", tuple(members), engine=engine,
                details=detail))
    return findings, verdicts


def misread_rows(column: Column, quantized: Sequence[bool], bf16_rows: Sequence[int]
                 ) -> tuple[list[int], list[int], list[int]]:
    """Rows (ascending) that ``column`` keeps while stored quantized, quantizes while stored BF16
    (``bf16_rows``: the rows not ``quantized``), and errors on.

    Works on the column's decided paths and the stored-BF16 rows only: the other rows answer the
    quiet verdict, which misreads nothing unless it keeps or errors (then every row is looked at)."""
    found = column.found
    quiet = column.quiet
    if quiet is not None and quiet[0] != QUANTIZE:
        outcomes = column.outcomes()
        return ([i for i, (o, q) in enumerate(zip(outcomes, quantized)) if o == KEEP and q],
                [i for i, (o, q) in enumerate(zip(outcomes, quantized)) if o == QUANTIZE and not q],
                [i for i, o in enumerate(outcomes) if o == ERROR])
    rows_of = column.rows_of()
    keep_rows: list[int] = []
    error_rows: list[int] = []
    for p, d in found.items():
        outcome = d[2]
        if outcome == KEEP:
            keep_rows += [i for i in rows_of[p] if quantized[i]]
        elif outcome == ERROR:
            error_rows += rows_of[p]
    # a stored-BF16 row is quantized unless its asked path was decided otherwise (the quiet verdict,
    # if any, is QUANTIZE here)
    other = {p for p, d in found.items() if d[2] != QUANTIZE}
    asked = column.asked
    quantize_rows = (list(bf16_rows) if not other else
                     list(compress(bf16_rows, map(not_, map(other.__contains__, map(asked.__getitem__, bf16_rows))))))
    keep_rows.sort()
    error_rows.sort()
    return keep_rows, quantize_rows, error_rows

