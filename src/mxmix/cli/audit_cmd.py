"""`mxmix audit CHECKPOINT`: config vs tensors, every engine's reading vs tensors, rules, structure, scales.

Exit status: 0 clean (warnings and notes allowed), 1 error-level findings, 2 the checkpoint cannot
be read. Meant to gate a CI pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mxmix.cli.output import add_json_flag, emit


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit", help="find where the config, the tensors and each engine's reading disagree",
        description="Check a checkpoint from its headers and JSON: (1) the config's skip list against the "
                    "stored tensors, (2) every engine's reading of that list (with its key precedence) "
                    "against the tensors, (3) lint of the list, (4) fused shards and experts of mixed "
                    "precision, and with --check-scales (5) the scale bytes themselves. Exit status 0: "
                    "clean; 1: error-level findings; 2: cannot read the checkpoint.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or .safetensors file")
    p.add_argument("--engine", action="append", default=[], dest="engines", metavar="NAME",
                   help="judge only this engine reading (repeatable; default: all; see `mxmix rules engines`)")
    p.add_argument("--check-scales", action="store_true",
                   help="also read every scale tensor (not the weights): NaN bytes, implausible range, swizzle")
    p.add_argument("--report", metavar="FILE", type=Path,
                   help="write a precision map: FILE.html (self-contained) or FILE.png")
    p.add_argument("--force", action="store_true", help="overwrite an existing --report file")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mxmix.audit import audit_checkpoint
    from mxmix.errors import MxmixError
    from mxmix.fsutil import refuse_existing
    from mxmix.progress import progress

    if args.report is not None:
        if args.report.suffix.lower() not in (".html", ".htm", ".png"):
            raise MxmixError(f"--report {args.report}: the file name must end in .html or .png")
        refuse_existing(args.report, args.force)
    result = audit_checkpoint(
        args.checkpoint, engines=args.engines or None, check_scales=args.check_scales,
        progress=lambda it: progress(list(it), desc="scales", unit="tensor"))
    data = result.to_dict()
    if args.report is not None:
        from mxmix.audit.report import write_report

        write_report(result, args.report, force=args.force)
        data["report"] = str(args.report)
        sys.stderr.write(f"mxmix: wrote {args.report}\n")
    emit(args, data, result.format)
    return result.exit_code
