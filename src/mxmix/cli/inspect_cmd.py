"""`mxmix inspect CHECKPOINT`: what a checkpoint holds, from safetensors headers and JSON only."""

from __future__ import annotations

import argparse
from typing import Any

from mxmix.cli.output import add_json_flag, emit


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect", help="show per-module precision, scales, dialect and totals (headers only)",
        description="Read only safetensors headers and JSON files (no tensor data) and show each Linear "
                    "module's weight dtype/shape and companion tensors (scales), the quantization dialect, "
                    "parameters and bytes by precision, the share of Linear parameters in MXFP8 and a "
                    "per-layer summary.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or .safetensors file")
    p.add_argument("--modules", type=int, default=40, metavar="N",
                   help="list at most N decoder-layer modules in the text output (default 40; --json lists all)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mxmix.checkpoint.inspect import format_summary, inspect_checkpoint
    from mxmix.checkpoint.layout import Checkpoint

    summary = inspect_checkpoint(Checkpoint.open(args.checkpoint))
    emit(args, summary.to_dict(), lambda: format_summary(summary, max_modules=max(0, args.modules)))
    return 0
