"""Benchmark (not a test): inspect and audit a 1,000-shard, ~100,000-tensor checkpoint from headers alone.

Goal (issue 4): inspect + audit in under 1 s, at least 10x faster than opening every shard with
``safetensors.safe_open`` and asking each tensor its dtype and shape (the information inspect needs),
measured in the same run.

The checkpoint is a DeepSeek-sized MoE layout with tiny tensors (67 layers x 256 experts x 3
projections, MXFP8 with E8M0 scales, the last 4 layers BF16 and listed by full name in both skip
keys), written directly as raw safetensors files so that it builds in about a second.

"inspect + audit on one open" shares the per-checkpoint work (Linear modules, module views, runtime
paths are computed once per opened ``Checkpoint``); the stage breakdown times each stage built anew.

    python benchmarks/bench_inspect.py [--dir DIR] [--repeat 3] [--engines all|current] [--breakdown] [--profile]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import struct
import tempfile
import time
from pathlib import Path

N, K = 16, 32          # every Linear weight is [16, 32]: one 32-block per row


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write_shard(path: Path, tensors: list[tuple[str, str, list[int], int]]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(bytes(offset))


def build(dest: Path, *, layers: int = 67, experts: int = 256, shards: int = 1000, bf16_last: int = 4) -> int:
    """Write the benchmark checkpoint into ``dest``; returns the number of tensors."""
    dest.mkdir(parents=True, exist_ok=True)
    tensors: list[tuple[str, str, list[int], int]] = []
    keep: list[str] = ["lm_head"]

    def linear(path: str, fp8: bool) -> None:
        if fp8:
            tensors.append((f"{path}.weight", "F8_E4M3", [N, K], N * K))
            tensors.append((f"{path}.weight_scale_inv", "U8", [N, K // 32], N * K // 32))
        else:
            tensors.append((f"{path}.weight", "BF16", [N, K], 2 * N * K))
            keep.append(path)

    tensors.append(("model.embed_tokens.weight", "BF16", [N, K], 2 * N * K))
    for layer in range(layers):
        fp8 = layer < layers - bf16_last
        p = f"model.layers.{layer}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors.append((f"{p}.{norm}.weight", "BF16", [K], 2 * K))
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            linear(f"{p}.self_attn.{proj}", fp8)
        tensors.append((f"{p}.mlp.gate.weight", "BF16", [experts, K], 2 * experts * K))
        keep.append(f"{p}.mlp.gate")
        for e in range(experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                linear(f"{p}.mlp.experts.{e}.{proj}", fp8)
    tensors.append(("model.norm.weight", "BF16", [K], 2 * K))
    tensors.append(("lm_head.weight", "BF16", [N, K], 2 * N * K))
    per = -(-len(tensors) // shards)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        part = tensors[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        _write_shard(dest / fname, part)
        weight_map.update((t[0], fname) for t in part)
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": layers,
        "hidden_size": K, "num_experts": experts, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "mxfp8", "fmt": "e4m3", "weight_block_size": [1, 32],
                                "scale_fmt": "ue8m0", "activation_scheme": "dynamic",
                                "ignored_layers": keep, "modules_to_not_convert": keep},
    }
    (dest / "config.json").write_text(json.dumps(config))
    return len(tensors)


def baseline(ckpt: Path) -> int:
    """What a naive tool does: safe_open every shard and ask every tensor its dtype and shape."""
    from safetensors import safe_open

    n = 0
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                s = h.get_slice(name)
                s.get_dtype()
                s.get_shape()
                n += 1
    return n


def best_of(fn, repeat: int) -> tuple[float, object]:
    """Best process CPU time of ``repeat`` runs (CPU time limits, not removes, the effect of other load
    on a shared machine; everything measured here is single-threaded)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def breakdown(ckpt: Path, engines: list[str] | None, repeat: int) -> None:
    """CPU time of each stage, to show where the time goes (and the pure-Python JSON floor)."""
    from mxmix.audit.config_vs_tensors import check_config_vs_tensors
    from mxmix.audit.engines import check_engines
    from mxmix.audit.structure import check_structure
    from mxmix.checkpoint.inspect import inspect_checkpoint, module_views
    from mxmix.checkpoint.layout import Checkpoint
    from mxmix.checkpoint.modules import linear_modules
    from mxmix.rules import ENGINES
    from mxmix.rules.plan import plan_checkpoint

    raws = []
    for f in sorted(ckpt.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            raws.append(fh.read(n))
    c = Checkpoint.open(ckpt)
    judged = engines or [e for e in ENGINES if e != "canonical"]
    plan = plan_checkpoint(c, ["canonical", *judged])
    views = module_views(c, [r.module for r in plan.rows])
    canonical = {r.module.path: r.decisions["canonical"] for r in plan.rows}

    def _without_gc(fn):
        # the header reader parses with the cyclic GC paused; with it on, every young collection here
        # would also walk the plan and views built above (millions of objects), which is not parsing
        gc.disable()
        try:
            return fn()
        finally:
            gc.enable()

    def fresh(fn):
        # linear_modules / module_views are cached per opened checkpoint: time them built anew
        def run() -> object:
            c.forget_derived()
            return fn()
        return run

    stages = [
        ("json.loads of every header (CPython floor)", lambda: _without_gc(lambda: [json.loads(r) for r in raws])),
        ("Checkpoint.open (read + validate headers)", lambda: Checkpoint.open(ckpt)),
        ("linear_modules (rules helper)", fresh(lambda: linear_modules(c))),
        ("module_views + inspect summary", fresh(lambda: inspect_checkpoint(c))),
        (f"plan_checkpoint, {len(judged) + 1} readings (rules helper)",
         fresh(lambda: plan_checkpoint(c, ["canonical", *judged]))),
        ("audit checks: config + engines + structure",
         lambda: (check_config_vs_tensors(c, views, canonical, "sglang"), check_engines(plan, judged),
                  check_structure(views))),
    ]
    print("stage breakdown (best-of CPU time):")
    for label, fn in stages:
        t, _ = best_of(fn, repeat)
        print(f"  {label:48s} {t * 1000:8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="build (or reuse) the checkpoint here instead of a temp dir")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engines", choices=("all", "current"), default="all",
                    help="audit with every engine reading (default) or only sglang, vllm, transformers")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one inspect+audit")
    ap.add_argument("--breakdown", action="store_true", help="time each stage separately")
    args = ap.parse_args()

    from mxmix.audit import audit_checkpoint
    from mxmix.checkpoint.inspect import inspect_checkpoint
    from mxmix.checkpoint.layout import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.dir or Path(tmp) / "big"
        t0 = time.perf_counter()
        if not (ckpt / "config.json").exists():
            n = build(ckpt)
            print(f"built {n} tensors in 1000 shards in {time.perf_counter() - t0:.2f} s")
        engines = None if args.engines == "all" else ["sglang", "vllm", "transformers"]

        def inspect() -> object:
            return inspect_checkpoint(Checkpoint.open(ckpt))

        def audit() -> object:
            return audit_checkpoint(ckpt, engines=engines)

        def both() -> object:
            c = Checkpoint.open(ckpt)
            inspect_checkpoint(c)
            return audit_checkpoint(c, engines=engines)

        base_t, n = best_of(lambda: baseline(ckpt), args.repeat)
        insp_t, summary = best_of(inspect, args.repeat)
        audit_t, result = best_of(audit, args.repeat)
        both_t, _ = best_of(both, args.repeat)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"CPU: {cpu_name()} ({os.cpu_count()} cores, load average {load:.1f}); "
              f"Python {platform.python_version()}; times are best-of-{args.repeat} process CPU time")
        print(f"tensors: {n}; Linear modules: {len(summary.modules)}; engines judged: {len(result.engines)}; "
              f"findings: {len(result.findings)} (exit {result.exit_code})")
        print(f"baseline safe_open + get_slice dtype/shape : {base_t * 1000:8.1f} ms")
        print(f"mxmix inspect (open + summary)              : {insp_t * 1000:8.1f} ms  ratio {base_t / insp_t:5.1f}x")
        print(f"mxmix audit (open + all checks)             : {audit_t * 1000:8.1f} ms  ratio {base_t / audit_t:5.1f}x")
        print(f"inspect + audit on one open                 : {both_t * 1000:8.1f} ms  ratio {base_t / both_t:5.1f}x")
        print(f"goal: inspect + audit < 1000 ms: {'met' if both_t < 1 else 'NOT met'}; "
              f">= 10x faster than safe_open: {'met' if base_t / both_t >= 10 else 'NOT met'}")
        if args.breakdown:
            breakdown(ckpt, engines, args.repeat)
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(both)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
