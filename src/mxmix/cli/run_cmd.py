"""`mxmix run CHECKPOINT --prompt TEXT`: load a mixed MXFP8/BF16 checkpoint and generate greedily."""

from __future__ import annotations

import argparse
import math
import sys
import time

from mxmix.cli.output import add_json_flag, emit
from mxmix.errors import MxmixError

HELP = "generate text from a mixed MXFP8/BF16 checkpoint (weights stay MXFP8) and report tokens/s"
EPILOG = """\
The checkpoint is loaded with mxmix.load: MXFP8 Linear layers stay compressed (E4M3 + E8M0 scales) and
run on Triton kernels on CUDA; on the CPU they are dequantized exactly for each matmul (with the weight
cache, the default there, once). Decoding is greedy with a static KV cache; on CUDA the one-token step
is replayed as a CUDA graph. tokens/s counts steady-state decode steps (after the first token).

examples:
  mxmix run ./SmolLM2-mx --prompt "The capital of France is" --max-new-tokens 20
  mxmix run ./model-mx --prompt "Write a haiku" --chat --device cuda --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help=HELP, description=HELP + ".", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (config, safetensors, tokenizer)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--no-cuda-graph", action="store_true", help="decode eagerly on CUDA (slower; for debugging)")
    p.add_argument("--no-weight-cache", action="store_true",
                   help="on the CPU, dequantize MXFP8 weights for every matmul instead of once (less memory)")
    p.add_argument("--ignore-eos", action="store_true", help="always generate N tokens")
    add_json_flag(p)
    p.set_defaults(func=run)


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # missing / unreadable tokenizer files
        raise MxmixError(f"{path}: no usable tokenizer in the checkpoint directory ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else 'unknown error'})") from None


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise MxmixError("--max-new-tokens must be at least 1")
    import torch

    from mxmix.checkpoint.layout import Checkpoint
    from mxmix.runtime.generate import greedy_generate
    from mxmix.runtime.load import load
    from mxmix.runtime.mxfp8_linear import set_cpu_weight_cache

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    Checkpoint.open(args.checkpoint, require_config=True)  # clear errors before the tokenizer's
    tokenizer = _load_tokenizer(args.checkpoint)
    t0 = time.perf_counter()
    model = load(args.checkpoint, device=device, progress=not args.json and sys.stderr.isatty())
    load_s = time.perf_counter() - t0
    if device == "cpu" and not args.no_weight_cache:
        set_cpu_weight_cache(model, True)
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise MxmixError(f"{args.checkpoint}: the tokenizer has no chat template (drop --chat)")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise MxmixError("the prompt encodes to no tokens")
    ids = ids.to(device)
    t1 = time.perf_counter()
    res = greedy_generate(model, ids, args.max_new_tokens, use_cuda_graph=not args.no_cuda_graph,
                          stop_at_eos=not args.ignore_eos)
    total_s = time.perf_counter() - t1
    text = tokenizer.decode(res.tokens, skip_special_tokens=True)
    report = model.mxmix_load_report
    tps = res.decode_tokens_per_s
    data = {
        "checkpoint": args.checkpoint, "device": device, "prompt": args.prompt, "text": text,
        "prompt_tokens": int(ids.shape[1]), "new_tokens": len(res.tokens),
        "decode_tokens_per_s": None if math.isnan(tps) else tps,
        "tokens_per_s_overall": len(res.tokens) / total_s if total_s > 0 else None,
        "time_to_first_token_s": res.prefill_s, "load_s": load_s, "decode_mode": res.mode,
        "notes": res.notes, **{f"model_{k}": v for k, v in report.to_dict().items() if k != "checkpoint"},
    }
    if device == "cuda":
        data["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()

    def text_out() -> str:
        speed = f"{tps:.1f} tok/s decode" if not math.isnan(tps) else "n/a tok/s decode (too few tokens)"
        lines = [args.prompt + text, "",
                 f"[{len(res.tokens)} tokens, {speed}, {data['tokens_per_s_overall']:.1f} tok/s overall, "
                 f"first token {res.prefill_s * 1e3:.0f} ms, {device} ({res.mode}); "
                 f"{report.to_dict()['mxfp8_modules']} MXFP8 + {report.to_dict()['bf16_linear_modules']} BF16 "
                 f"Linear modules, weights {report.weight_bytes / 1e9:.2f} GB, loaded in {load_s:.1f} s]"]
        lines += [f"note: {n}" for n in res.notes]
        return "\n".join(lines)

    emit(args, data, text_out)
    return 0
