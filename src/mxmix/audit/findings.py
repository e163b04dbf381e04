"""What an audit reports: one Finding per problem, its modules grouped into a few readable patterns.

A checkpoint with a wrong skip list produces the same problem on thousands of modules; a reader needs
one line saying what, where (``model.layers.[24-29].self_attn.{k_proj,q_proj,v_proj}``) and what
happens at load time, not thousands of lines.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_NUMBER = re.compile(r"^(?:0|[1-9][0-9]*)$")


@dataclass(frozen=True)
class Finding:
    """One problem: ``check`` is the family (config, engine, rules, structure, scales)."""

    severity: str
    check: str
    code: str
    message: str
    consequence: str
    modules: tuple[str, ...] = ()
    engine: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    subject: str = "module"          # what ``modules`` holds: "module" paths, or skip-list "rule"s

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def groups(self) -> list[str]:
        return group_modules(self.modules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity, "check": self.check, "code": self.code, "engine": self.engine,
            "message": self.message, "consequence": self.consequence, "subject": self.subject,
            "module_count": len(self.modules),
            "module_groups": self.groups, "modules": list(self.modules), "details": self.details,
        }


def add_finding(out: list[Finding], severity: str, check: str, code: str, message: str, consequence: str,
                modules: Sequence[str], **details: Any) -> None:
    """Append a Finding for ``modules`` to ``out``, only if there are any (checks collect the modules
    of each problem first, then report the non-empty groups)."""
    if modules:
        out.append(Finding(severity, check, code, message, consequence, tuple(modules), details=details))


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then by family, engine and code, so output is stable."""
    order = {"config": 0, "engine": 1, "structure": 2, "scales": 3, "rules": 4}
    return sorted(findings, key=lambda f: (_RANK[f.severity], order.get(f.check, 9), f.engine or "",
                                           f.code, f.modules[:1]))


def worst_severity(findings: Iterable[Finding]) -> str | None:
    ranks = [_RANK[f.severity] for f in findings]
    return SEVERITIES[min(ranks)] if ranks else None


def exit_code(findings: Iterable[Finding]) -> int:
    """0 clean (or only warnings/info), 1 when any finding is an error."""
    return 1 if any(f.severity == "error" for f in findings) else 0


def _ranges(numbers: Iterable[int]) -> str:
    nums = sorted(set(numbers))
    parts: list[str] = []
    start = prev = nums[0]
    for n in nums[1:]:
        if n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return parts[0] if len(parts) == 1 and "-" not in parts[0] else "[" + ",".join(parts) + "]"


def group_modules(paths: Sequence[str]) -> list[str]:
    """Compress dotted module paths into patterns: numeric components become ranges, then siblings
    that share everything but their last component are merged with ``{a,b}``.

    >>> group_modules(["m.layers.1.q", "m.layers.2.q", "m.layers.1.k", "m.layers.2.k", "lm_head"])
    ['lm_head', 'm.layers.[1-2].{k,q}']
    """
    templates: dict[tuple[str, ...], list[tuple[int, ...]]] = defaultdict(list)
    for path in dict.fromkeys(paths):
        parts = path.split(".")
        slots = tuple(i for i, p in enumerate(parts) if _NUMBER.match(p))
        template = tuple("#" if i in slots else p for i, p in enumerate(parts))
        templates[template].append(tuple(int(parts[i]) for i in slots))
    collapsed: list[tuple[str, ...]] = []
    for template, rows in templates.items():
        # Collapse numeric slots from the last to the first: experts inside a layer, then layers.
        entries: list[tuple[Any, ...]] = [tuple(r) for r in rows]
        n_slots = len(rows[0])
        for slot in reversed(range(n_slots)):
            buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
            for e in entries:
                buckets[e[:slot] + e[slot + 1:]].append(e[slot])
            entries = [(*k[:slot], _ranges(v), *k[slot:]) for k, v in buckets.items()]
        for e in entries:
            it = iter(e)
            collapsed.append(tuple(next(it) if t == "#" else t for t in template))
    siblings: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for parts in collapsed:
        siblings[parts[:-1]].append(parts[-1])
    out = []
    for parent, lasts in siblings.items():
        last = lasts[0] if len(lasts) == 1 else "{" + ",".join(sorted(lasts)) + "}"
        out.append(".".join((*parent, last)))
    return sorted(out)


def summarise(findings: Sequence[Finding]) -> dict[str, int]:
    counts = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f.severity] += 1
    return counts


def format_findings(findings: Sequence[Finding], *, max_groups: int = 6) -> str:
    """Human text: one block per finding, modules as grouped patterns."""
    if not findings:
        return "no findings"
    lines: list[str] = []
    for f in sort_findings(findings):
        where = f"{f.check}/{f.engine}" if f.engine else f.check
        lines.append(f"{f.severity.upper():7} {where}: {f.code}: {f.message}")
        groups = f.groups
        if groups:
            shown = ", ".join(groups[:max_groups])
            more = f" (+{len(groups) - max_groups} more patterns)" if len(groups) > max_groups else ""
            lines.append(f"        {len(f.modules)} {f.subject}(s): {shown}{more}")
        lines.append(f"        → {f.consequence}")
    counts = summarise(findings)
    lines.append(f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s)")
    return "\n".join(lines)
