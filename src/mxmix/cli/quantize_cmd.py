"""`mxmix quantize SRC DST`: BF16 checkpoint → mixed MXFP8/BF16 checkpoint every engine reads alike."""

from __future__ import annotations

import argparse

from mxmix.cli.output import add_json_flag, emit, parse_size

HELP = "convert a BF16 HF checkpoint into a mixed MXFP8/BF16 one"
EPILOG = """\
By default every Linear weight is MXFP8 (E4M3 values, one E8M0 scale per 32 inputs) except: the LM head
and MoE router gates (override with --quantize-lm-head / --quantize-router), weights whose input dim K is
not a multiple of 32, and what --keep / --keep-first / --keep-last / --keep-from-file name. Embeddings,
norms and biases are never quantized. Shards q/k/v and gate/up are kept together and a layer's experts
all or none, so every engine reads the checkpoint the same way.

examples:
  mxmix quantize ./SmolLM2 ./SmolLM2-mx --keep-last 6
  mxmix quantize ./model ./model-mx --keep model.layers.0.mlp --keep-from-file keep.txt --json
  mxmix quantize ./model ./model-mx --dialect compressed-tensors --max-shard-size 2GB
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quantize", help=HELP, description=HELP + ".", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="source checkpoint directory (config.json + *.safetensors)")
    p.add_argument("dst", metavar="DST", help="output directory (must not exist unless --force)")
    g = p.add_argument_group("what stays BF16")
    g.add_argument("--keep", metavar="RULE", action="append", default=[],
                   help="keep modules matching RULE in BF16 (any mxmix rule kind; repeatable)")
    g.add_argument("--keep-first", metavar="N", type=int, default=0, help="keep the first N decoder layers")
    g.add_argument("--keep-last", metavar="N", type=int, default=0, help="keep the last N decoder layers")
    g.add_argument("--keep-from-file", metavar="FILE",
                   help="rules, one per line (# comments) or a JSON list (as `mxmix sensitivity --out` writes)")
    g.add_argument("--quantize-lm-head", action="store_true", help="also quantize the LM head (kept by default)")
    g.add_argument("--quantize-router", action="store_true",
                   help="also quantize MoE router gates (mlp.gate, router, ...; kept by default)")
    o = p.add_argument_group("output")
    o.add_argument("--dialect", choices=("sglang", "modelopt", "compressed-tensors"), default="sglang",
                   help="tensor names and config keys to write (default sglang: quant_method mxfp8, also read "
                        "by transformers)")
    o.add_argument("--skip-list-style", choices=("full", "prefix"), default="full",
                   help="full (default, engine-safe): one entry per kept Linear; prefix: 'model.layers.N.' "
                        "for whole kept layers, as found in the wild")
    o.add_argument("--scale-mode", choices=("rceil", "floor"), default="rceil",
                   help="E8M0 scale rounding: rceil (default; cuBLAS/TE/ModelOpt) or floor (OCP paper)")
    o.add_argument("--max-shard-size", metavar="SIZE", default="5GB", help="largest output shard (default 5GB)")
    o.add_argument("--device", default="cpu", help="where to run the codec: cpu (default) or cuda")
    o.add_argument("--allow-nonfinite", action="store_true",
                   help="encode NaN/Inf weights as NaN blocks instead of refusing the checkpoint")
    o.add_argument("--force", action="store_true", help="replace DST if it exists")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mxmix.checkpoint.convert import quantize_checkpoint

    summary = quantize_checkpoint(
        args.src, args.dst, keep=tuple(args.keep), keep_first=args.keep_first, keep_last=args.keep_last,
        keep_from_file=args.keep_from_file, scale_mode=args.scale_mode, dialect=args.dialect,
        skip_list_style=args.skip_list_style, device=args.device, max_shard_size=parse_size(args.max_shard_size),
        force=args.force, allow_nonfinite=args.allow_nonfinite, progress=False if args.no_progress else None,
        quantize_lm_head=args.quantize_lm_head, quantize_router=args.quantize_router)
    emit(args, summary.to_dict(), summary.format_text)
    return 0
