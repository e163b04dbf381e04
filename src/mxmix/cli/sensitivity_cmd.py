"""`mxmix sensitivity REF`: measure each layer's (or module's) MXFP8 cost and propose what to keep BF16."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mxmix.cli.output import add_json_flag, emit, parse_size
from mxmix.errors import MxmixError

HELP = "rank layers/modules by their MXFP8 KLD cost and propose a BF16 keep set within a budget"
EPILOG = """\
One unit at a time is quantized (MXFP8 round trip of its weights) and its KLD against the unquantized
reference is measured on a few windows of text (default 4 x 256 tokens of the embedded corpus). Within
the budget, the units with the highest KLD cost per extra BF16 byte are kept (greedy). The proposal is
then measured once (predicted vs measured) next to the last-N and first+last-N heuristics at the same
budget. --out writes the keep set as a JSON list of full module paths, the form every engine reads
alike, which `mxmix quantize --keep-from-file` reads.

examples:
  mxmix sensitivity ./SmolLM2 --budget-layers 6 --out keep.json
  mxmix quantize ./SmolLM2 ./SmolLM2-mx --keep-from-file keep.json
  mxmix sensitivity ./model --granularity module --budget-bytes 200MB --device cuda --windows 16
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sensitivity", help=HELP, description=HELP + ".", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", metavar="REF", help="the unquantized (BF16) checkpoint")
    p.add_argument("--text", metavar="FILE", action="append", default=[], help="text file(s) (default: embedded)")
    p.add_argument("--granularity", choices=("layer", "module"), default="layer")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--budget-layers", type=int, metavar="N",
                   help="keep at most N decoder layers' worth of bytes in BF16 (default: 20%% of the layers)")
    b.add_argument("--budget-bytes", metavar="SIZE", help="extra bytes allowed for BF16, e.g. 200MB")
    p.add_argument("--ctx", type=int, default=256, help="window length (default 256)")
    p.add_argument("--windows", type=int, default=4, help="windows (default 4; each unit costs one pass over them)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--scale-mode", choices=("rceil", "floor"), default="rceil", help="MXFP8 scale rounding")
    p.add_argument("--cache-dir", metavar="DIR", help="reference cache (default $MXMIX_CACHE/reference-logits)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the reference cache")
    p.add_argument("--out", metavar="keep.json", help="write the proposed keep set (JSON list of module paths)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--no-progress", action="store_true")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mxmix.eval.sensitivity import format_sensitivity, run_sensitivity
    from mxmix.fsutil import atomic_output_file, refuse_existing

    if args.windows < 1:
        raise MxmixError("--windows must be >= 1")
    if args.out:
        refuse_existing(Path(args.out), args.force)
    if not Path(args.reference).exists():
        raise MxmixError(f"{args.reference}: no such checkpoint")
    budget_bytes = parse_size(args.budget_bytes) if args.budget_bytes else None
    doc = run_sensitivity(args.reference, args.text, ctx=args.ctx, windows=args.windows,
                          granularity=args.granularity, budget_layers=args.budget_layers, budget_bytes=budget_bytes,
                          device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                          use_cache=not args.no_cache, scale_mode=args.scale_mode,
                          progress=False if args.no_progress else None)
    if args.out:
        with atomic_output_file(Path(args.out), force=args.force) as tmp:
            tmp.write_text(json.dumps(doc["keep_rules"], indent=1) + "\n")
        doc["out"] = args.out
    emit(args, doc, lambda: format_sensitivity(doc) + (f"\nwrote {args.out}: mxmix quantize REF DST "
                                                        f"--keep-from-file {args.out}" if args.out else ""))
    return 0
