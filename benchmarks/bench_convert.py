"""CPU benchmark for `mxmix quantize` (streaming converter) on a synthetic dense checkpoint.

No speed goal is set for the converter (the codec's ≥ 1 GB/s is benchmarked in bench_codec.py); this
shows where conversion time goes. Baselines measured in the same run:

* ``copy``: ``shutil.copyfile`` of the safetensors files — the I/O floor of any converter;
* ``naive``: ``safetensors.torch.load_file`` of the whole checkpoint, ``mxmix.mx.quantize`` per weight,
  ``save_file`` of the result dict — the obvious in-memory converter (same codec, no streaming).

Each number is the best of several repetitions (other processes may share the CPU).

    python3 benchmarks/bench_convert.py [--layers 4 --hidden 2048 --intermediate 5632] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def naive_convert(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    import mxmix.mx as mx

    tensors = load_file(str(src / "model.safetensors"))
    out = {}
    for name, t in tensors.items():
        if name.endswith("_proj.weight"):
            q, s = mx.quantize(t)
            out[name], out[name.replace(".weight", ".weight_scale_inv")] = q, s
        else:
            out[name] = t
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from mxmix.checkpoint.convert import quantize_checkpoint
    from mxmix.example.synthetic import SyntheticSpec, write_synthetic_checkpoint

    with tempfile.TemporaryDirectory(prefix="mxmix-bench-") as tmp:
        root = Path(tmp)
        spec = SyntheticSpec(layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                             heads=16, kv_heads=8, vocab=32000)
        src = write_synthetic_checkpoint(root / "src", spec)
        nbytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        counter = iter(range(10**6))

        def fresh() -> Path:
            return root / f"out-{next(counter)}"

        def copy() -> None:
            d = fresh()
            d.mkdir()
            for p in src.glob("*.safetensors"):
                shutil.copyfile(p, d / p.name)

        results = {
            "copy": best_seconds(copy, args.repeats),
            "naive": best_seconds(lambda: naive_convert(src, fresh()), args.repeats),
            "mxmix": best_seconds(lambda: quantize_checkpoint(src, fresh(), progress=False), args.repeats),
        }
    gbps = {k: nbytes / v / 1e9 for k, v in results.items()}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "threads": torch.get_num_threads(), "checkpoint_bytes": nbytes,
        "seconds": {k: round(v, 4) for k, v in results.items()}, "GB_per_s": {k: round(v, 3) for k, v in gbps.items()},
        "mxmix_vs_copy": round(results["copy"] / results["mxmix"], 3),
        "mxmix_vs_naive": round(results["naive"] / results["mxmix"], 3),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['machine']}; checkpoint {nbytes / 1e6:.0f} MB (bf16)")
    for k in results:
        print(f"  {k:6s} {results[k]:7.3f} s  {gbps[k]:6.2f} GB/s")
    print(f"  mxmix speed = {report['mxmix_vs_copy']:.2f}x of a plain file copy, "
          f"{report['mxmix_vs_naive']:.2f}x the in-memory converter")


if __name__ == "__main__":
    main()
