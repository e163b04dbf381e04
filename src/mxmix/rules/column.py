"""One reading's decisions for many paths, kept in the form they are computed in.

A plan asks 15 readings about 10^5 modules; most paths answer a reading's quiet verdict ("no rule
matches": no rule text is near them), and serving readings ask only a few hundred distinct runtime
paths. Building a ``Decision`` tuple per row and reading costs more than deciding, so a column holds
the decided paths (``found``) and the quiet verdict for the rest, and builds row Decisions only
when they are asked for. Consumers that only count or compare (audit, lint) use ``outcomes``,
``found`` and ``rows_of`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any, overload

from mxmix.rules.decision import Decision


class Column(Sequence[Decision]):
    """``engine``'s Decision for each of ``asked`` (one path per row, repeats allowed).

    ``found``: path -> Decision for the paths decided one by one; ``quiet``: ``(outcome, reason)``
    of every other asked path (rule None), or None when ``found`` holds every asked path.
    """

    __slots__ = ("_list", "_outcomes", "_rows", "asked", "engine", "found", "quiet")

    def __init__(self, engine: str, asked: Sequence[str], found: dict[str, Decision],
                 quiet: tuple[str, str] | None, rows: RowIndex | None = None) -> None:
        self.engine = engine
        self.asked = asked
        self.found = found
        self.quiet = quiet
        self._list: list[Decision] | None = None
        self._outcomes: list[str] | None = None
        self._rows = rows if rows is not None and rows.asked is asked else RowIndex(asked)

    @classmethod
    def of(cls, engine: str, asked: Sequence[str], decisions: Sequence[Decision]) -> Column:
        """A column from one Decision per asked path (aligned)."""
        col = cls(engine, asked, dict(zip(asked, decisions)), None)
        col._list = list(decisions)
        return col

    def __len__(self) -> int:
        return len(self.asked)

    @overload
    def __getitem__(self, i: int) -> Decision: ...
    @overload
    def __getitem__(self, i: slice) -> list[Decision]: ...

    def __getitem__(self, i: Any) -> Any:
        if self._list is not None or isinstance(i, slice):
            return self.decisions()[i]
        p = self.asked[i]
        d = self.found.get(p)
        if d is None:
            d = tuple.__new__(Decision, (p, self.engine, self.quiet[0], None, self.quiet[1]))  # type: ignore[index]
        return d

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Column, list, tuple)):
            return self.decisions() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Column({self.engine!r}, {len(self)} rows, {len(self.found)} decided)"

    def decisions(self) -> list[Decision]:
        """Every row's Decision (built once; a quiet path's Decision is made here)."""
        if self._list is None:
            found = self.found
            if self.quiet is None:
                self._list = list(map(found.__getitem__, self.asked))
            else:
                new = tuple.__new__
                engine, (outcome, reason) = self.engine, self.quiet
                get = found.get
                self._list = [get(p) or new(Decision, (p, engine, outcome, None, reason)) for p in self.asked]
        return self._list

    def outcomes(self) -> list[str]:
        """Every row's outcome (keep / quantize / error), without building Decisions."""
        if self._outcomes is None:
            by_path = {p: d[2] for p, d in self.found.items()}
            if self.quiet is None:
                self._outcomes = list(map(by_path.__getitem__, self.asked))
            else:
                self._outcomes = list(map(by_path.get, self.asked, repeat(self.quiet[0])))
        return self._outcomes

    def outcome_of(self, path: str) -> str:
        d = self.found.get(path)
        if d is not None:
            return d[2]
        if self.quiet is None:
            raise KeyError(path)
        return self.quiet[0]

    def rows_of(self) -> dict[str, list[int]]:
        """Asked path -> its rows, in order (shared by the columns built over one ``RowIndex``)."""
        return self._rows.get()


class RowIndex:
    """Path -> the rows it is asked in, for one list of asked paths; built on first use and shared
    by every column over that list (a plan's readings ask one of two lists)."""

    __slots__ = ("_rows", "asked")

    def __init__(self, asked: Sequence[str]) -> None:
        self.asked = asked
        self._rows: dict[str, list[int]] | None = None

    def get(self) -> dict[str, list[int]]:
        if self._rows is None:
            out: dict[str, list[int]] = {}
            for i, p in enumerate(self.asked):
                r = out.get(p)
                if r is None:
                    out[p] = [i]
                else:
                    r.append(i)
            self._rows = out
        return self._rows
