"""`mxmix eval fidelity` (KLD vs a reference, llama.cpp statistics) and `mxmix eval gsm8k` (OpenAI endpoint)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mxmix.cli.output import add_json_flag, emit
from mxmix.errors import MxmixError

HELP = "verify accuracy: fidelity against a reference, or GSM8K against a server"
FIDELITY_EPILOG = """\
Both models run over the same windows of real text (tokenised with the reference's tokenizer); the
second half of each window is scored, as llama.cpp's --kl-divergence does, and the same statistics are
printed: PPL of each and their ratio, mean KLD ± SE with percentiles, Δp of the correct token, and
"same top p". The reference's distributions are cached (top-K + tail, --cache-topk), so further
candidates against the same reference and text cost one model.

--as-engine NAME evaluates the candidate as that engine would run it: every module the engine's reading
of the skip list would quantize is quantized (online, MXFP8 of the stored BF16). Repeat it to compare
readings in one run (a paired KLD difference is printed).

default text: CPython's pydoc_data.topics (always present; nothing is downloaded).

examples:
  mxmix eval fidelity --reference ./SmolLM2 --candidate ./SmolLM2-mx
  mxmix eval fidelity --reference ./SmolLM2 --candidate ./SmolLM2-mx --as-engine sglang --as-engine sglang-23467
  mxmix eval fidelity --reference ./model --candidate ./model-mx --text wiki.test.raw --windows 64 --device cuda
"""
GSM8K_EPILOG = """\
Talks to any OpenAI-compatible /v1/completions endpoint (SGLang, vLLM, `mxmix serve`).
--protocol sglang (default) reproduces SGLang 0.5.23's completion-mode GSM8K exactly: few-shot = the
first --num-shots rows, items = the rows after them, temperature 0, stop ["Question", "Assistant:",
"<|separator|>"], last number in the output, numeric compare. --protocol lm-eval reproduces
lm-evaluation-harness's gsm8k task (strict and flexible extraction, string exact match; shots drawn with
seed 1234 from --fewshot-data, else from the first rows). The score comes with a 95 % Wilson interval;
--compare RESULT.json (a previous --out) gives the paired difference on the same questions with
McNemar's exact p.

examples:
  mxmix eval gsm8k --base-url http://127.0.0.1:30000 --data gsm8k/test.jsonl --out bf16.json
  mxmix eval gsm8k --base-url http://127.0.0.1:30001 --data gsm8k/test.jsonl --compare bf16.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="eval_command", metavar="WHAT", parser_class=type(p))
    sub.required = True

    f = sub.add_parser("fidelity", help="KL divergence and friends against a reference (llama.cpp statistics)",
                       description="KL divergence and friends of a candidate against a reference checkpoint.",
                       epilog=FIDELITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--reference", required=True, metavar="REF", help="reference checkpoint (usually BF16)")
    f.add_argument("--candidate", required=True, metavar="CAND", help="candidate checkpoint (MXFP8 or mixed)")
    f.add_argument("--text", metavar="FILE", action="append", default=[],
                   help="UTF-8 text file(s) to evaluate on (default: the embedded pydoc corpus)")
    f.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512, as llama.cpp)")
    f.add_argument("--windows", type=int, default=16,
                   help="how many windows, spread over the text (default 16; 0 = all)")
    f.add_argument("--as-engine", metavar="NAME", action="append", default=[],
                   help="evaluate the candidate as engine NAME would run it (repeatable; see `mxmix rules engines`)")
    f.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    f.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="activation dtype for both models (default bfloat16)")
    f.add_argument("--cache-dir", metavar="DIR", help="reference cache (default $MXMIX_CACHE/reference-logits)")
    f.add_argument("--no-cache", action="store_true", help="neither read nor write the reference cache")
    f.add_argument("--cache-topk", type=int, default=1024,
                   help="reference entries kept per token (default 1024, rest as one tail bucket; 0 = all "
                        "above the -16 cutoff: exact llama.cpp KLD, large)")
    f.add_argument("--out", metavar="FILE", help="also write the JSON report to FILE")
    f.add_argument("--brief", action="store_true", help="only the summary table, not llama.cpp's full blocks")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(f)
    f.set_defaults(func=run_fidelity)

    g = sub.add_parser("gsm8k", help="GSM8K against an OpenAI-compatible server (SGLang or lm-eval protocol)",
                       description="GSM8K accuracy of a served model.", epilog=GSM8K_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--base-url", required=True, metavar="URL", help="server root, e.g. http://127.0.0.1:8000")
    g.add_argument("--model", help="model name (default: the first id from /v1/models)")
    g.add_argument("--data", required=True, metavar="JSONL",
                   help="GSM8K-format JSONL (question/answer per line), e.g. GSM8K's test.jsonl")
    g.add_argument("--fewshot-data", metavar="JSONL", help="lm-eval protocol: the pool shots are drawn from")
    g.add_argument("--num-examples", type=int, default=200, help="questions to ask (default 200; 0 = all)")
    g.add_argument("--num-shots", type=int, default=5, help="few-shot examples (default 5)")
    g.add_argument("--num-threads", type=int, default=128, help="concurrent requests (default 128)")
    g.add_argument("--max-tokens", type=int, help="generation limit (default: 512 sglang, 256 lm-eval)")
    g.add_argument("--protocol", choices=("sglang", "lm-eval"), default="sglang")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    g.add_argument("--api-key", help="bearer token for the server, if it wants one")
    g.add_argument("--compare", metavar="RESULT.json", help="paired comparison against a previous --out")
    g.add_argument("--out", metavar="RESULT.json", help="write the full result (with every item)")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(g)
    g.set_defaults(func=run_gsm8k)


def run_fidelity(args: argparse.Namespace) -> int:
    from mxmix.eval.fidelity import FidelityConfig, evaluate, format_fidelity, write_json

    if args.windows < 0:
        raise MxmixError("--windows must be >= 0")
    if args.cache_topk < 0:
        raise MxmixError("--cache-topk must be >= 0")
    if args.out and Path(args.out).exists():
        raise MxmixError(f"{args.out} already exists; remove it first")
    from mxmix.rules import ENGINES

    for e in args.as_engine:
        if e not in ENGINES:
            raise MxmixError(f"--as-engine {e!r}: unknown engine (choose from {', '.join(ENGINES)})")
    cfg = FidelityConfig(reference=args.reference, candidate=args.candidate, texts=args.text, ctx=args.ctx,
                         windows=args.windows or None, engines=args.as_engine or [None], device=args.device,
                         dtype=args.dtype, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                         topk=args.cache_topk or None, progress=False if args.no_progress else None)
    doc = evaluate(cfg)
    if args.out:
        write_json(args.out, doc, force=False)
    emit(args, doc, lambda: format_fidelity(doc, full=not args.brief))
    return 0


def format_gsm8k(doc: dict, cmp: dict | None) -> str:
    lo, hi = doc["ci95"]
    lines = [f"GSM8K ({doc['protocol']} protocol) on {doc['model']} at {doc['base_url']}",
             f"data {doc['data']['path']}: {doc['n']} questions, {doc['num_shots']} shots, "
             f"max_tokens {doc['max_tokens']}",
             f"score {doc['score']:.4f} ({doc['correct']}/{doc['n']}), 95% Wilson interval "
             f"[{lo:.4f}, {hi:.4f}], SE {doc['se']:.4f}"]
    if doc["protocol"] == "lm-eval":
        s = doc["strict_match"]
        lines.append(f"strict-match {s['score']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]; "
                     f"flexible-extract {doc['score']:.4f}")
    if doc["errors"]:
        lines.append(f"{doc['errors']} request(s) failed or were refused and were scored 0")
    lines.append(f"wall {doc['wall_s']:.1f} s, mean latency {doc['latency_mean_s']:.2f} s")
    if cmp:
        lines += ["", f"paired comparison on {cmp['n']} common questions (baseline = --compare file):",
                  f"  baseline {cmp['baseline_score']:.4f}, this run {cmp['current_score']:.4f}",
                  f"  baseline right / this wrong: {cmp['baseline_only']}; the reverse: {cmp['current_only']}",
                  f"  difference {cmp['difference']:+.4f} ± {cmp['se']:.4f} (95% [{cmp['ci95'][0]:+.4f}, "
                  f"{cmp['ci95'][1]:+.4f}]), McNemar exact p = {cmp['mcnemar_exact_p']:.4g}"]
    return "\n".join(lines)


def run_gsm8k(args: argparse.Namespace) -> int:
    from mxmix.eval.gsm8k import RunConfig, compare_runs, run_gsm8k
    from mxmix.fsutil import atomic_output_file, refuse_existing

    if args.num_threads < 1:
        raise MxmixError("--num-threads must be >= 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise MxmixError("--max-tokens must be >= 1")
    if args.out:
        refuse_existing(Path(args.out), args.force)
    baseline = None
    if args.compare:
        try:
            baseline = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MxmixError(f"--compare {args.compare}: no such file") from None
        except (OSError, ValueError) as exc:
            raise MxmixError(f"--compare {args.compare}: cannot read JSON ({exc})") from None
    cfg = RunConfig(base_url=args.base_url, data=args.data, model=args.model, protocol=args.protocol,
                    num_examples=args.num_examples or None, num_shots=args.num_shots,
                    num_threads=args.num_threads, max_tokens=args.max_tokens, fewshot_data=args.fewshot_data,
                    api_key=args.api_key, timeout=args.timeout)
    doc = run_gsm8k(cfg, progress=False if args.no_progress else None)
    cmp = compare_runs(baseline, doc) if baseline is not None else None
    if cmp:
        doc["compare"] = {"file": args.compare, **cmp}
    if args.out:
        with atomic_output_file(Path(args.out), force=args.force) as tmp:
            tmp.write_text(json.dumps(doc, indent=2))
    emit(args, {k: v for k, v in doc.items() if k != "items"} | {"out": args.out},
         lambda: format_gsm8k(doc, cmp))
    return 0
