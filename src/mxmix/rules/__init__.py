"""The precision-rule engine: which modules stay BF16, as mxmix means it and as each consumer reads it.

``decide(path, rules, engine)`` answers for one path by the plain reference definitions;
``compile_rules(rules, engine)`` returns the bulk form (indexed, same answers) for many paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

from mxmix.errors import MxmixError
from mxmix.rules.config_keys import skip_list_for
from mxmix.rules.decision import DEFAULT_FUSED, ERROR, KEEP, QUANTIZE, Decision, Fused, normalise_fused
from mxmix.rules.engines import ENGINES, EngineInfo, engines_for_dialect, engines_for_quant_method, get_engine

# Imported eagerly so that mxmix.rules.lint is the function, not the submodule of the same name
# (a submodule import binds the package attribute only when the submodule is first loaded).
from mxmix.rules.lint import LintFinding, lint
from mxmix.rules.primitives import INDEXED, REFERENCE, Backend
from mxmix.rules.reading import BoundReading

CompiledRules = BoundReading


def _check_rules(rules: Sequence[str]) -> tuple[str, ...]:
    if isinstance(rules, str):
        raise MxmixError("rules must be a list of strings, not one string")
    out = tuple(rules)
    if not all(map(isinstance, out, repeat(str))):
        bad = next(r for r in out if not isinstance(r, str))
        raise MxmixError(f"rule {bad!r} is not a string")
    return out


def decide(path: str, rules: Sequence[str], engine: str = "canonical", fused: Fused | None = None) -> Decision:
    """How ``engine`` treats module ``path`` under ``rules`` (reference definitions, one path)."""
    info = get_engine(engine)
    rule_tuple = _check_rules(rules)
    reading = info.build(rule_tuple, normalise_fused(fused), REFERENCE)
    return BoundReading(engine, rule_tuple, reading).decide(path)


def compile_rules(rules: Sequence[str], engine: str = "canonical", fused: Fused | None = None, *,
                  backend: Backend | None = None) -> CompiledRules:
    """The bulk form: rules indexed once, ``.decide(path)`` without looping over every rule.

    ``backend``: an indexed ``Backend.shared()`` to reuse indexes across readings of one job."""
    info = get_engine(engine)
    rule_tuple = _check_rules(rules)
    return BoundReading(engine, rule_tuple, info.build(rule_tuple, normalise_fused(fused), backend or INDEXED))


def reference_rules(rules: Sequence[str], engine: str = "canonical", fused: Fused | None = None) -> CompiledRules:
    """Like ``compile_rules`` but on the reference loops (what ``decide`` uses); for tests and benchmarks."""
    info = get_engine(engine)
    rule_tuple = _check_rules(rules)
    return BoundReading(engine, rule_tuple, info.build(rule_tuple, normalise_fused(fused), REFERENCE))


__all__ = [
    "DEFAULT_FUSED",
    "ENGINES",
    "ERROR",
    "KEEP",
    "QUANTIZE",
    "CompiledRules",
    "Decision",
    "EngineInfo",
    "LintFinding",
    "compile_rules",
    "decide",
    "engines_for_dialect",
    "engines_for_quant_method",
    "get_engine",
    "lint",
    "reference_rules",
    "skip_list_for",
]
