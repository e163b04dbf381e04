"""`mxmix audit`: does a checkpoint's config agree with its tensors, and will each engine load it as meant?

Everything here reads safetensors headers and JSON only, except ``check_scales=True``, which
streams the scale tensors (one at a time, never the weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mxmix.audit.findings import Finding, exit_code, format_findings, group_modules, sort_findings, summarise

__all__ = [
    "AuditResult",
    "Finding",
    "audit_checkpoint",
    "exit_code",
    "format_findings",
    "group_modules",
]


@dataclass
class AuditResult:
    checkpoint: str
    dialect: str
    quant_method: str | None
    engines: list[str]
    findings: list[Finding]
    verdicts: list[Any] = field(default_factory=list)        # EngineVerdict per engine
    skip_lists: dict[str, list[str]] = field(default_factory=dict)
    scales_checked: int | None = None
    plan: Any = None                                         # mxmix.rules.plan.Plan (for the report)
    _views: list[Any] | None = field(default=None, repr=False)
    _ckpt: Any = field(default=None, repr=False, compare=False)

    @property
    def views(self) -> list[Any]:
        """``ModuleView`` per Linear, built on first use: the checks read the plan's modules, so an
        audit that nobody asks for views of does not build 10^5 of them."""
        if self._views is None:
            from mxmix.checkpoint.inspect import module_views

            self._views = module_views(self._ckpt, self.plan.modules) if self.plan is not None else []
        return self._views

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint, "dialect": self.dialect, "quant_method": self.quant_method,
            "engines": [v.to_dict() for v in self.verdicts], "summary": summarise(self.findings),
            "exit_code": self.exit_code, "scales_checked": self.scales_checked,
            "skip_lists": {k: len(v) for k, v in self.skip_lists.items()},
            "findings": [f.to_dict() for f in sort_findings(self.findings)],
        }

    def format(self) -> str:
        lines = [f"checkpoint: {self.checkpoint}",
                 f"dialect:    {self.dialect}" + (f" (quant_method {self.quant_method!r})" if self.quant_method else ""),
                 f"modules:    {len(self.plan.modules) if self.plan is not None else len(self.views)} Linear"]
        if self.scales_checked is not None:
            lines.append(f"scales:     {self.scales_checked} scale tensors read")
        if not self.quant_method:
            lines.append("engine readings: not judged (no quantization_config: every engine loads the "
                         "checkpoint unquantized)")
        elif self.verdicts:
            lines.append("engine readings:")
            for v in self.verdicts:
                if v.clean:
                    state = "clean"
                else:
                    parts = [f"{n} {what}" for n, what in ((v.keeps_fp8, "kept BF16 but stored FP8"),
                                                            (v.quantizes_bf16, "quantized but stored BF16"),
                                                            (v.raises, "raise")) if n]
                    state = "MISREADS: " + ", ".join(parts)
                loads = "" if v.consumes else "  (does not load this dialect)"
                lines.append(f"  {v.engine:26} {state}{loads}")
        lines.append("")
        lines.append(format_findings(self.findings))
        return "\n".join(lines)


def audit_checkpoint(path_or_ckpt: Any, *, engines: Sequence[str] | None = None, check_scales: bool = False,
                     lint_rules: bool = True,
                     progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> AuditResult:
    """Run every check on a checkpoint directory (or an opened ``Checkpoint``).

    ``engines``: readings to judge (default: all of ``mxmix.rules.ENGINES``; "canonical" always runs
    for the config-vs-tensors check).
    """
    from mxmix.checkpoint.safetensors_header import _gc_paused

    # ~10^5 small acyclic objects (decisions, views), kept with the result: cyclic GC passes only cost
    # time, during the audit and in the first young collection after it (promoted)
    with _gc_paused(promote=True):
        return _audit(path_or_ckpt, engines, check_scales, lint_rules, progress)


def _audit(path_or_ckpt: Any, engines: Sequence[str] | None, check_scales: bool, lint_rules: bool,
           progress: Callable[[Iterable[Any]], Iterable[Any]] | None) -> AuditResult:
    from mxmix.audit.config_vs_tensors import check_config_vs_tensors
    from mxmix.audit.engines import check_engines
    from mxmix.audit.structure import check_structure
    from mxmix.checkpoint.inspect import checkpoint_dialect, module_views
    from mxmix.checkpoint.layout import Checkpoint
    from mxmix.checkpoint.modules import precisions_of
    from mxmix.rules import ENGINES, get_engine
    from mxmix.rules.plan import plan_checkpoint
    from mxmix.rules.primitives import Backend

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, Checkpoint) else Checkpoint.open(path_or_ckpt)
    judged = list(dict.fromkeys(engines)) if engines else [e for e in ENGINES if e != "canonical"]
    for e in judged:
        get_engine(e)
    backend = Backend.shared()   # rule indexes built for the plan are reused by lint
    plan = plan_checkpoint(ckpt, ["canonical", *[e for e in judged if e != "canonical"]], backend=backend)
    # the checks read the fields a view shares with its Linear module: the views when this open
    # checkpoint has them already (inspect on the same open), else the modules themselves, so that
    # views (companions, sizes) are built only for the scale check or when the result is asked
    modules = plan.modules
    views = module_views(ckpt, modules) if ckpt.built("module_views") is not None else None
    dialect = checkpoint_dialect(ckpt)
    declared = bool(plan.quant_method)
    checked = views if views is not None else modules
    precisions = precisions_of(checked)
    findings = check_config_vs_tensors(ckpt, checked, plan.column("canonical") if declared else None, dialect,
                                       precisions=precisions)
    engine_findings, verdicts = check_engines(plan, [e for e in judged if e != "canonical"])
    findings += engine_findings
    findings += check_structure(checked, precisions=precisions)
    if lint_rules and declared:
        findings += _lint_findings(ckpt, judged, plan, backend)
    scales_checked = None
    if check_scales:
        from mxmix.audit.scales import check_scales as run_scale_checks

        if views is None:
            views = module_views(ckpt, modules)
        items = [(v.path if not v.stacked else v.weight, _scale_reader(ckpt, v.scale))
                 for v in views if v.precision == "mxfp8" and v.scale]
        run_dtype = str((ckpt.config or {}).get("torch_dtype") or (ckpt.config or {}).get("dtype") or "bfloat16")
        scale_findings, stats = run_scale_checks(items, run_dtype=run_dtype, progress=progress)
        findings += scale_findings
        scales_checked = len(stats)
    return AuditResult(str(ckpt.root), dialect, plan.quant_method, judged, sort_findings(findings), verdicts,
                       dict(plan.skip_lists), scales_checked, plan, views, ckpt)


def _scale_reader(ckpt: Any, name: str) -> Callable[[], Any]:
    def read() -> Any:
        return ckpt.read_tensor(name).contiguous().view(-1).numpy().reshape(ckpt.tensors[name].info.shape)
    return read


def _lint_findings(ckpt: Any, engines: list[str], plan: Any, backend: Any) -> list[Finding]:
    """Check 3: lint each distinct skip list the config holds (`mxmix rules lint`)."""
    from mxmix.checkpoint.inspect import skip_key_values
    from mxmix.rules.lint import lint  # not mxmix.rules.lint the attribute: the submodule shadows it

    lists: dict[tuple[str, ...], list[str]] = {}
    for key, value in skip_key_values(ckpt).items():
        if isinstance(value, list) and all(isinstance(r, str) for r in value):
            lists.setdefault(tuple(value), []).append(key)
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    # the modules lint judges: each plan row's path once (stacked experts share one), in row order
    paths = plan.paths
    aligned = plan.distinct_paths is paths
    first_rows: list[int] = []
    if not aligned:
        first_row: dict[str, int] = dict(zip(reversed(paths), range(len(paths) - 1, -1, -1)))
        first_rows = sorted(first_row.values())
    modules = paths if aligned else [paths[i] for i in first_rows]
    for rules, keys in lists.items():
        if not rules:
            continue
        # engines whose own skip list is this very list: their decisions are already in the plan
        decided = {e: (plan.column(e) if aligned else [plan.column(e)[i] for i in first_rows])
                   for e in engines if tuple(plan.skip_lists.get(e, ())) == rules}
        found = lint(list(rules), modules=modules, engines=engines, decided_columns=decided,
                     runtime=plan.runtime or None, backend=backend)
        for lf in found:
            g = grouped.setdefault((lf.code, lf.severity), {"rules": [], "messages": [], "keys": []})
            if lf.rule is not None and lf.rule not in g["rules"]:
                g["rules"].append(lf.rule)
            g["messages"].append(lf.message)
            g["keys"] += [k for k in keys if k not in g["keys"]]
    out: list[Finding] = []
    for (code, lint_severity), g in grouped.items():
        # Lint is advice about the list; what it breaks on this checkpoint is reported (as errors) by
        # the engine check, so a lint "error" alone does not fail the audit.
        severity = "info" if lint_severity == "info" else "warning"
        n = len(g["rules"])
        first = g["messages"][0]
        message = (first if len(first) <= 240 else first[:237] + "...")
        if n > 1:
            message += f" [and {n - 1} more rule(s) like it]"
        out.append(Finding(severity, "rules", code, f"{message} (in {', '.join(g['keys'])})",
                           _lint_consequence(lint_severity), tuple(g["rules"]),
                           details={"lint_severity": lint_severity, "keys": g["keys"],
                                    "messages": g["messages"][:20]}, subject="rule"))
    return out


def _lint_consequence(severity: str) -> str:
    if severity == "error":
        return "Engines read this rule differently (or not at all); the engine findings show where it bites."
    if severity == "warning":
        return "Harmless on this checkpoint's modules today, but fragile: a new engine or model can read it differently."
    return "For information; no engine misreads it on this checkpoint."
