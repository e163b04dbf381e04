"""`mxmix rules match|lint|engines`: ask how a rule list is read, lint it, list the readings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mxmix.cli.output import add_json_flag, emit, format_table
from mxmix.errors import MxmixError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rules", help="match, lint and list precision-rule readings",
                              description="How each engine reads a keep-in-BF16 rule list.")
    sub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")

    m = sub.add_parser("match", help="decide module paths under a rule list and one engine's reading")
    m.add_argument("paths", nargs="+", metavar="PATH", help="module path(s), e.g. model.layers.0.mlp.gate_proj")
    m.add_argument("--engine", default="canonical", help="reading to use (see 'mxmix rules engines')")
    _add_rule_args(m)
    m.add_argument("--fused", action="append", default=[], metavar="NAME=a,b,c",
                   help="fused module and its shards (adds to/overrides qkv_proj and gate_up_proj)")
    add_json_flag(m)
    m.set_defaults(func=run_match)

    lint = sub.add_parser("lint", help="report rules that engines read differently or that match nothing")
    _add_rule_args(lint)
    lint.add_argument("--modules-from", metavar="CHECKPOINT",
                      help="checkpoint whose Linear modules to check the rules against (dead rules, divergence)")
    lint.add_argument("--engine", action="append", default=[], dest="engines", metavar="NAME",
                      help="engine(s) you will serve with (repeatable)")
    add_json_flag(lint)
    lint.set_defaults(func=run_lint)

    e = sub.add_parser("engines", help="list the readings with the version and source file each mirrors")
    add_json_flag(e)
    e.set_defaults(func=run_engines)

    p.set_defaults(func=lambda args: _no_subcommand(p))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", action="append", default=[], metavar="R", help="one rule (repeatable)")
    p.add_argument("--rules-file", action="append", default=[], metavar="F",
                   help="file of rules, one per line ('#' starts a comment line)")


def read_rules_file(path: str) -> list[str]:
    """One rule per line; blank lines and lines starting with '#' are skipped; whitespace is kept
    (so lint can see it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MxmixError(f"{path}: rules file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MxmixError(f"{path}: cannot read rules file ({exc})") from None
    return [line.rstrip("\r\n") for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def collect_rules(args: argparse.Namespace) -> list[str]:
    rules = list(args.rule)
    for f in args.rules_file:
        rules.extend(read_rules_file(f))
    return rules


def run_match(args: argparse.Namespace) -> int:
    from mxmix.rules import compile_rules
    from mxmix.rules.decision import parse_fused_spec

    rules = collect_rules(args)
    fused = parse_fused_spec(args.fused)
    compiled = compile_rules(rules, args.engine, fused)
    decisions = [compiled.decide(p) for p in args.paths]
    data = [d.to_dict() for d in decisions]
    emit(args, data, lambda: format_table(
        ["PATH", "DECISION", "RULE", "REASON"],
        [[d.path, d.decision, d.rule if d.rule is not None else "-", d.reason] for d in decisions]))
    return 1 if any(d.decision == "error" for d in decisions) else 0


def run_lint(args: argparse.Namespace) -> int:
    from mxmix.rules.lint import has_errors, lint

    rules = collect_rules(args)
    if not rules:
        raise MxmixError("no rules given (use --rule R or --rules-file F)")
    modules = None
    if args.modules_from:
        from mxmix.checkpoint.layout import Checkpoint
        from mxmix.checkpoint.modules import linear_modules

        modules = list(dict.fromkeys(m.path for m in linear_modules(Checkpoint.open(args.modules_from))))
        if not modules:
            raise MxmixError(f"{args.modules_from}: no Linear modules found")
    findings = lint(rules, modules=modules, engines=args.engines or None)
    errors = has_errors(findings)
    data = {"rules": rules, "engines": args.engines, "modules": len(modules) if modules is not None else None,
            "errors": sum(f.severity == "error" for f in findings),
            "warnings": sum(f.severity == "warning" for f in findings),
            "findings": [f.to_dict() for f in findings]}

    def text() -> str:
        if not findings:
            return f"{len(rules)} rule(s): no findings"
        table = format_table(["SEVERITY", "CODE", "RULE", "MESSAGE"],
                             [[f.severity, f.code, "-" if f.rule is None else repr(f.rule), f.message]
                              for f in findings])
        return table + f"\n\n{data['errors']} error(s), {data['warnings']} warning(s)"

    emit(args, data, text)
    return 1 if errors else 0


def run_engines(args: argparse.Namespace) -> int:
    from mxmix.rules import ENGINES

    data = [e.to_dict() for e in ENGINES.values()]
    emit(args, data, lambda: format_table(
        ["ENGINE", "VERSION", "DIALECTS", "MIRRORS", "READING"],
        [[e.name, e.version, ",".join(e.dialects) or "-", e.source, e.summary] for e in ENGINES.values()]))
    return 0
