"""The shape every reading shares: rules + fused mapping + primitive backend -> path -> Decision.

A reading's builder looks at the rule list once (classifying, indexing) and returns a function of
one path. Built on the reference backend it is ``decide``; on the indexed backend it is the bulk
form, ``compile_rules``. A reading signals the consumer's own exceptions (ValueError on mixed
shards, re.error) by raising ``EngineRaised``; ``BoundReading`` turns that into decision "error".
Fused-shard and error bookkeeping that several readings share lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mxmix.rules.column import Column, RowIndex
from mxmix.rules.decision import ERROR, KEEP, QUANTIZE, Decision
from mxmix.rules.primitives import Backend, RuleFailure, _min

# (decision, deciding rule index or None, reason)
Verdict = tuple[str, int | None, str]
PathReading = Callable[[str], Verdict]
ReadingBuilder = Callable[[Sequence[str], dict[str, tuple[str, ...]], Backend], PathReading]


class EngineRaised(Exception):
    """The consumer itself would raise here (ValueError on mixed shards, re.error on a bad pattern)."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


def first_hit(*hits: int | None, failures: Sequence[RuleFailure | None] = ()) -> int | None:
    """Smallest matching rule index; a failing rule at or before it raises as the engine would."""
    best: int | None = None
    for h in hits:
        best = _min(best, h)
    for f in failures:
        if f is not None and (best is None or f.index <= best):
            raise EngineRaised(f"rule #{f.index + 1} is not a valid pattern ({f.message})", f.index)
    return best


def shard_paths_replace(path: str, fused_name: str, shards: Sequence[str]) -> list[str]:
    """The engines' shard names: *every* occurrence of the fused name replaced (their str.replace)."""
    return [path.replace(fused_name, s) for s in shards]


def agree_on_shards(path: str, shard_paths: Sequence[str], hits: Sequence[int | None],
                    rules: Sequence[str], *, what: str = "shards") -> Verdict:
    """All shards kept -> keep; none -> quantize; a mix -> the engines' ValueError."""
    kept = [s for s, h in zip(shard_paths, hits) if h is not None]
    if len(kept) == len(shard_paths):
        first = min(h for h in hits if h is not None)
        return KEEP, first, f"all {what} of the fused module are listed ({', '.join(shard_paths)})"
    if not kept:
        return QUANTIZE, None, f"no rule lists any of its {what} ({', '.join(shard_paths)})"
    missing = [s for s, h in zip(shard_paths, hits) if h is None]
    raise EngineRaised(f"ValueError: some but not all {what} of {path} are skipped: "
                       f"kept {', '.join(kept)}; quantized {', '.join(missing)}")


BATCH_MIN = 256   # fewer paths: filtering costs more than it saves


def quiet_unless(reading: PathReading, candidates: Callable[[Sequence[str]], set[int] | None],
                 verdict: Verdict) -> PathReading:
    """Declare that ``reading`` answers ``verdict`` for every path ``candidates(paths)`` leaves out.

    ``candidates`` is a cheap necessary condition over a whole list (indices of the paths that may
    answer anything else; None = cannot tell, ask every path); ``decide_many`` asks ``reading``
    only about those. Tests check the bulk answers against the reference readings path by path.
    """
    reading.candidates = candidates  # type: ignore[attr-defined]
    reading.quiet_verdict = verdict  # type: ignore[attr-defined]
    return reading


@dataclass
class BoundReading:
    """A reading bound to one rule list: ``decide(path) -> Decision``."""

    engine: str
    rules: tuple[str, ...]
    reading: PathReading

    def decide(self, path: str) -> Decision:
        try:
            outcome, index, reason = self.reading(path)
        except EngineRaised as exc:
            outcome, index, reason = ERROR, exc.index, exc.reason
        return Decision(path, self.engine, outcome, None if index is None else self.rules[index], reason)

    def decide_many(self, paths: Sequence[str], *, batch: bool = True) -> list[Decision]:
        """``decide`` for many paths (same answers, less per-path overhead; with ``batch``, only the
        paths the reading's ``quiet_unless`` filter keeps are decided one by one)."""
        reading, rules, engine = self.reading, self.rules, self.engine
        new = tuple.__new__  # Decision's own __new__ is a Python-level function: 3x the cost
        candidates = getattr(reading, "candidates", None) if batch else None
        if candidates is not None and len(paths) >= BATCH_MIN:
            chosen = candidates(paths)
            if chosen is not None:
                outcome, _, reason = reading.quiet_verdict  # type: ignore[attr-defined]
                out = [new(Decision, (p, engine, outcome, None, reason)) for p in paths]
                order = sorted(chosen)
                for i, d in zip(order, self.decide_many([paths[i] for i in order], batch=False)):
                    out[i] = d
                return out
        out = []
        append = out.append
        for p in paths:
            try:
                outcome, index, reason = reading(p)
            except EngineRaised as exc:
                outcome, index, reason = ERROR, exc.index, exc.reason
            append(new(Decision, (p, engine, outcome, None if index is None else rules[index], reason)))
        return out

    def decide_column(self, asked: Sequence[str], distinct: Sequence[str] | None = None,
                      rows: RowIndex | None = None) -> Column:
        """``decide`` for every path of ``asked`` as a ``Column``: each distinct path decided once
        (``distinct``: ``asked`` without repeats, when the caller has it), and with a ``quiet_unless``
        filter only the paths it keeps; the others answer its quiet verdict without a Decision each."""
        if distinct is None:
            distinct = list(dict.fromkeys(asked))
        candidates = getattr(self.reading, "candidates", None)
        if candidates is not None and len(distinct) >= BATCH_MIN:
            chosen = candidates(distinct)
            if chosen is not None:
                outcome, _, reason = self.reading.quiet_verdict  # type: ignore[attr-defined]
                sub = [distinct[i] for i in sorted(chosen)]
                return Column(self.engine, asked, dict(zip(sub, self.decide_many(sub, batch=False))),
                              (outcome, reason), rows)
        return Column(self.engine, asked, dict(zip(distinct, self.decide_many(distinct, batch=False))), None, rows)
