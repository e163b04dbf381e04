"""The canonical reading: what a rule list *means* in mxmix, independent of any engine's quirks.

* plain rule — whole dotted components, anywhere in the path: ``model.layers.34.`` keeps layer 34's
  children, never layer 340's; ``mlp.gate`` keeps ``…mlp.gate``, never ``…mlp.gate_up_proj``.
  Surrounding whitespace and leading/trailing dots are normalised away; an empty result is invalid
  and matches nothing.
* ``re:`` rule — ``re.match`` on the full path (start-anchored only, the compressed-tensors
  convention).
* glob (a plain rule with ``*``, ``?`` or ``[``) — ``fnmatch`` against the path or any dotted ancestor.
* fused module (``qkv_proj`` …) — kept if matched itself or if all its shards are; a partial set of
  shards is an error naming them.
* FusedMoE ``…experts`` module — kept if it or an ancestor is matched; rules that reach only some
  experts / expert projections under it are an error. Plain rules are checked exactly; ``re:`` and
  glob rules are caught when their literal text extends the module path (``…experts.7.``) or when
  they match a probe child (experts 0–3, every projection, stacked tensors).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mxmix.errors import MxmixError
from mxmix.rules.decision import ERROR, KEEP, QUANTIZE
from mxmix.rules.primitives import (
    GLOB_ANCESTORS,
    MATCH,
    Backend,
    _min,
    dotted_ancestors,
    glob_literal_prefix,
    regex_literal_prefix,
)
from mxmix.rules.reading import PathReading, Verdict, quiet_unless

GLOB_CHARS = frozenset("*?[")
# Children a FusedMoE module stands for: per-expert projections and stacked 3-D tensors.
EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "w1", "w2", "w3")
STACKED_EXPERT_TENSORS = ("gate_up_proj", "down_proj", "gate_proj", "up_proj", "w13_weight", "w2_weight")
PROBED_EXPERTS = 4  # regex/glob rules are also probed against experts 0..3 of a FusedMoE


@dataclass(frozen=True)
class RuleForm:
    """How the canonical reading classifies one rule: kind in plain / regex / glob / invalid."""

    kind: str
    text: str


def classify(rule: str) -> RuleForm:
    """The rule's form (memoised: a plan and its lint classify the same long list several times;
    forms are immutable)."""
    form = _FORMS.get(rule)
    if form is None:
        if len(_FORMS) >= _FORMS_LIMIT:
            _FORMS.clear()
        form = _FORMS[rule] = _classify(rule)
    return form


_FORMS: dict[str, RuleForm] = {}
_FORMS_LIMIT = 1 << 16


def _classify(rule: str) -> RuleForm:
    stripped = rule.strip()
    if stripped.startswith("re:"):
        return RuleForm("regex", stripped[3:])
    text = stripped.strip(".")
    if not text:
        return RuleForm("invalid", "")
    if GLOB_CHARS & set(text):
        return RuleForm("glob", text)
    return RuleForm("plain", text)


ancestors = dotted_ancestors


def _is_expert_child(parts: Sequence[str]) -> bool:
    """A component sequence a FusedMoE's children start with: ``N``, ``N.proj`` or a stacked tensor."""
    if not parts:
        return False
    if parts[0].isdigit():
        return len(parts) == 1 or (len(parts) == 2 and bool(parts[1]))
    return len(parts) == 1 and parts[0] in STACKED_EXPERT_TENSORS


def _probe_children(path: str) -> list[str]:
    out = [f"{path}.{t}" for t in STACKED_EXPERT_TENSORS]
    for n in range(PROBED_EXPERTS):
        out.append(f"{path}.{n}")
        out.extend(f"{path}.{n}.{p}" for p in EXPERT_PROJECTIONS)
    return out


def build(rules: Sequence[str], fused: dict[str, tuple[str, ...]], backend: Backend) -> PathReading:
    forms = [classify(r) for r in rules]
    plain_entries = [(i, tuple(f.text.split("."))) for i, f in enumerate(forms) if f.kind == "plain"]
    plain = backend.components(plain_entries)
    regex = backend.regex([(i, f.text) for i, f in enumerate(forms) if f.kind == "regex"])
    if regex.failure is not None:
        i = regex.failure.index
        raise MxmixError(f"rule {rules[i]!r} is not a valid regex ({regex.failure.message.removeprefix('re.error: ')})")
    # regex and glob rules answered together (one combined pattern per bucket chain)
    patterns = backend.patterns(sorted([(i, f.text, MATCH) for i, f in enumerate(forms) if f.kind == "regex"]
                                       + [(i, f.text, GLOB_ANCESTORS) for i, f in enumerate(forms)
                                          if f.kind == "glob"]))
    # regex/glob rules whose literal text already reaches below a module ("…experts.7.") : sorted
    # literal prefixes, searched by bisection for those that extend a FusedMoE path
    literal = sorted((regex_literal_prefix(f.text) if f.kind == "regex" else glob_literal_prefix(f.text), i)
                     for i, f in enumerate(forms) if f.kind in ("regex", "glob"))
    literal_keys = [k for k, _ in literal]
    # Plain rules that reach *below* a FusedMoE module: key = the part of the rule that must be a
    # suffix of the module path's components (possibly empty), the rest an expert child.
    child_entries = []
    for i, parts in plain_entries:
        # an expert child is one or two components: only the last two cuts can leave one
        for cut in range(max(0, len(parts) - 2), len(parts)):
            if _is_expert_child(parts[cut:]):
                child_entries.append((i, parts[:cut]))
    children = backend.exact(child_entries)
    has_patterns = any(f.kind in ("regex", "glob") for f in forms)
    no_patterns = patterns.matches_nothing

    def direct(path: str, parts: Sequence[str] | None = None) -> tuple[int | None, str]:
        if parts is None:
            parts = path.split(".")
        best = plain.first(parts)
        if not no_patterns:
            h = patterns.first(path, parts)
            if h is not None and (best is None or h < best):
                best = h
        if best is None:
            return None, ""
        kind = forms[best].kind
        if kind == "plain":
            why = f"rule {rules[best]!r} names whole components of the path"
        elif kind == "regex":
            why = f"regex rule {rules[best]!r} matches the start of the path"
        else:
            why = f"glob rule {rules[best]!r} matches the path or one of its dotted ancestors"
        return best, why

    def reading(path: str) -> Verdict:
        parts = path.split(".")
        hit, why = direct(path, parts)
        if hit is not None:
            return KEEP, hit, why
        last = parts[-1]
        if last in fused:
            shard_paths = [".".join([*parts[:-1], s]) for s in fused[last]]
            hits = [direct(s)[0] for s in shard_paths]
            kept = [s for s, h in zip(shard_paths, hits) if h is not None]
            if len(kept) == len(shard_paths):
                first = min(h for h in hits if h is not None)
                return KEEP, first, f"fused module: all its shards are kept ({', '.join(fused[last])})"
            if kept:
                missing = [s for s, h in zip(shard_paths, hits) if h is None]
                first = min(h for h in hits if h is not None)
                return ERROR, first, (f"only some shards of fused module {path} are kept: "
                                      f"{', '.join(kept)} kept, {', '.join(missing)} not")
            return QUANTIZE, None, "no rule matches the fused module or any of its shards"
        if last == "experts":
            for anc in ancestors(path)[1:]:
                h = regex.first(anc)
                if h is not None:
                    return KEEP, h, f"regex rule {rules[h]!r} matches its ancestor {anc}"
            suffixes = [tuple(parts[k:]) for k in range(len(parts) + 1)]
            reach = None
            for s in suffixes:
                reach = _min(reach, children.first(s))
            if reach is None and has_patterns:
                k = bisect.bisect_left(literal_keys, path + ".")
                while k < len(literal) and literal_keys[k].startswith(path + "."):
                    reach = _min(reach, literal[k][1])
                    k += 1
            if reach is None and has_patterns:
                for child in _probe_children(path):
                    h = patterns.first(child)
                    if h is not None:
                        reach = h
                        break
            if reach is not None:
                return ERROR, reach, (f"rule {rules[reach]!r} lists only some experts or expert projections "
                                      f"of the FusedMoE module {path}; keep the whole module ({path}) or none")
            return QUANTIZE, None, "no rule matches the FusedMoE module or an ancestor"
        return QUANTIZE, None, "no rule matches"

    if no_patterns:
        # a component run of the path spelled with its dots is a substring of the path; fused and
        # FusedMoE names take the other branches
        needles = backend.needles(".".join(parts) for _, parts in plain_entries)
        special = (*fused, "experts")

        def candidates(paths: Sequence[str]) -> set[int] | None:
            found = needles.candidates(paths)
            return None if found is None else found | backend.ends_component(paths, special)

        quiet_unless(reading, candidates, (QUANTIZE, None, "no rule matches"))
    return reading


def invalid_regexes(rules: Sequence[str]) -> list[tuple[str, str]]:
    """(rule, error) for every ``re:`` rule that does not compile."""
    out = []
    for r in rules:
        f = classify(r)
        if f.kind == "regex":
            try:
                re.compile(f.text)
            except re.error as exc:
                out.append((r, str(exc)))
    return out
