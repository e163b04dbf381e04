"""Lint a rule list: forms that engines read differently, rules that match nothing, and rules whose
meaning differs between the engines you will serve with (engine-semantics.md §8)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import compress, count
from operator import ne
from typing import Any

from mxmix.rules.canonical import classify
from mxmix.rules.column import Column
from mxmix.rules.decision import ERROR, KEEP, Decision
from mxmix.rules.engines import ENGINES, get_engine

ERROR_SEV, WARNING, INFO = "error", "warning", "info"
REGEX_METACHARS = frozenset("^$+(){}|\\")
TOP_LEVEL_MODULES = frozenset({"lm_head", "output", "embed_out", "score", "classifier"})
FUSED_RUNTIME_NAMES = frozenset({"qkv_proj", "gate_up_proj"})
MAX_EXAMPLES = 3
_OUTCOME = operator.itemgetter(2)  # Decision.decision, read in C


@dataclass(frozen=True)
class LintFinding:
    severity: str
    code: str
    rule: str | None
    message: str

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def _form_findings(rule: str, engines: Sequence[str]) -> list[LintFinding]:
    out: list[LintFinding] = []

    def add(sev: str, code: str, msg: str) -> None:
        out.append(LintFinding(sev, code, rule, msg))

    form = classify(rule)
    stripped = rule.strip()
    if rule != stripped:
        add(ERROR_SEV, "whitespace", "surrounding whitespace: SGLang and vLLM do not strip it, so the rule "
                                     "matches nothing there")
    if form.kind == "invalid":
        add(ERROR_SEV, "empty", "empty or dot-only rule: matches nothing canonically, but SGLang's Fp8Config "
                                "turns it into 'model.' and keeps every decoder Linear, and transformers 5 "
                                "matches everything with ''")
        return out
    if form.kind == "regex":
        try:
            re.compile(form.text)
        except re.error as exc:
            add(ERROR_SEV, "regex-invalid", f"not a valid regex ({exc})")
            return out
        if not form.text.endswith("$") and not form.text.endswith(r"\Z"):
            add(WARNING, "regex-unanchored", "re: rules match at the start only; without a final '$' this "
                                             "also keeps every module whose name merely starts this way")
        if re.search(r"(?<!\\)\.(?![*+?])", form.text):
            add(INFO, "regex-unescaped-dot", "unescaped '.' matches any character (model.layers.1. also "
                                             "reaches layer 10's children); write '\\.'")
        plain_readers = [e for e in engines if not get_engine(e).regex]
        if plain_readers:
            add(ERROR_SEV, "regex-unsupported", f"{', '.join(plain_readers)} read(s) 're:' literally: "
                                                "this rule matches nothing there")
        return out
    if stripped.startswith("."):
        add(ERROR_SEV, "leading-dot", "leading dot: SGLang's component match sees an empty first component "
                                      "and never matches")
    if stripped.endswith(".") and stripped.strip("."):
        add(WARNING, "trailing-dot", "trailing-dot prefix: matches nothing in vLLM exact/suffix, "
                                     "compressed-tensors and SGLang #23467, and over-matches in transformers 5 "
                                     "(model.layers.34. keeps layer 340); enumerate the layer's modules")
    text = form.text
    if "." not in text and text not in TOP_LEVEL_MODULES:
        add(WARNING, "bare-component", f"bare one-component name {text!r}: hits that name at every depth "
                                       "(and as a substring in substring-matching engines)")
    metas = sorted(REGEX_METACHARS & set(text))
    if metas:
        add(WARNING, "regex-metachar", f"plain rule contains regex metacharacter(s) {' '.join(metas)}: "
                                       "transformers 5 and SGLang ModelOpt read it as a regex; prefix 're:' "
                                       "if you meant one")
    if form.kind == "glob":
        literal = [e for e in engines if not get_engine(e).globs]
        if literal:
            add(ERROR_SEV, "glob-unsupported", f"glob characters are literal (or a regex) for "
                                               f"{', '.join(literal)}: this rule does not do what it says there")
        elif not engines:
            add(WARNING, "glob", "globs are honoured only by ModelOpt consumers (and canonically); other "
                                 "engines read them literally or as regexes")
        star = text.find("*")
        if 0 <= star < len(text) - 1 and text[star + 1:] not in ("", ".*"):
            add(WARNING, "glob-mid-star", "'*' inside a path crosses dots in ModelOpt consumers "
                                          "(model.layers.*.mlp reaches any depth); prefer a trailing 'prefix.*'")
    if text.split(".")[-1] in FUSED_RUNTIME_NAMES:
        add(INFO, "fused-name", f"{text.split('.')[-1]!r} is a fused runtime name: SGLang 0.5.23 never tests it "
                                "and transformers has no such module; list the shards")
    return out


_NOT_PLAIN = REGEX_METACHARS | frozenset("*?[")


def _plainly_clean(rule: str) -> bool:
    """A sufficient condition for ``_form_findings(rule, engines) == []`` (whatever the engines),
    checked without classifying: a plain dotted name, no surrounding whitespace or dots, no regex or
    glob character, not a fused runtime name (the bulk of a long skip list)."""
    return (bool(rule) and rule[0] != "." and rule[-1] != "." and not rule.startswith("re:")
            and rule == rule.strip() and ("." in rule or rule in TOP_LEVEL_MODULES)
            and _NOT_PLAIN.isdisjoint(rule) and rule[rule.rfind(".") + 1:] not in FUSED_RUNTIME_NAMES)


def _decisions(rules: Sequence[str], engine: str, modules: Sequence[str],
               runtime: Mapping[str, str], backend: Any = None) -> Column | None:
    """The Decision per module, aligned with ``modules``, for the whole list under ``engine``
    (None: list unusable). Each distinct asked path is decided once."""
    from mxmix.errors import MxmixError
    from mxmix.rules import compile_rules

    try:
        compiled = compile_rules(list(rules), engine, backend=backend)
    except MxmixError:
        return None
    if get_engine(engine).runtime_names:
        return compiled.decide_column(list(map(runtime.__getitem__, modules)))
    return compiled.decide_column(modules, modules)   # ``modules`` holds no repeats


def _dead_rules(rules: Sequence[str], modules: Sequence[str], runtime: Mapping[str, str],
                backend: Any = None, module_set: Container[str] | None = None) -> list[str]:
    """Rules that, alone, keep (or make an error of) no module in the canonical reading
    (``module_set``: ``modules`` as a set or dict, when the caller has one).

    Plain rules — the bulk of a long skip list — are answered together: one walk of a trie of their
    components from every start position of every module (and of every fused module's shards)
    collects every rule that names a contiguous run of components, and the rules that reach below a
    FusedMoE module are found by a set lookup. Regex and glob rules are decided one by one.
    """
    from mxmix.rules.canonical import _is_expert_child
    from mxmix.rules.decision import DEFAULT_FUSED
    from mxmix.rules.primitives import INDEXED

    plain: dict[tuple[str, ...], list[str]] = {}
    texts: dict[tuple[str, ...], str] = {}          # a plain rule's key, spelled with its dots
    patterned: list[str] = []
    for rule in rules:
        form = classify(rule)
        if form.kind == "plain":
            key = tuple(form.text.split("."))
            plain.setdefault(key, []).append(rule)
            texts[key] = form.text
        elif form.kind != "invalid":
            patterned.append(rule)
    alive: set[tuple[str, ...]] = set()
    # trie node: [children, rule key ending here or None]
    root: dict[str, list[Any]] = {}
    for key in plain:
        children, node = root, None
        for part in key:
            node = children.get(part)
            if node is None:
                node = children[part] = [{}, None]
            children = node[0]
        node[1] = key

    def walk(parts: Sequence[str]) -> None:
        n = len(parts)
        for i in range(n):
            node = root.get(parts[i])
            j = i
            while node is not None:
                if node[1] is not None:
                    alive.add(node[1])
                j += 1
                if j == n:
                    break
                node = node[0].get(parts[j])

    expert_suffixes: set[tuple[str, ...]] = set()
    # a rule naming a run of a module's components is a substring of its path: only those modules
    # (and fused / FusedMoE ones, whose shards and children are looked at too) need the walk
    special = (*DEFAULT_FUSED, "experts")
    # a rule that is some module's whole path names the whole run of that module, which the walk
    # below visits (that module contains the rule: the filter keeps it): when every plain rule is one
    # (a list of full names), the walk can add nothing
    if plain:
        names = module_set if module_set is not None else set(modules)
        alive.update(key for key, text in texts.items() if text in names)
    todo: Sequence[str] = []
    if len(alive) < len(plain):
        found = (backend or INDEXED).needles(texts.values()).candidates(modules)
        todo = modules if found is None else \
            [modules[i] for i in sorted(found | (backend or INDEXED).ends_component(modules, special))]
    for m in todo:
        parts = m.split(".")
        walk(parts)
        last = parts[-1]
        if last in DEFAULT_FUSED:
            for shard in DEFAULT_FUSED[last]:
                walk([*parts[:-1], shard])
        elif last == "experts":
            expert_suffixes.update(tuple(parts[k:]) for k in range(len(parts) + 1))
    if expert_suffixes:
        for key in plain:
            if key not in alive and any(_is_expert_child(key[cut:]) and key[:cut] in expert_suffixes
                                        for cut in range(len(key))):
                alive.add(key)
    dead = {rule for key, listed in plain.items() if key not in alive for rule in listed}
    for rule in patterned:
        alone = _decisions([rule], "canonical", modules, runtime, backend)
        if alone is not None:
            outcomes = alone.outcomes()
            if KEEP not in outcomes and ERROR not in outcomes:
                dead.add(rule)
    return [rule for rule in rules if rule in dead]


def _outcome_key(decisions: Sequence[Decision]) -> Any:
    """Equal keys: equal outcome lists (a column's asked list, quiet outcome and decided outcomes);
    None for a plain list."""
    if not isinstance(decisions, Column):
        return None
    return (id(decisions.asked), decisions.quiet[0] if decisions.quiet else None,
            frozenset((p, d[2]) for p, d in decisions.found.items()))


def _row_keys(decisions: Sequence[Decision], rows: Sequence[int]) -> tuple[list[Any], Callable[[Any], Any]]:
    """For each of ``rows``, a key that equal decisions share, and key -> (rule, outcome): a column's
    rows asking the same path answer alike (its asked path is the key, no Decision is built)."""
    if isinstance(decisions, Column):
        found, quiet, asked = decisions.found, decisions.quiet, decisions.asked

        def facts(path: str) -> tuple[str | None, str]:
            d = found.get(path)
            if d is None:
                return None, quiet[0]   # type: ignore[index]   # an undecided path answers the quiet verdict
            return d[3], d[2]
        return list(map(asked.__getitem__, rows)), facts
    return [(d.rule, d.decision) for d in map(decisions.__getitem__, rows)], _same


def _same(x: Any) -> Any:
    return x


def _word(decision: str) -> str:
    return {KEEP: "kept", ERROR: "error"}.get(decision, "quantized")


def lint(rules: Sequence[str], modules: Sequence[str] | None = None,
         engines: Sequence[str] | None = None, *,
         decided: Mapping[str, Mapping[str, Any]] | None = None,
         decided_columns: Mapping[str, Sequence[Decision]] | None = None,
         runtime: Mapping[str, str] | None = None, backend: Any = None) -> list[LintFinding]:
    """Findings for ``rules``; with ``modules`` (a checkpoint's Linear module paths) also dead rules and
    rules whose effect differs between ``engines`` (default: every reading, against canonical) there.

    ``decided`` (optional): engine -> module path -> Decision already computed for *these* rules
    (e.g. by ``plan_checkpoint`` when an engine reads this very list); those engines are not re-run.
    ``decided_columns``: the same as lists aligned with ``modules`` (first occurrences, in order).
    ``runtime``: ``runtime_path_map`` of (a superset of) ``modules``, when the caller has it;
    ``backend``: a ``Backend.shared()`` to reuse the caller's rule indexes.
    Near-linear in rules + modules.
    """
    from mxmix.rules.plan import runtime_path_map

    chosen = list(engines or [])
    for e in chosen:
        get_engine(e)
    findings: list[LintFinding] = []
    seen: set[str] = set()
    for rule in rules:
        if rule in seen:
            findings.append(LintFinding(INFO, "duplicate", rule, "listed more than once"))
            continue
        seen.add(rule)
        if not _plainly_clean(rule):
            findings.extend(_form_findings(rule, chosen))
    if modules is None:
        return findings
    module_set = dict.fromkeys(modules)
    modules = modules if isinstance(modules, list) and len(module_set) == len(modules) else list(module_set)
    if runtime is None:
        runtime = runtime_path_map(modules)
    for rule in _dead_rules(list(dict.fromkeys(rules)), modules, runtime, backend, module_set):
        findings.append(LintFinding(WARNING, "dead-rule", rule,
                                    "matches no Linear module of the checkpoint (canonical reading)"))
    base = chosen[0] if chosen else "canonical"
    others = chosen[1:] if chosen else [e for e in ENGINES if e != "canonical"]

    def outcomes(engine: str) -> Sequence[Decision] | None:
        column = (decided_columns or {}).get(engine)
        if column is not None:
            return column
        known = (decided or {}).get(engine)
        if known is not None:
            return list(map(known.__getitem__, modules))
        return _decisions(rules, engine, modules, runtime, backend)

    def outcome_list(decisions: Sequence[Decision]) -> list[str]:
        return decisions.outcomes() if isinstance(decisions, Column) else list(map(_OUTCOME, decisions))

    if not others:
        return findings
    base_list = outcomes(base)
    if base_list is None:
        return findings
    base_decisions = outcome_list(base_list)
    # (rule or None) -> engine -> [rows that differ, the first MAX_EXAMPLES as (module, base word, engine word)]
    diffs: dict[str | None, dict[str, list[Any]]] = {}
    differing: dict[Any, list[int]] = {}   # readings answering alike differ from the base on the same rows
    for e in others:
        elist = outcomes(e)
        if elist is None:
            continue
        key = _outcome_key(elist)
        rows = differing.get(key) if key is not None else None
        if rows is None:
            eo = outcome_list(elist)
            rows = [] if eo == base_decisions else list(compress(count(), map(ne, base_decisions, eo)))
            if key is not None:
                differing[key] = rows
        if not rows:
            continue
        # rows asking the same (base, engine) paths differ alike: each pair's culprit and words once
        base_keys, base_facts = _row_keys(base_list, rows)
        keys, facts = _row_keys(elist, rows)
        by_pair: dict[Any, tuple[list[Any], str, str]] = {}
        for i, pair in zip(rows, zip(base_keys, keys)):
            known = by_pair.get(pair)
            if known is None:
                b_rule, b_outcome = base_facts(pair[0])
                d_rule, d_outcome = facts(pair[1])
                culprit = d_rule if d_rule is not None else b_rule
                per_engine = diffs.setdefault(culprit, {})
                group = per_engine.get(e)
                if group is None:
                    group = per_engine[e] = [0, []]
                known = by_pair[pair] = (group, _word(b_outcome), _word(d_outcome))
            group, b_word, d_word = known
            group[0] += 1
            if len(group[1]) < MAX_EXAMPLES:
                group[1].append((modules[i], b_word, d_word))
    for culprit, per_engine in diffs.items():
        parts = []
        for e, (n, items) in per_engine.items():
            examples = ", ".join(f"{m} ({b} in {base}, {o} in {e})" for m, b, o in items)
            parts.append(f"{e}: {n} module(s), e.g. {examples}")
        if culprit is None:
            findings.append(LintFinding(INFO, "engine-default", None,
                                        "engines differ on modules no rule decides (engine defaults or "
                                        "shard errors) — " + "; ".join(parts)))
        else:
            findings.append(LintFinding(WARNING, "engine-divergence", culprit,
                                        f"means something different in {len(per_engine)} engine(s) than in "
                                        f"{base} on this checkpoint — " + "; ".join(parts)))
    return findings


def has_errors(findings: Sequence[LintFinding]) -> bool:
    return any(f.severity == ERROR_SEV for f in findings)


__all__ = ["ERROR_SEV", "INFO", "WARNING", "LintFinding", "has_errors", "lint"]
