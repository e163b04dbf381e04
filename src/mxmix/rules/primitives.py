"""The few string tests every skip-list reading is built from, each in two interchangeable forms.

A reading (canonical or an engine's) is written once, against these primitives. Each primitive is
built from ``entries`` — ``(rule_index, key)`` pairs in rule order — and answers ``first(subject)``:
the smallest rule index whose key passes the test, or None. The *reference* form loops over every
entry (obviously right, slow); the *indexed* form answers from hash tables, a suffix array or one
combined regex per literal-prefix bucket (fast). Tests check that the two agree; the bulk form of
every reading (``compile_rules``) is the indexed one.

Regex-valued primitives also report the first rule that is not a valid pattern (``failure``),
since an engine that compiles patterns as it goes raises when it reaches that rule.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Entry = tuple[int, Any]

_DEFAULT_FLAGS = re.compile("").flags
_REGEX_META = set(".^$*+?{}[]|()")


@dataclass(frozen=True)
class RuleFailure:
    """Rule ``index`` cannot be evaluated (an invalid pattern); ``message`` says why."""

    index: int
    message: str


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b


# ---------------------------------------------------------------------------------------------
# Per-rule predicates: the plain definitions the reference form loops over.

def component_run(rule_parts: tuple[str, ...], path_parts: tuple[str, ...]) -> bool:
    """The rule's dotted components form a contiguous run of the path's components."""
    n = len(rule_parts)
    return any(path_parts[i:i + n] == rule_parts for i in range(len(path_parts) - n + 1))


def exact(rule: str, path: str) -> bool:
    return rule == path


def dotted_suffix(rule: str, path: str) -> bool:
    """The path is the rule, or ends with ``"." + rule``."""
    return path == rule or path.endswith("." + rule)


def substring(rule: str, path: str) -> bool:
    return rule in path


def contained_in(rule: str, path: str) -> bool:
    """The *path* is a substring of the rule (SGLang's / vLLM's experts branch)."""
    return path in rule


def ends_with(rule: str, path: str) -> bool:
    return path.endswith(rule)


# ---------------------------------------------------------------------------------------------
# Reference form.

class Loop:
    """Every entry, in order, through ``predicate(key, subject)``."""

    def __init__(self, entries: Iterable[Entry], predicate: Callable[[Any, Any], bool]) -> None:
        self.entries = list(entries)
        self.predicate = predicate

    def first(self, subject: Any) -> int | None:
        for index, key in self.entries:
            if self.predicate(key, subject):
                return index
        return None


class LoopRegex:
    """``re.match`` (or ``re.fullmatch``) of each valid pattern, in order."""

    def __init__(self, entries: Iterable[Entry], *, full: bool = False, glob: bool = False) -> None:
        self.failure: RuleFailure | None = None
        self.entries: list[tuple[int, str]] = []
        self.full = full
        self.glob = glob
        for index, pattern in entries:
            try:
                re.compile(fnmatch.translate(pattern) if glob else pattern)
            except re.error as exc:
                if self.failure is None:
                    self.failure = RuleFailure(index, f"re.error: {exc}")
                continue
            self.entries.append((index, pattern))

    def first(self, subject: str) -> int | None:
        for index, pattern in self.entries:
            if self.glob:
                hit = fnmatch.fnmatchcase(subject, pattern)
            elif self.full:
                hit = re.fullmatch(pattern, subject) is not None
            else:
                hit = re.match(pattern, subject) is not None
            if hit:
                return index
        return None


# ---------------------------------------------------------------------------------------------
# Indexed form.

def _first_table(entries: Iterable[Entry]) -> dict[Any, int]:
    table: dict[Any, int] = {}
    for index, key in entries:
        if key not in table or index < table[key]:
            table[key] = index
    return table


class ComponentIndex:
    """Contiguous component runs: a dict of component tuples, probed only where a rule could start."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.table = _first_table(entries)
        by_start: dict[str, set[int]] = {}
        for key in self.table:
            by_start.setdefault(key[0], set()).add(len(key))
        self.lengths = {k: sorted(v) for k, v in by_start.items()}

    def first(self, parts: tuple[str, ...]) -> int | None:
        best: int | None = None
        n = len(parts)
        table, lengths = self.table, self.lengths
        for i in range(n):
            lens = lengths.get(parts[i])
            if lens is None:
                continue
            for length in lens:
                if i + length > n:
                    break
                hit = table.get(parts[i:i + length])
                if hit is not None and (best is None or hit < best):
                    best = hit
        return best


class ExactIndex:
    def __init__(self, entries: Iterable[Entry]) -> None:
        self.table = _first_table(entries)

    def first(self, subject: str) -> int | None:
        return self.table.get(subject)


class DottedSuffixIndex:
    """The path itself and every tail after a dot, looked up in one dict."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.table = _first_table(entries)

    def first(self, subject: str) -> int | None:
        table = self.table
        best = table.get(subject)
        i = subject.find(".")
        while i >= 0:
            hit = table.get(subject[i + 1:])
            if hit is not None and (best is None or hit < best):
                best = hit
            i = subject.find(".", i + 1)
        return best


class SubstringIndex:
    """Rule-in-subject: every window of every rule length present, looked up in one dict."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.table = _first_table(entries)
        self.lengths = sorted({len(k) for k in self.table})

    def first(self, subject: str) -> int | None:
        best: int | None = None
        table = self.table
        n = len(subject)
        for length in self.lengths:
            if length > n:
                break
            for i in range(n - length + 1):
                hit = table.get(subject[i:i + length])
                if hit is not None and (best is None or hit < best):
                    best = hit
        return best


class EndsWithIndex:
    def __init__(self, entries: Iterable[Entry]) -> None:
        self.table = _first_table(entries)
        self.lengths = sorted({len(k) for k in self.table})

    def first(self, subject: str) -> int | None:
        best: int | None = None
        n = len(subject)
        for length in self.lengths:
            if length > n:
                break
            hit = self.table.get(subject[n - length:])
            if hit is not None and (best is None or hit < best):
                best = hit
        return best


class ContainedInIndex:
    """Subject-in-rule: a sorted array of every rule suffix; the subject is a prefix of a range of it."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        table: dict[str, int] = {}
        for index, key in entries:
            for i in range(len(key) + 1):
                suffix = key[i:]
                if suffix not in table or index < table[suffix]:
                    table[suffix] = index
        self.suffixes = sorted(table)
        self.indices = [table[s] for s in self.suffixes]

    def first(self, subject: str) -> int | None:
        best: int | None = None
        i = bisect.bisect_left(self.suffixes, subject)
        suffixes, indices = self.suffixes, self.indices
        while i < len(suffixes) and suffixes[i].startswith(subject):
            if best is None or indices[i] < best:
                best = indices[i]
            i += 1
        return best


def regex_literal_prefix(pattern: str) -> str:
    """Characters every ``re.match`` of ``pattern`` must start with (conservative: may be shorter)."""
    if "|" in pattern:
        return ""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern) or pattern[i + 1].isalnum() or pattern[i + 1].isspace():
                break
            literal, step = pattern[i + 1], 2
        elif c in _REGEX_META:
            break
        else:
            literal, step = c, 1
        if i + step < len(pattern) and pattern[i + step] in "*+?{":
            break
        out.append(literal)
        i += step
    return "".join(out)


def glob_literal_prefix(pattern: str) -> str:
    cut = len(pattern)
    for ch in "*?[":
        j = pattern.find(ch)
        if j >= 0:
            cut = min(cut, j)
    return pattern[:cut]


class RegexIndex:
    """Start-anchored regexes (or globs) as one combined alternation per literal-prefix bucket.

    Only patterns whose literal prefix is a prefix of the subject are tried; alternatives are in
    rule order and each ends in an empty marker group, so the first alternative that matches —
    the smallest rule index — is read off ``lastindex``. Patterns with their own groups or global
    flags cannot be combined safely and are tried one by one.
    """

    def __init__(self, entries: Iterable[Entry], *, full: bool = False, glob: bool = False) -> None:
        self.failure: RuleFailure | None = None
        self.full = full
        self.single: list[tuple[int, Callable[[str], Any]]] = []
        self.buckets: dict[str, list[tuple[int, str]]] = {}
        for index, pattern in entries:
            source = fnmatch.translate(pattern) if glob else pattern
            try:
                compiled = re.compile(source)
            except re.error as exc:
                if self.failure is None:
                    self.failure = RuleFailure(index, f"re.error: {exc}")
                continue
            if compiled.groups or compiled.flags != _DEFAULT_FLAGS:
                self.single.append((index, compiled.fullmatch if full and not glob else compiled.match))
                continue
            if full and not glob:
                source = f"(?:{source})\\Z"
            prefix = glob_literal_prefix(pattern) if glob else regex_literal_prefix(pattern)
            self.buckets.setdefault(prefix, []).append((index, source))
        self.prefix_lengths = sorted({len(p) for p in self.buckets})
        self.combined: dict[tuple[str, ...], tuple[re.Pattern[str], list[int]] | None] = {}

    def _combined(self, key: tuple[str, ...]) -> tuple[re.Pattern[str], list[int]] | None:
        members = sorted(m for prefix in key for m in self.buckets[prefix])
        source = "|".join(f"(?:{src})()" for _, src in members)
        try:
            return re.compile(source), [index for index, _ in members]
        except (re.error, RecursionError, OverflowError):
            return None  # fall back to one-by-one for this bucket chain

    def first(self, subject: str) -> int | None:
        best: int | None = None
        key = tuple(subject[:n] for n in self.prefix_lengths
                    if n <= len(subject) and subject[:n] in self.buckets)
        if key:
            if key not in self.combined:
                self.combined[key] = self._combined(key)
            combo = self.combined[key]
            if combo is not None:
                m = combo[0].match(subject)
                if m is not None:
                    best = combo[1][m.lastindex - 1]
            else:
                for prefix in key:
                    for index, src in self.buckets[prefix]:
                        if (best is None or index < best) and re.match(src, subject):
                            best = index
        for index, matcher in self.single:
            if best is not None and index >= best:
                break
            if matcher(subject) is not None:
                best = index
                break
        return best


class Backend:
    """Builds primitives in one of the two forms (``indexed`` False = the reference loops)."""

    def __init__(self, indexed: bool) -> None:
        self.indexed = indexed

    def components(self, entries: Sequence[Entry]) -> Any:
        return ComponentIndex(entries) if self.indexed else Loop(entries, component_run)

    def exact(self, entries: Sequence[Entry]) -> Any:
        return ExactIndex(entries) if self.indexed else Loop(entries, exact)

    def dotted_suffix(self, entries: Sequence[Entry]) -> Any:
        return DottedSuffixIndex(entries) if self.indexed else Loop(entries, dotted_suffix)

    def substring(self, entries: Sequence[Entry]) -> Any:
        return SubstringIndex(entries) if self.indexed else Loop(entries, substring)

    def contained_in(self, entries: Sequence[Entry]) -> Any:
        return ContainedInIndex(entries) if self.indexed else Loop(entries, contained_in)

    def ends_with(self, entries: Sequence[Entry]) -> Any:
        return EndsWithIndex(entries) if self.indexed else Loop(entries, ends_with)

    def regex(self, entries: Sequence[Entry], *, full: bool = False) -> Any:
        """``re.match`` (``full``: ``re.fullmatch``) of each rule's pattern."""
        return RegexIndex(entries, full=full) if self.indexed else LoopRegex(entries, full=full)

    def glob(self, entries: Sequence[Entry]) -> Any:
        """``fnmatch.fnmatchcase`` of each rule's glob against the whole subject."""
        return RegexIndex(entries, glob=True) if self.indexed else LoopRegex(entries, glob=True)


REFERENCE = Backend(indexed=False)
INDEXED = Backend(indexed=True)
