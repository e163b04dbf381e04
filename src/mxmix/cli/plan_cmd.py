"""`mxmix plan CHECKPOINT`: per-module precision as each engine will run it, disagreements flagged."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mxmix.cli.output import add_json_flag, emit, format_table

MARK = "!"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan", help="predict each engine's precision for every Linear of a checkpoint",
        description="Read the checkpoint's own skip list the way each engine does and show, per Linear "
                    "module, the precision each engine will run it at. Cells marked '!' disagree with the "
                    "stored tensors (the engine would misload them) or are engine errors.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or .safetensors file")
    p.add_argument("--engine", action="append", default=[], dest="engines", metavar="NAME",
                   help="engine reading(s) to show (repeatable; default: those relevant to the dialect)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--full", action="store_true", help="one row per module (default: layers grouped)")
    view.add_argument("--disagreements", action="store_true", help="only rows where some engine disagrees")
    add_json_flag(p)
    p.set_defaults(func=run)


def _cell(row: Any, engine: str) -> str:
    text = row.runs_as(engine)
    return text + MARK if row.disagrees(engine) else text


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out: list[str] = []
    nums = sorted(set(numbers))
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(out)


def render(plan: Any, *, full: bool = False, only_disagreements: bool = False) -> str:
    from mxmix.rules.plan import compact_groups

    header = [f"checkpoint: {plan.checkpoint}",
              f"dialect: {plan.dialect}   quant_method: {plan.quant_method or '-'}",
              f"modules: {len(plan.rows)}   engines: {', '.join(plan.engines)}"]
    for e in plan.engines:
        rules = plan.skip_lists.get(e, [])
        shown = ", ".join(rules[:4]) + (f", … ({len(rules)} in all)" if len(rules) > 4 else "")
        header.append(f"  {e} reads: [{shown}]")
    headers = ["MODULE", "STORED", *plan.engines]
    rows: list[list[str]] = []
    if full or only_disagreements:
        for r in plan.rows:
            if only_disagreements and not any(r.disagrees(e) for e in plan.engines):
                continue
            label = r.module.path if not r.module.stacked else f"{r.module.path} [{r.module.kind}]"
            rows.append([label, r.stored, *[_cell(r, e) for e in plan.engines]])
    else:
        for label, members in compact_groups(plan):
            if members[0].module.layer is None:
                for r in members:
                    rows.append([label, r.stored, *[_cell(r, e) for e in plan.engines]])
                continue
            # experts that read alike collapse to one line: experts.{0-127}.down_proj
            merged: dict[tuple, list[int]] = {}
            for r in members:
                cells = tuple(_cell(r, e) for e in plan.engines)
                kind = r.module.kind if r.module.expert is None else r.module.kind.split(".", 1)[-1]
                key = (r.module.expert is not None, kind, r.stored, cells)
                merged.setdefault(key, []).append(r.module.expert if r.module.expert is not None else -1)
            for (is_expert, kind, stored, cells), experts in merged.items():
                name = f"experts.{{{_ranges(experts)}}}.{kind}" if is_expert else kind
                rows.append([f"{label}: {name}", stored, *cells])
    table = format_table(headers, rows) if rows else "(no rows)"
    counts = plan.disagreements()
    summary = "disagreements (" + MARK + "): " + ", ".join(f"{e} {n}" for e, n in counts.items())
    notes = [f"note: {n}" for n in plan.notes]
    return "\n".join([*header, "", table, "", summary, *notes])


def run(args: argparse.Namespace) -> int:
    from mxmix.rules.plan import plan_checkpoint

    plan = plan_checkpoint(args.checkpoint, args.engines or None)
    emit(args, plan.to_dict(), lambda: render(plan, full=args.full, only_disagreements=args.disagreements))
    if not getattr(args, "json", False) and sys.stdout.isatty() and any(plan.disagreements().values()):
        sys.stderr.write("some engines disagree with the stored tensors (cells marked '!')\n")
    return 0
