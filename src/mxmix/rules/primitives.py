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
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, count, repeat
from typing import Any

Entry = tuple[int, Any]

_DEFAULT_FLAGS = re.compile("").flags
_REGEX_META = set(".^$*+?{}[]|()")
GLOB_META = frozenset("*?[")
_UNSEEN = object()
# numbered / named back-references and conditionals: not safe to renumber inside one alternation
_REFERENCES = re.compile(r"\\\d|\(\?P=|\(\?\(")


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

def dotted_ancestors(path: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``: the path and every dotted ancestor."""
    parts = path.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def fold_from_known_ancestor(path: str, memo: dict[str, Any], step: Callable[[Any, str, str], Any]) -> Any:
    """A per-path value defined from the parent's value, memoised: walk up to the nearest ancestor
    already in ``memo`` (which must hold ``""``, the root), then fold ``step(parent_value, path,
    last_component)`` back down, recording every level. 10^5 sibling paths share 10^2 ancestors, so
    each new path costs a dictionary lookup or two."""
    pending = []
    p = path
    while p not in memo:
        head, _, c = p.rpartition(".")
        pending.append((p, c))
        p = head
    value = memo[p]
    for p, c in reversed(pending):
        value = memo[p] = step(value, p, c)
    return value


def component_run(rule_parts: Sequence[str], path_parts: Sequence[str]) -> bool:
    """The rule's dotted components form a contiguous run of the path's components."""
    n = len(rule_parts)
    rule_parts, path_parts = tuple(rule_parts), tuple(path_parts)
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


# ---------------------------------------------------------------------------------------------
# Indexed form.

def _first_table(entries: Iterable[Entry]) -> dict[Any, int]:
    table: dict[Any, int] = {}
    for index, key in entries:
        if key not in table or index < table[key]:
            table[key] = index
    return table


class ComponentIndex:
    """Contiguous component runs: a trie of rule components, walked from every start position.

    Each walk stops as soon as no rule continues, so a path costs about one dict lookup per
    component plus one per component of the rules it actually shares a run with. A trie node is
    ``(children, smallest rule index ending here or None)``.
    """

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.root: dict[str, list[Any]] = {}
        for index, key in entries:
            children = self.root
            node: list[Any] = []
            for part in key:
                found = children.get(part)   # not setdefault: its default node would be built every time
                if found is None:
                    found = children[part] = [{}, None]
                node = found
                children = node[0]
            if node[1] is None or index < node[1]:
                node[1] = index

    def first(self, parts: Sequence[str]) -> int | None:
        best: int | None = None
        root = self.root
        n = len(parts)
        for i in range(n):
            node = root.get(parts[i])
            j = i
            while node is not None:
                children, hit = node
                if hit is not None and (best is None or hit < best):
                    best = hit
                j += 1
                if j == n:
                    break
                node = children.get(parts[j])
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


def _char_trie(keys: Iterable[tuple[int, str]]) -> tuple[dict[str, list[Any]], int | None]:
    """Character trie ``{char: [children, smallest index ending here]}`` and the index of ``""``."""
    root: dict[str, list[Any]] = {}
    empty: int | None = None
    for index, key in keys:
        if not key:
            empty = index if empty is None else min(empty, index)
            continue
        children = root
        node: list[Any] = []
        for ch in key:
            node = children.setdefault(ch, [{}, None])
            children = node[0]
        if node[1] is None or index < node[1]:
            node[1] = index
    return root, empty


def _radix(children: dict[str, list[Any]]) -> dict[str, tuple[str, list[Any]]]:
    """A character trie's chains of single-child, rule-less nodes merged into one edge label:
    ``{first char: (label, [edges, smallest index ending here])}`` (one C-level ``startswith``
    per edge instead of one dict lookup per character). Iterative: rules can be long."""
    out: dict[str, tuple[str, list[Any]]] = {}
    stack = [(children, out)]
    while stack:
        kids, into = stack.pop()
        for ch, node in kids.items():
            label = [ch]
            while node[1] is None and len(node[0]) == 1:
                (nxt, node), = node[0].items()
                label.append(nxt)
            edges: dict[str, tuple[str, list[Any]]] = {}
            into[ch] = ("".join(label), [edges, node[1]])
            stack.append((node[0], edges))
    return out


def _common_prefix(a: str, b: str, start: int) -> int:
    """Length of the common prefix of ``a`` and ``b`` (both known to agree on their first ``start``
    characters), by bisection on C-level ``startswith``."""
    lo, hi = start, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if b.startswith(a[lo:mid], lo):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _radix_sorted(table: dict[str, int]) -> dict[str, tuple[str, list[Any]]]:
    """``_radix(_char_trie(...))`` built straight from the sorted keys (non-empty ``key -> smallest
    index``): a node per branching point or rule end instead of per character. Each group of sorted
    keys sharing a first character becomes one edge labelled with the group's common prefix (that
    of its first and last key); the key equal to that prefix, if any, ends there."""
    keys = sorted(table)
    out: dict[str, tuple[str, list[Any]]] = {}
    stack = [(0, len(keys), 0, out)]   # keys[lo:hi] all agree on their first ``depth`` characters
    while stack:
        lo, hi, depth, into = stack.pop()
        i = lo
        while i < hi:
            ch = keys[i][depth]
            j = bisect.bisect_left(keys, keys[i][:depth] + chr(ord(ch) + 1), i, hi) if ord(ch) < 0x10FFFF else hi
            end = _common_prefix(keys[i], keys[j - 1], depth + 1) if j - i > 1 else len(keys[i])
            label = keys[i][depth:end]
            hit = None
            k = i
            if len(keys[i]) == end:   # sorted: the key equal to the common prefix comes first
                hit = table[keys[i]]
                k = i + 1
            edges: dict[str, tuple[str, list[Any]]] = {}
            into[ch] = (label, [edges, hit])
            if k < j:
                stack.append((k, j, end, edges))
            i = j
    return out


class SubstringIndex:
    """Rule-in-subject: a (path-compressed) trie of the rules walked from every position where some
    rule's first character occurs; each walk stops at the first edge the subject does not continue."""

    MAX_STARTS = 8  # few distinct first characters: find where each occurs instead of trying every position

    MEMO_LIMIT = 1 << 16

    def __init__(self, entries: Iterable[Entry]) -> None:
        table = _first_table(entries)
        self.empty = table.pop("", None)
        self.root = _radix_sorted(table)
        self.memo: dict[str, int | None] = {}   # readings sharing this index ask about the same paths

    def first(self, subject: str) -> int | None:
        memo = self.memo
        best = memo.get(subject, _UNSEEN)
        if best is _UNSEEN:
            best = self._first(subject)
            if len(memo) >= self.MEMO_LIMIT:
                memo.clear()
            memo[subject] = best
        return best

    def _first(self, subject: str) -> int | None:
        best = self.empty
        root = self.root
        n = len(subject)
        starts: list[int] | range = range(n)
        if len(root) <= self.MAX_STARTS:
            starts = []
            for ch in root:
                i = subject.find(ch)
                while i >= 0:
                    starts.append(i)
                    i = subject.find(ch, i + 1)
        for i in starts:
            edge = root.get(subject[i])
            j = i
            while edge is not None:
                label, (edges, hit) = edge
                if not subject.startswith(label, j):
                    break
                if hit is not None and (best is None or hit < best):
                    best = hit
                j += len(label)
                if j >= n:
                    break
                edge = edges.get(subject[j])
        return best


class _SuffixTable:
    """Subject-ends-with-key for non-empty keys. With few distinct key lengths (the usual case: full
    module names), one dict lookup of the subject's tail per length; otherwise one walk of a trie of
    reversed keys from the subject's last character."""

    MAX_LENGTHS = 32

    def __init__(self, entries: Sequence[Entry]) -> None:
        by_length: dict[int, dict[str, int]] = {}
        for index, key in entries:
            table = by_length.setdefault(len(key), {})
            if key not in table or index < table[key]:
                table[key] = index
        self.by_length = sorted(by_length.items()) if len(by_length) <= self.MAX_LENGTHS else None
        if self.by_length is None:
            self.root, _ = _char_trie((i, k[::-1]) for i, k in entries)

    def first(self, subject: str) -> int | None:
        best: int | None = None
        if self.by_length is not None:
            n = len(subject)
            for length, table in self.by_length:
                if length > n:
                    break
                hit = table.get(subject[n - length:])
                if hit is not None and (best is None or hit < best):
                    best = hit
            return best
        j = len(subject) - 1
        node = self.root.get(subject[j]) if j >= 0 else None
        while node is not None:
            children, hit = node
            if hit is not None and (best is None or hit < best):
                best = hit
            j -= 1
            if j < 0:
                break
            node = children.get(subject[j])
        return best


class EndsWithIndex:
    """Subject-ends-with-rule, split by the rule's last dotted component.

    A rule holding a dot can only end a subject whose last component (text after its last dot) is
    the rule's own last component: those rules are tabled under it, and a subject consults only its
    own component's table. A rule without a dot ends the subject iff it ends the subject's last
    component, so that part of the answer is memoised per last component (few distinct ones).
    """

    MEMO_LIMIT = 1 << 16

    def __init__(self, entries: Iterable[Entry]) -> None:
        entries = list(entries)
        self.empty = _first_table(entries).get("")
        dotless = [(i, k) for i, k in entries if k and "." not in k]
        self.dotless = _SuffixTable(dotless) if dotless else None
        groups: dict[str, list[Entry]] = {}
        for index, key in entries:
            if "." in key:
                groups.setdefault(key[key.rfind(".") + 1:], []).append((index, key))
        self.by_last = {last: _SuffixTable(group) for last, group in groups.items()}
        self.tail_memo: dict[str, int | None] = {}

    def first(self, subject: str) -> int | None:
        tail = subject[subject.rfind(".") + 1:]
        memo = self.tail_memo
        best = memo.get(tail, _UNSEEN)
        if best is _UNSEEN:
            best = self.empty
            if self.dotless is not None:
                hit = self.dotless.first(tail)
                if hit is not None and (best is None or hit < best):
                    best = hit
            if len(memo) >= self.MEMO_LIMIT:
                memo.clear()
            memo[tail] = best
        table = self.by_last.get(tail)
        if table is not None:
            hit = table.first(subject)
            if hit is not None and (best is None or hit < best):
                best = hit
        return best


class ContainedInIndex:
    """Subject-in-rule: every rule joined (rule order) by a separator no subject contains; the first
    occurrence of the subject lies in the smallest-index rule that contains it (one C-level search)."""

    SEP = "\0"

    def __init__(self, entries: Iterable[Entry]) -> None:
        ordered = sorted(entries, key=lambda e: e[0])
        self.keys = [k for _, k in ordered]
        self.indices = [i for i, _ in ordered]
        self.starts: list[int] = []
        pos = 0
        for k in self.keys:
            self.starts.append(pos)
            pos += len(k) + 1
        self.joined = self.SEP.join(self.keys) + self.SEP
        self.memo: dict[str, int | None] = {}

    MEMO_LIMIT = 1 << 16

    def first(self, subject: str) -> int | None:
        if not self.keys:
            return None
        # readings sharing this index (the experts branch of most serving readings) ask about the
        # same FusedMoE paths, and a path no rule contains costs a search of the whole text: memoised
        memo = self.memo
        found = memo.get(subject, _UNSEEN)
        if found is not _UNSEEN:
            return found
        if self.SEP in subject:  # cannot use the joined text: ask each rule
            found = next((i for i, k in zip(self.indices, self.keys) if subject in k), None)
        else:
            at = self.joined.find(subject)
            found = None if at < 0 else self.indices[bisect.bisect_right(self.starts, at) - 1]
        if len(memo) >= self.MEMO_LIMIT:
            memo.clear()
        memo[subject] = found
        return found


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


# a whole pattern of plain characters and escaped punctuation (what the prefix scan below accepts
# to the end): the common case (a module name with escaped dots) checked in one C-level match
_LITERAL_PATTERN = re.compile(r"(?:[^\\.^$*+?{}\[\]|()]|\\(?:[^\w\s]|_))*\Z")


def regex_literal(pattern: str) -> str | None:
    """The literal string ``pattern`` matches when it has no regex construct at all (only plain
    characters and escaped punctuation), else None."""
    if "\\" not in pattern:
        return None if _REGEX_META & set(pattern) else pattern
    if "|" not in pattern and _LITERAL_PATTERN.match(pattern):   # the prefix scan gives up on any '|'
        # every backslash starts a two-character escape: split at escaped backslashes, drop the rest
        return "\\".join(part.replace("\\", "") for part in pattern.split("\\\\"))
    prefix = regex_literal_prefix(pattern)
    # the prefix scan stops at the first construct; the whole pattern is literal when it consumed it all
    return prefix if _escaped_length(pattern, prefix) == len(pattern) else None


def _escaped_length(pattern: str, literal: str) -> int:
    """Characters of ``pattern`` that spell ``literal`` (each escaped character counts two)."""
    i = 0
    for _ in literal:
        i += 2 if pattern[i] == "\\" else 1
    return i


def glob_literal_prefix(pattern: str) -> str:
    cut = len(pattern)
    for ch in "*?[":
        j = pattern.find(ch)
        if j >= 0:
            cut = min(cut, j)
    return pattern[:cut]


MATCH, FULL, GLOB, GLOB_ANCESTORS = "match", "fullmatch", "glob", "glob-ancestors"


def pattern_source(pattern: str, mode: str) -> tuple[str, str]:
    """(regex source equivalent to ``mode`` under ``re.match``, literal prefix every match starts with)."""
    if mode == MATCH:
        return pattern, regex_literal_prefix(pattern)
    if mode == FULL:
        return f"(?:{pattern})\\Z", regex_literal_prefix(pattern)
    source = fnmatch.translate(pattern)  # "(?s:...)\Z": a full match
    if mode == GLOB_ANCESTORS and source.endswith("\\Z"):
        # ends at a dot or the end: fnmatch against the subject or any dotted ancestor
        source = source[:-2] + r"(?=\.|\Z)"
    return source, glob_literal_prefix(pattern)


class RegexIndex:
    """Start-anchored regexes and globs as one combined alternation per literal-prefix bucket.

    A pattern can only match subjects that start with its literal prefix, so patterns are bucketed
    by that prefix cut back to its last dot — a dotted ancestor of every subject it can match —
    and a subject tries only the buckets on its own ancestor chain (found by walking a trie of
    bucket keys). Each bucket is one alternation in rule order (compiled once, on first use), each
    alternative ending in an empty marker group, so the first alternative that matches — the
    bucket's smallest rule index — is read off ``lastindex``. Patterns that cannot be renumbered safely (back-references) or that
    set global flags are tried one by one.

    ``entries`` are ``(rule index, pattern, mode)`` with mode match / fullmatch / glob / glob-ancestors.
    """

    def __init__(self, entries: Iterable[tuple[int, str, str]]) -> None:
        self.failure: RuleFailure | None = None
        self.single: list[tuple[int, Callable[[str], Any]]] = []
        self.buckets: dict[str, list[tuple[int, str, int]]] = {}
        self.trie: list[Any] = [{}, None]  # [children, bucket key or None]
        # patterns with no construct at all are literal strings: answered from tables, never compiled
        exact: list[Entry] = []       # fullmatch / glob: the subject equals the literal
        ancestor: list[Entry] = []    # glob-ancestors: the subject or a dotted ancestor equals it
        prefix_of: list[Entry] = []   # match: the subject starts with it
        for index, pattern, mode in entries:
            if mode in (GLOB, GLOB_ANCESTORS):
                literal = None if GLOB_META & set(pattern) else pattern
            else:
                literal = regex_literal(pattern)
            if literal is not None:
                (exact if mode in (FULL, GLOB) else ancestor if mode == GLOB_ANCESTORS else prefix_of).append(
                    (index, literal))
                continue
            try:
                compiled = re.compile(fnmatch.translate(pattern) if mode in (GLOB, GLOB_ANCESTORS) else pattern)
            except re.error as exc:
                if self.failure is None or index < self.failure.index:
                    self.failure = RuleFailure(index, f"re.error: {exc}")
                continue
            source, prefix = pattern_source(pattern, mode)
            if compiled.flags != _DEFAULT_FLAGS or (compiled.groups and _REFERENCES.search(source)):
                self.single.append((index, compiled.fullmatch if mode == FULL else re.compile(source).match
                                    if mode != MATCH else compiled.match))
                continue
            key = prefix[:max(prefix.rfind("."), 0)]
            if key not in self.buckets:
                node = self.trie
                for part in key.split(".") if key else ():
                    node = node[0].setdefault(part, [{}, None])
                node[1] = key
            self.buckets.setdefault(key, []).append((index, source, compiled.groups))
        self.single.sort(key=lambda e: e[0])
        self.exact = _first_table(exact)
        self.ancestor = _first_table(ancestor)
        self.prefix_root, self.prefix_empty = _char_trie(prefix_of)
        self.has_prefix = bool(prefix_of)
        self.combined: dict[str, tuple[Callable[[str], Any], dict[int, int]] | None] = {}
        # no valid pattern at all: ``first`` is None for every subject (readings skip the call)
        self.matches_nothing = not (self.exact or self.ancestor or self.has_prefix or self.buckets or self.single)

    def _combined(self, key: str) -> tuple[Callable[[str], Any], dict[int, int]] | None:
        members = self.buckets[key]  # already in rule order
        marker: dict[int, int] = {}
        group = 0
        for index, _, groups in members:
            group += groups + 1
            marker[group] = index
        try:
            with warnings.catch_warnings():  # the user's own patterns' FutureWarnings, once is enough
                warnings.simplefilter("ignore", FutureWarning)
                return re.compile("|".join(f"(?:{src})()" for _, src, _ in members)).match, marker
        except (re.error, RecursionError, OverflowError):
            return None  # e.g. the same group name twice: this bucket is tried one by one

    def _first_literal(self, subject: str) -> int | None:
        best = self.exact.get(subject) if self.exact else None
        if self.ancestor:
            table = self.ancestor
            hit = table.get(subject)
            if hit is not None and (best is None or hit < best):
                best = hit
            i = subject.find(".")
            while i >= 0:
                hit = table.get(subject[:i])
                if hit is not None and (best is None or hit < best):
                    best = hit
                i = subject.find(".", i + 1)
        if self.has_prefix:
            hit = self.prefix_empty
            node = self.prefix_root.get(subject[0]) if subject else None
            j = 0
            while node is not None:
                children, end = node
                if end is not None and (hit is None or end < hit):
                    hit = end
                j += 1
                if j == len(subject):
                    break
                node = children.get(subject[j])
            if hit is not None and (best is None or hit < best):
                best = hit
        return best

    def first(self, subject: str, parts: Sequence[str] | None = None) -> int | None:
        best = self._first_literal(subject)
        if not self.buckets and not self.single:
            return best
        node = self.trie
        chain = [node[1]] if node[1] is not None else []
        if parts is None:
            parts = subject.split(".")
        for k in range(len(parts) - 1):
            node = node[0].get(parts[k])
            if node is None:
                break
            if node[1] is not None:
                chain.append(node[1])
        for key in chain:
            combo = self.combined.get(key, False)
            if combo is False:
                combo = self.combined[key] = self._combined(key)
            if combo is not None:
                m = combo[0](subject)
                if m is not None:
                    hit = combo[1][m.lastindex]
                    if best is None or hit < best:
                        best = hit
            else:
                for index, src, _ in self.buckets[key]:
                    if best is not None and index >= best:
                        break
                    if re.match(src, subject):
                        best = index
                        break
        for index, matcher in self.single:
            if best is not None and index >= best:
                break
            if matcher(subject) is not None:
                best = index
                break
        return best


# transformers 5's boundary after a rule read as a regex (engine-semantics.md §4)
DOT_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"


def is_dot_wildcard_literal(rule: str) -> bool:
    """True when ``rule`` read as a regex has no metacharacter but ``.`` (any character)."""
    return _REGEX_META_BUT_DOT.isdisjoint(rule) and "\\" not in rule


_REGEX_META_BUT_DOT = frozenset(_REGEX_META - {"."})


class DotWildcardIndex:
    """``re.match(rule + DOT_BOUNDARY, subject)`` for rules whose only metacharacter is ``.``.

    Such a rule of length L matches when the subject's first L characters equal it everywhere
    except under its dots, and position L sits at a dot boundary (L is the subject's length, or a
    dot is just before or at position L).

    The boundaries of ``p.t`` (``t`` without dots) are those of ``p``, plus ``len(p) + 1`` and the
    end. So the answer for a subject is min(answer for ``p`` extended by ``p.`` — memoised per
    parent, and siblings share parents — , rules of exactly the subject's length). Rules of one
    length are grouped by the spans between their dots; a head can only match rules whose dots
    include all of its own, and when the dots are the same the head is looked up as it is.
    """

    MEMO_LIMIT = 1 << 20

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.entries = list(entries)
        self.memo: dict[str, int | None] = {}        # head -> rules of exactly its length
        self.parents: dict[str, int | None] = {}     # p -> answer for p and for the head "p."
        self.candidates: dict[tuple[int, ...], list[tuple[Any, dict[str, int]]]] = {}
        self.groups: dict[int, dict[tuple[tuple[int, int], ...], dict[str, int]]] = {}
        spans_of: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}   # rules share piece lengths
        for index, rule in self.entries:
            lengths = tuple(map(len, rule.split(".")))
            spans = spans_of.get(lengths)
            if spans is None:
                pos, out = 0, []
                for n in lengths:
                    out.append((pos, pos + n))
                    pos += n + 1
                spans = spans_of[lengths] = tuple(out)
            table = self.groups.setdefault(len(rule), {}).setdefault(spans, {})
            if rule not in table or index < table[rule]:
                table[rule] = index
        self.literal = _first_table(self.entries)
        # per length, the most dots any rule of that length has
        self.max_dots = {length: max(len(spans) - 1 for spans in by_spans)
                         for length, by_spans in self.groups.items()}

    def first(self, subject: str) -> int | None:
        if "\n" in subject:  # '.' and '$' treat newlines specially: ask the regex engine
            for index, rule in self.entries:
                if re.match(rule + DOT_BOUNDARY, subject):
                    return index
            return None
        d = subject.rfind(".")
        if d < 0:
            # no dot: the only boundary is the end (and 0 for the empty subject)
            return self._exact_length(subject)
        best = self._parent(subject[:d])
        hit = self._exact_length(subject)
        if hit is not None and (best is None or hit < best):
            best = hit
        return best

    def _parent(self, p: str) -> int | None:
        """min over the boundaries of ``p`` and ``len(p) + 1`` (the dot after it), memoised."""
        parents = self.parents
        found = parents.get(p, _UNSEEN)
        if found is not _UNSEEN:
            return found
        # the chain of ancestors not yet known, deepest last; then fill it from the top
        chain = [p]
        d = p.rfind(".")
        best: int | None = None
        while d >= 0:
            head = p[:d]
            known = parents.get(head, _UNSEEN)
            if known is not _UNSEEN:
                best = known
                break
            chain.append(head)
            d = head.rfind(".")
        for head in reversed(chain):
            for h in (head, head + "."):
                hit = self._exact_length(h)
                if hit is not None and (best is None or hit < best):
                    best = hit
            if len(parents) >= self.MEMO_LIMIT:
                parents.clear()
            parents[head] = best
        return best

    def _exact_length(self, head: str) -> int | None:
        """The smallest rule of exactly ``len(head)`` characters that matches ``head``."""
        most = self.max_dots.get(len(head))
        if most is None:
            return None
        if most <= head.count("."):
            # a rule must have a dot wherever the head has one; with no more dots than the head, only
            # a rule with exactly its dots can match, and such a rule matches only if it equals it
            return self.literal.get(head)
        by_spans = self.groups[len(head)]
        memo = self.memo
        found = memo.get(head, _UNSEEN)
        if found is not _UNSEEN:
            return found
        found = None
        lengths = tuple(map(len, head.split(".")))
        cands = self.candidates.get((len(head), *lengths))
        if cands is None:
            if len(self.candidates) >= self.MEMO_LIMIT:
                self.candidates.clear()
            cands = self.candidates[(len(head), *lengths)] = self._candidates(head, by_spans)
        for spans, table in cands:
            hit = table.get(head if spans is None else ".".join([head[a:b] for a, b in spans]))
            if hit is not None and (found is None or hit < found):
                found = hit
        if len(memo) >= self.MEMO_LIMIT:
            memo.clear()
        memo[head] = found
        return found

    @staticmethod
    def _candidates(head: str, by_spans: dict[tuple[tuple[int, int], ...], dict[str, int]]
                    ) -> list[tuple[Any, dict[str, int]]]:
        """Span groups that can match heads shaped like ``head``: a rule matches only if its dots
        include every dot of the head (a head's '.' must face a rule '.'); ``None`` = same dots."""
        own = frozenset(i for i, c in enumerate(head) if c == ".")
        out: list[tuple[Any, dict[str, int]]] = []
        for spans, table in by_spans.items():
            dots = frozenset(b for _, b in spans[:-1])
            if own <= dots:
                out.append((None if dots == own else spans, table))
        return out


class LoopPatterns:
    """Reference for mixed ``(index, pattern, mode)`` entries: each pattern tried in rule order."""

    def __init__(self, entries: Iterable[tuple[int, str, str]]) -> None:
        self.failure: RuleFailure | None = None
        self.entries: list[tuple[int, str, str]] = []
        for index, pattern, mode in sorted(entries, key=lambda e: e[0]):
            try:
                re.compile(fnmatch.translate(pattern) if mode in (GLOB, GLOB_ANCESTORS) else pattern)
            except re.error as exc:
                if self.failure is None:
                    self.failure = RuleFailure(index, f"re.error: {exc}")
                continue
            self.entries.append((index, pattern, mode))
        self.matches_nothing = not self.entries

    def first(self, subject: str, parts: Sequence[str] | None = None) -> int | None:
        for index, pattern, mode in self.entries:
            if mode == MATCH:
                hit = re.match(pattern, subject) is not None
            elif mode == FULL:
                hit = re.fullmatch(pattern, subject) is not None
            elif mode == GLOB:
                hit = fnmatch.fnmatchcase(subject, pattern)
            else:
                hit = any(fnmatch.fnmatchcase(a, pattern) for a in dotted_ancestors(subject))
            if hit:
                return index
        return None


class NeedleFilter:
    """Which of many subjects *may* contain one of ``needles`` (a necessary condition, C speed).

    Every needle is cut to its first ``H`` characters (the largest ``H`` whose distinct heads fit a
    small budget), the heads become one trie-shaped regex (``a(?:b|c)``: the regex engine walks it
    like a trie, where a flat ``ab|ac|...`` alternation would try every branch), and that regex is
    searched over all subjects joined by newlines, jumping to the next line after each hit. A
    subject that contains a needle contains its head, so a subject never reported contains none.
    ``dots``: a ``.`` in a needle matches any character (a rule read as a regex whose only
    metacharacter is ``.``). ``anchored``: only subjects that *start* with a needle are wanted (the
    regex then begins with the newline before each line: the engine jumps from line to line instead
    of trying every position).

    ``candidates`` returns the indices of the subjects to check exactly, or None when it cannot
    filter (an empty needle, a needle or subject holding a newline, no budget): check them all.
    """

    BUDGET = 6000                                   # characters of all distinct heads together
    MAX_SPLIT = 4                                   # at most this many first characters: a regex each
    LENGTHS = (64, 48, 32, 24, 20, 16, 12, 8, 6, 4, 3, 2, 1)

    def __init__(self, needles: Iterable[str], *, dots: bool = False, anchored: bool = False) -> None:
        needles = set(needles)
        self.nothing = not needles
        self.lead = "\n" if anchored else ""
        self._last: tuple[Any, set[int] | None] = (None, None)
        self.searches: list[Callable[..., Any]] | None = None
        if self.nothing or "" in needles or any("\n" in n for n in needles):
            return
        for length in self.LENGTHS:
            heads = {n[:length] for n in needles}
            if sum(map(len, heads)) <= self.BUDGET:
                break
        else:  # thousands of distinct first characters: not worth a regex
            return
        root: dict[str, Any] = {}
        for h in heads:
            node = root
            for ch in h:
                node = node.setdefault(ch, {})
            node[""] = {}
        # with few distinct first characters, one regex per first character: each then starts with
        # its heads' common literal prefix, which the regex engine finds by a fast scan instead of
        # trying the trie wherever any first character occurs
        branches = [{ch: child} for ch, child in root.items()] if len(root) <= self.MAX_SPLIT else [root]
        try:
            self.searches = [re.compile(re.escape(self.lead) + _trie_regex(b, dots)).search for b in branches]
        except (re.error, RecursionError, OverflowError):  # pragma: no cover - escaped literals compile
            self.searches = None

    def candidates(self, subjects: Sequence[str]) -> set[int] | None:
        if subjects is self._last[0]:      # readings sharing this filter ask about the same list
            return self._last[1]
        found = self._candidates(subjects)
        self._last = (subjects, found)
        return found

    def _candidates(self, subjects: Sequence[str]) -> set[int] | None:
        if self.nothing:
            return set()
        if self.searches is None:
            return None
        lead = self.lead
        text = lead + "\n".join(subjects)
        if text.count("\n") != len(subjects) - 1 + len(lead):
            return None
        out: set[int] = set()
        for search in self.searches:
            _scan(search, text, len(lead), out)
        return out


def _scan(search: Callable[..., Any], text: str, skip: int, out: set[int]) -> None:
    """Add to ``out`` the lines of ``text`` where ``search`` matches (``skip``: 1 when a match starts
    at the newline just before its line). A match at s lies in line i = the newlines before s,
    counted from the previous search start on; the next search starts at line i + 1 (anchored: at
    the newline just before it)."""
    newlines, find = text.count, text.find
    pos = line = 0           # line: the newlines before pos
    while True:
        m = search(text, pos)
        if m is None:
            return
        s = m.start()
        i = line + newlines("\n", pos, s)
        out.add(i)
        q = find("\n", s + skip)
        if q < 0:
            return
        pos, line = q + 1 - skip, i + 1


def _trie_regex(root: dict[str, Any], dots: bool) -> str:
    """A character trie as a regex (``""`` child = a needle ends here; any end suffices)."""
    def emit(node: dict[str, Any]) -> str:
        if "" in node:
            return ""          # a needle ends here: the shorter head already suffices
        alts = [("." if dots and ch == "." else re.escape(ch)) + emit(child) for ch, child in sorted(node.items())]
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return emit(root)


def ends_component(paths: Sequence[str], names: Sequence[str]) -> set[int]:
    """Indices of the paths that may end with one of ``names`` as their last component (a superset:
    the name may also end a longer last component)."""
    tails = tuple(names)
    if not tails:
        return set()
    return set(compress(count(), map(str.endswith, paths, repeat(tails))))


class _MemoKey:
    """``(kind, entries)`` as a memo key whose hash is computed once: a lookup that hits is then one
    hash and one comparison of the (long, nested) entries instead of a hash per dict operation."""

    __slots__ = ("entries", "hash", "kind")

    def __init__(self, kind: str, entries: tuple[Any, ...]) -> None:
        self.kind = kind
        self.entries = entries
        self.hash = hash((kind, entries))

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _MemoKey):
            return NotImplemented
        return self.hash == other.hash and self.kind == other.kind and self.entries == other.entries


class Backend:
    """Builds primitives in one of the two forms (``indexed`` False = the reference loops).

    ``shared()`` gives an indexed backend that memoises on (primitive, entries), for one job that
    runs many readings over the same lists (a plan, an audit): readings that share a test over the
    same rules (substring for sglang-legacy, vllm-substring, vllm-modelopt and transformers-4; exact
    names for most vLLM readings; ...) build its index once and share its per-subject memos.
    Primitives are never modified after construction (only their lazy caches fill).
    """

    MEMO_SIZE = 32

    def __init__(self, indexed: bool, *, memo: bool = False) -> None:
        self.indexed = indexed
        self._memo: dict[_MemoKey, Any] | None = {} if memo and indexed else None
        self._ends: dict[tuple[str, ...], tuple[Sequence[str], int, set[int]]] = {}

    @classmethod
    def shared(cls) -> Backend:
        """A fresh memoising indexed backend (scope it to one job: it keeps what it built alive)."""
        return cls(True, memo=True)

    def _build(self, kind: str, entries: Sequence[Any], index: Callable[[list[Any]], Any],
               reference: Callable[[list[Any]], Any]) -> Any:
        if not self.indexed:
            return reference(list(entries))
        memo = self._memo
        if memo is None:
            return index(list(entries))
        key = _MemoKey(kind, tuple(entries))
        found = memo.pop(key, None)
        if found is None:
            found = index(list(entries))
            if len(memo) >= self.MEMO_SIZE:
                del memo[next(iter(memo))]   # least recently used: hits are re-inserted at the end
        memo[key] = found
        return found

    def components(self, entries: Sequence[Entry]) -> Any:
        return self._build("components", entries, ComponentIndex, lambda e: Loop(e, component_run))

    def exact(self, entries: Sequence[Entry]) -> Any:
        return self._build("exact", entries, ExactIndex, lambda e: Loop(e, exact))

    def dotted_suffix(self, entries: Sequence[Entry]) -> Any:
        return self._build("dotted_suffix", entries, DottedSuffixIndex, lambda e: Loop(e, dotted_suffix))

    def substring(self, entries: Sequence[Entry]) -> Any:
        return self._build("substring", entries, SubstringIndex, lambda e: Loop(e, substring))

    def contained_in(self, entries: Sequence[Entry]) -> Any:
        return self._build("contained_in", entries, ContainedInIndex, lambda e: Loop(e, contained_in))

    def ends_with(self, entries: Sequence[Entry]) -> Any:
        return self._build("ends_with", entries, EndsWithIndex, lambda e: Loop(e, ends_with))

    def regex(self, entries: Sequence[Entry], *, full: bool = False) -> Any:
        """``re.match`` (``full``: ``re.fullmatch``) of each rule's pattern."""
        return self.patterns([(i, p, FULL if full else MATCH) for i, p in entries])

    def glob(self, entries: Sequence[Entry]) -> Any:
        """``fnmatch.fnmatchcase`` of each rule's glob against the whole subject."""
        return self.patterns([(i, p, GLOB) for i, p in entries])

    def glob_ancestors(self, entries: Sequence[Entry]) -> Any:
        """``fnmatch.fnmatchcase`` against the subject or any of its dotted ancestors."""
        return self.patterns([(i, p, GLOB_ANCESTORS) for i, p in entries])

    def dot_wildcard(self, entries: Sequence[Entry]) -> Any:
        """``re.match(rule + DOT_BOUNDARY, subject)`` for rules with no metacharacter but ``.``."""
        return self._build("dot_wildcard", entries, DotWildcardIndex,
                           lambda e: LoopPatterns([(i, r + DOT_BOUNDARY, MATCH) for i, r in e]))

    def ends_component(self, paths: Sequence[str], names: Sequence[str]) -> set[int]:
        """``ends_component``; a memoising backend remembers its answer for the list it was asked
        about (by identity: the readings of one plan ask about the same list)."""
        if self._memo is None:
            return ends_component(paths, names)
        tails = tuple(names)
        known = self._ends.get(tails)
        if known is not None and known[0] is paths and known[1] == len(paths):
            return set(known[2])
        found = ends_component(paths, tails)
        if len(self._ends) >= 4:
            self._ends.clear()
        self._ends[tails] = (paths, len(paths), found)
        return set(found)

    def needles(self, needles: Iterable[str], *, dots: bool = False, anchored: bool = False) -> NeedleFilter:
        """A ``NeedleFilter`` (memoised like the primitives: readings over one list share it)."""
        def build(e: list[str]) -> NeedleFilter:
            return NeedleFilter(e, dots=dots, anchored=anchored)
        return self._build("needles" + "-dots" * dots + "-anchored" * anchored, sorted(set(needles)), build, build)

    def patterns(self, entries: Sequence[tuple[int, str, str]]) -> Any:
        """Mixed regex / glob entries ``(index, pattern, mode)`` answered together."""
        return self._build("patterns", entries, RegexIndex, LoopPatterns)


REFERENCE = Backend(indexed=False)
INDEXED = Backend(indexed=True)
