"""MXFP8 weight-only matmul kernels vs cuBLAS BF16 (torch.matmul), measured in the same run.

    PYTHONPATH=src python benchmarks/bench_kernels.py                 # the issue's table (dispatch path)
    PYTHONPATH=src python benchmarks/bench_kernels.py --sweep-decode  # tune decode launch configs
    PYTHONPATH=src python benchmarks/bench_kernels.py --sweep-prefill # tune prefill configs / fused vs cuBLAS
    PYTHONPATH=src python benchmarks/bench_kernels.py --sweep-convert # E4M3 conversion variants, M <= 16,
                                                                      # plus Llama-8B layer shapes at M = 1
    PYTHONPATH=src python benchmarks/bench_kernels.py --sass          # no GPU needed: compile the decode
                                   # kernels for sm_90 and print the main loop's SASS instruction counts

Timing (default ``--timer graph``): the calls over all weight copies (enough copies to exceed L2 several
times, so every weight comes from HBM) are captured in one CUDA graph, replayed 10 times, and the median
replay time is divided by the number of calls - the way a CUDA-graph decoder runs these kernels, without
Python launch overhead (at 15-40 us per kernel, eager launches are host-bound on some hosts). The table
(and ``--prefill-breakdown``) replay the BF16 and MXFP8 graphs alternately (`bench_interleaved`), after
2 s of warm-up GEMMs: under long GEMMs an H200 heats up and slows by up to 10-20 %, so timing one after
the other favoured whichever came first (BENCHMARKS.md, round 5).
``--timer do_bench``: triton.testing.do_bench median with its L2 flush before every eager call.
Speedup = BF16 time / MXFP8 time.
Targets (issue 5): decode (M <= 16) >= 1.75x, prefill (M = 4096) >= 0.9x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import product

import torch

SHAPES = [(4096, 4096), (8192, 8192), (28672, 8192), (8192, 28672)]  # (N, K)
# one decoder layer of Llama-3-8B with q/k/v and gate/up fused (as mxmix.runtime.fusion serves them), and lm_head
LLAMA_LAYERS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
                "lm_head": (128256, 4096)}
MS = [1, 2, 4, 8, 16, 32, 64, 128, 512, 4096]
ROTATE_BYTES = 400 * 2**20   # rotate through enough copies to exceed the 50 MB L2 several times


def make_weights(n: int, k: int, copies: int):
    from mxmix.mx import quantize

    sets = []
    for i in range(copies):
        g = torch.Generator(device="cuda").manual_seed(1000 + i)
        w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
        q, s = quantize(w, backend="torch")
        sets.append((w, q, s))
    return sets


def copies_for(n: int, k: int) -> int:
    return max(1, min(8, -(-ROTATE_BYTES // (2 * n * k))))


class Rotor:
    """Calls fn on the next input set each time (defeats L2 reuse across timed calls)."""

    def __init__(self, sets, fn):
        self.sets, self.fn, self.i = sets, fn, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.fn(*self.sets[self.i])


TIMER = "graph"


def bench(fn, warmup: int = 10, rep: int = 40) -> float:
    """Median µs per call of ``fn`` (a Rotor over weight copies), by CUDA-graph replay or do_bench."""
    import triton

    fn()  # compile outside the timing (do_bench sizes its loop from the first calls)
    torch.cuda.synchronize()
    if TIMER == "graph" and isinstance(fn, Rotor):
        try:
            return bench_graph(fn)
        except Exception as exc:  # capture refused: fall back to eager timing, and say so
            print(f"  graph timing failed ({type(exc).__name__}: {str(exc)[:80]}); using do_bench", flush=True)
            torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")) * 1e3  # µs


def _capture(rotor: Rotor, target_us: float = 1000.0):
    """One pass = one call per weight copy; a CUDA graph of enough passes for ~1 ms, and its call count."""
    def one_pass() -> None:
        for args in rotor.sets:
            rotor.fn(*args)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs recommends
        one_pass()
    torch.cuda.current_stream().wait_stream(side)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    one_pass()
    end.record()
    end.synchronize()
    passes = max(1, min(64, int(target_us / max(start.elapsed_time(end) * 1e3, 1.0)) + 1))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(passes):
            one_pass()
    graph.replay()
    return graph, passes * len(rotor.sets)


def bench_graph(rotor: Rotor, target_us: float = 1000.0, replays: int = 10) -> float:
    """Median µs per call over graph replays (`_capture`)."""
    return bench_interleaved([rotor], target_us, replays)[0]


def bench_interleaved(rotors: list[Rotor], target_us: float = 1000.0, replays: int = 10) -> list[float]:
    """Median µs per call of each rotor, their graph replays alternating (A B A B ...): a GPU whose clock
    drifts during the run (it heats up under long GEMMs and slows at its power limit) then weighs on
    every rotor alike instead of on whichever is timed last."""
    for rotor in rotors:
        rotor.fn(*rotor.sets[0])  # compile outside the capture
    torch.cuda.synchronize()
    graphs = [_capture(r, target_us) for r in rotors]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: list[list[float]] = [[] for _ in rotors]
    for _ in range(replays):
        for (graph, calls), ts in zip(graphs, times):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            ts.append(start.elapsed_time(end) * 1e3 / calls)
    del graphs
    return [sorted(ts)[len(ts) // 2] for ts in times]


def warm_up_gpu(seconds: float = 2.0) -> None:
    """Run BF16 GEMMs for a while first: an idle GPU starts at its lowest clocks, and the first rows timed
    would otherwise pay for the ramp (H200, 2026-11-28: 4096x4096 M = 1 12.5 us first vs 9.3-10.0 us)."""
    a, b = (torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    c = torch.empty_like(a)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(20):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize()


def bench_pair(rotors: list[Rotor]) -> list[float]:
    """`bench_interleaved` under the graph timer; each rotor on its own otherwise (or if capture fails)."""
    if TIMER == "graph":
        try:
            return bench_interleaved(rotors)
        except Exception as exc:
            print(f"  graph timing failed ({type(exc).__name__}: {str(exc)[:80]}); timing one by one", flush=True)
            torch.cuda.synchronize()
    return [bench(r) for r in rotors]


def bench_decode_config(sets, xs, cfg, rep: int, tiled: bool = False) -> float | None:
    """µs per call of the decode kernel with launch configuration ``cfg`` over the weight copies, or None
    (after saying so) for a configuration that does not compile here (e.g. too many resources)."""
    from mxmix.runtime.kernels.triton_decode import mxfp8_decode_matmul

    try:
        return bench(Rotor([(xs[i % 2], q, s) for i, (_, q, s) in enumerate(sets)],
                           lambda x, q, s: mxfp8_decode_matmul(x, q, s, config=cfg, tiled=tiled)),
                     warmup=5, rep=rep)
    except Exception as exc:
        print(f"  {cfg.label()}: failed {type(exc).__name__}: {str(exc)[:100]}", flush=True)
        return None


def cases(shapes, ms):
    """(n, k, m, weight copies, two activations, cuBLAS BF16 µs) for every shape and M: the scaffold of
    every table and sweep here (weights built once per shape and freed after it)."""
    for n, k in shapes:
        sets = make_weights(n, k, copies_for(n, k))
        for m in ms:
            xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
            bf16 = bench(Rotor([(xs[i % 2], w) for i, (w, _, _) in enumerate(sets)],
                               lambda x, w: torch.matmul(x, w.t())))
            yield n, k, m, sets, xs, bf16
        del sets
        torch.cuda.empty_cache()


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(y).any():
        return float("nan")
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def device_name() -> str:
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.multi_processor_count} SMs), torch {torch.__version__}"


def run_table(shapes, ms, args) -> list[dict]:
    """The issue's table on the weight layout the runtime uses (`tiled_layout_pays`: tiled on Hopper), with the
    row-major layout timed in the same interleaved group where they differ."""
    from mxmix.runtime import tiles
    from mxmix.runtime.kernels import kernel_path, mxfp8_matmul, tiled_layout_pays

    rows = []
    tiled_sets: dict[tuple[int, int], list] = {}
    for n, k, m, sets, xs, bf16_alone in cases(shapes, ms):
        tiled = tiled_layout_pays(sets[0][1], sets[0][2], torch.bfloat16)
        if tiled and (n, k) not in tiled_sets:
            tiled_sets.clear()
            tiled_sets[(n, k)] = [tiles.tile(q, s) for _, q, s in sets]
        # the table's group is timed interleaved (`bench_interleaved`); the BF16 time of `cases`, taken alone
        # before it, is kept to show the clock drift that interleaving cancels
        rotors = [Rotor([(xs[i % 2], w) for i, (w, _, _) in enumerate(sets)], lambda x, w: torch.matmul(x, w.t())),
                  Rotor([(xs[i % 2], q, s) for i, (_, q, s) in enumerate(sets)],
                        lambda x, q, s: mxfp8_matmul(x, q, s))]
        if tiled:
            rotors.append(Rotor([(xs[i % 2], q, s) for i, (q, s) in enumerate(tiled_sets[(n, k)])],
                                lambda x, q, s: mxfp8_matmul(x, q, s, tiled=True)))
        times = bench_pair(rotors)
        bf16, row_major = times[0], times[1]
        mx = times[-1]
        _, q, s = sets[0]
        from mxmix.mx import dequantize

        ref = xs[0].double() @ dequantize(q, s, torch.float32, backend="torch").double().t()
        err = rel_err(mxfp8_matmul(xs[0], *(tiled_sets[(n, k)][0] if tiled else (q, s)), tiled=tiled), ref)
        bf_err = rel_err(torch.matmul(xs[0], dequantize(q, s, torch.bfloat16, backend="torch").t()), ref)
        row = {"n": n, "k": k, "m": m, "path": kernel_path(xs[0], q, s), "bf16_us": bf16, "mxfp8_us": mx,
               "layout": "tiled" if tiled else "row-major", "row_major_us": row_major,
               "bf16_alone_first_us": bf16_alone,
               "speedup": bf16 / mx, "rel_err": err, "bf16_rel_err": bf_err,
               "mxfp8_tb_s": (n * k * 1.03125 + 2 * m * (n + k)) / (mx * 1e-6) / 1e12,
               "bf16_tb_s": (n * k * 2 + 2 * m * (n + k)) / (bf16 * 1e-6) / 1e12}
        rows.append(row)
        print(f"{n:>6}x{k:<6} M={m:<5} {row['path']:<7} bf16 {bf16:9.1f} us  mxfp8 {mx:9.1f} us  "
              f"x{row['speedup']:.2f}  err {err:.1e} (bf16 matmul {bf_err:.1e}; bf16 timed alone first "
              f"{bf16_alone:.1f} us; {row['layout']}" + (f", row-major {row_major:.1f} us" if tiled else "") + ")",
              flush=True)
    return rows


def sweep_decode(shapes, ms, args) -> list[dict]:
    from mxmix.runtime.kernels.triton_decode import (
        DecodeConfig,
        _split_for,
        default_decode_config,
    )

    fma_cfgs = [DecodeConfig("fma", 16, bk, sp, 4, 3, c) for bk, sp, c in product([256, 512], [1, 2, 4], ["cvt", "prmt"])]

    def mma_cfgs(n: int, k: int) -> list:
        """tile x warps/stages x split (the heuristic's split for the tile, halved and doubled), prmt conversion"""
        out = []
        for bn, bk, (w, st) in product([32, 64, 128], [128, 256], [(4, 3), (4, 4), (8, 3), (8, 4)]):
            base = _split_for(-(-n // bn), k, bk, 4 * 132, 1024)
            for sp in sorted({max(1, base // 2), base, base * 2}):
                if k // sp >= bk:
                    out.append(DecodeConfig("mma", bn, bk, sp, w, st, args.mma_convert or "prmt"))
        return out

    rows = []
    for n, k, m, sets, xs, bf16 in cases(shapes, ms):
        default = default_decode_config(m, n, k)
        cfgs = [default] + (fma_cfgs if m <= 2 else []) + mma_cfgs(n, k)
        best = None
        for cfg in cfgs:
            t = bench_decode_config(sets, xs, cfg, rep=15)
            if t is None:
                continue
            rows.append({"n": n, "k": k, "m": m, "config": cfg.label(), "kind": cfg.kind, "us": t,
                         "bf16_us": bf16, "speedup": bf16 / t, "default": cfg is default})
            if best is None or t < best[0]:
                best = (t, cfg)
        if best:
            d = next(r for r in rows if r["n"] == n and r["k"] == k and r["m"] == m and r["default"])
            print(f"{n:>6}x{k:<6} M={m:<3} bf16 {bf16:7.1f} us  default {d['us']:7.1f} x{d['speedup']:.2f}  "
                  f"best {best[0]:7.1f} us x{bf16 / best[0]:.2f} {best[1].label()}", flush=True)
            for kind in ("fma", "mma"):
                top = sorted((r for r in rows if r["n"] == n and r["k"] == k and r["m"] == m
                              and r["kind"] == kind), key=lambda r: r["us"])[:3]
                if top:
                    print(f"      {kind}: " + "; ".join(f"{r['config']} {r['us']:.1f}" for r in top), flush=True)
    return rows


# (kind, block_n, block_k, num_stages, num_warps) of the Gluon kernels that fit: swab = loads at each K step
# (num_stages 1) or one tile ahead in registers (2), swabcp = cp.async shared-memory ring of num_stages tiles
SWAB_SWEEP = [("swab", 64, 128, 2, 4), ("swab", 64, 256, 2, 4), ("swab", 128, 128, 2, 4), ("swab", 128, 256, 2, 4),
              ("swabcp", 64, 128, 3, 4), ("swabcp", 64, 128, 4, 4), ("swabcp", 64, 128, 6, 4),
              ("swabcp", 64, 256, 3, 4), ("swabcp", 64, 256, 4, 4), ("swabcp", 128, 128, 3, 4),
              ("swabcp", 128, 128, 4, 4), ("swabcp", 128, 256, 2, 4), ("swabcp", 128, 256, 3, 4),
              ("swabcp", 128, 256, 3, 8)]


# the wgmma kernel (`gluon_wgmma`): (kind, block_n, block_k, stages, warps); 128-row tiles (two warpgroups)
# share one x tile, for the M where the x tile is large
WGMMA_SWEEP = [("wgmma", 64, 128, 2, 4), ("wgmma", 64, 128, 3, 4), ("wgmma", 64, 128, 4, 4),
               ("wgmma", 64, 256, 2, 4), ("wgmma", 64, 256, 3, 4)]
WGMMA_SWEEP_WIDE = [("wgmma", 64, 128, 2, 4), ("wgmma", 128, 128, 2, 8), ("wgmma", 128, 128, 3, 8),
                    ("wgmma", 128, 256, 2, 8)]


# deep rings: a program's whole K range in flight at once (few K steps per program at M <= 16)
WGMMA_SWEEP_DEEP = [("wgmma", 64, 256, 2, 4), ("wgmma", 64, 256, 4, 4), ("wgmma", 64, 256, 6, 4),
                    ("wgmma", 64, 256, 8, 4), ("wgmma", 64, 128, 8, 4), ("wgmma", 64, 128, 12, 4),
                    ("wgmma", 128, 256, 4, 8), ("wgmma", 128, 256, 6, 8), ("wgmma", 128, 128, 8, 8)]


def wgmma_variants(m: int) -> list[tuple]:
    return WGMMA_SWEEP_WIDE if m >= 128 else WGMMA_SWEEP_DEEP if DEEP else WGMMA_SWEEP


DEEP = False
DATA_VARIANTS = False
TILED = False


def sweep_swab(shapes, ms, args, variants=None) -> list[dict]:
    """The Gluon kernels (`gluon_decode`, or ``variants``) over tiles and splits, against the Triton kernels'
    heuristic pick, the shipped dispatch (`mxfp8_matmul`) and cuBLAS BF16, in the same run."""
    from mxmix.runtime import tiles
    from mxmix.runtime.kernels import kernel_path, mxfp8_matmul
    from mxmix.runtime.kernels.triton_decode import DecodeConfig, _sm_count, default_decode_config

    rows = []
    tiled_for: dict[tuple[int, int], list] = {}
    for n, k, m, sets, xs, bf16 in cases(shapes, ms):
        sms = _sm_count(xs[0].device)
        if TILED:  # --tiled: every variant (wgmma only) and the shipped path on the tiled layout
            if (n, k) not in tiled_for:
                tiled_for.clear()
                tiled_for[(n, k)] = [(w, *tiles.tile(q, s)) for w, q, s in sets]
            sets = tiled_for[(n, k)]
        shipped = bench(Rotor([(xs[i % 2], q, s) for i, (_, q, s) in enumerate(sets)],
                              lambda x, q, s: mxfp8_matmul(x, q, s, tiled=TILED)), warmup=5, rep=15)
        path = kernel_path(xs[0], sets[0][1], sets[0][2])
        rows.append({"n": n, "k": k, "m": m, "config": f"shipped ({path})", "kind": path, "us": shipped,
                     "bf16_us": bf16, "speedup": bf16 / shipped, "old_default": False, "default": False})
        old = default_decode_config(m, n, k, sms, swab=False)
        new = default_decode_config(m, n, k, sms)
        # the Triton decode kernels are built for M <= 16, the mma.sync Gluon kernel for M <= 64
        table = variants(m) if callable(variants) else (variants or SWAB_SWEEP)
        splits = (1, 2, 4) if m >= 128 else (1, 2, 4, 8, 16)
        cfgs = [c for c, top in ((old, 16), (new, 128)) if m <= top] + [DecodeConfig(kind, bn, bk, sp, w, st, "fold")
                                                                          for kind, bn, bk, st, w in table
                                                                          for sp in splits if k // sp >= bk]
        if TILED:
            cfgs = [c for c in cfgs if c.kind == "wgmma"]
        seen, times = [], {}
        for cfg in cfgs:
            if cfg in seen:
                continue
            seen.append(cfg)
            t = bench_decode_config(sets, xs, cfg, rep=15, tiled=TILED)
            if t is not None:
                times[cfg] = t
                rows.append({"n": n, "k": k, "m": m, "config": cfg.label(), "kind": cfg.kind, "us": t,
                             "bf16_us": bf16, "speedup": bf16 / t, "old_default": cfg == old,
                             "default": cfg == new})
        best = min(times, key=times.get)
        top = sorted(times, key=times.get)[:3]
        print(f"{n:>6}x{k:<6} M={m:<3} bf16 {bf16:7.1f} us  shipped {shipped:7.1f} x{bf16 / shipped:.2f} ({path})  "
              f"old {times.get(old, float('nan')):7.1f} "
              f"x{bf16 / times.get(old, float('nan')):.2f}  new {times.get(new, float('nan')):7.1f} "
              f"x{bf16 / times.get(new, float('nan')):.2f}  best x{bf16 / times[best]:.2f} {best.label()}  | "
              + "; ".join(f"{c.label()} {times[c]:.1f}" for c in top), flush=True)
    return rows


def sweep_dequant(shapes) -> None:
    from mxmix.runtime.kernels.triton_prefill import dequantize_to

    for n, k in shapes:
        sets = make_weights(n, k, 2)
        out = torch.empty(n, k, device="cuda", dtype=torch.bfloat16)
        for launch in [{"tile_elements": t, "num_warps": w} for t in (2048, 4096, 8192) for w in (2, 4, 8)]:
            t = bench(Rotor([(q, s) for _, q, s in sets],
                            lambda q, s, launch=launch, out=out: dequantize_to(q, s, out, **launch)), warmup=5, rep=20)
            print(f"dequant {n}x{k} {launch}: {t:.1f} us, {n * k * 3.03125 / t / 1e6:.2f} TB/s", flush=True)
        del sets
        torch.cuda.empty_cache()


def sweep_prefill(shapes, ms, args) -> list[dict]:
    from mxmix.runtime.kernels.triton_prefill import PrefillConfig, mxfp8_prefill_cublas, mxfp8_prefill_fused

    cfgs = [PrefillConfig(*c) for c in [
        (128, 128, 64, 8, 8, 3), (64, 64, 128, 8, 4, 4), (256, 128, 64, 8, 8, 3),
        (32, 64, 128, 8, 4, 4), (32, 128, 128, 8, 4, 4), (16, 64, 256, 8, 4, 4)]]
    rows = []
    for n, k, m, sets, xs, bf16 in cases(shapes, ms):
        cub = bench(Rotor([(xs[i % 2], q, s) for i, (_, q, s) in enumerate(sets)],
                          lambda x, q, s: mxfp8_prefill_cublas(x, q, s)))
        rows.append({"n": n, "k": k, "m": m, "config": "cublas", "us": cub, "bf16_us": bf16,
                     "speedup": bf16 / cub})
        best = (cub, "cublas")
        for cfg in cfgs:
            if cfg.block_m > 2 * max(m, 16) or (m >= 2048 and cfg.block_m < 64):
                continue
            try:
                t = bench(Rotor([(xs[i % 2], q, s) for i, (_, q, s) in enumerate(sets)],
                                lambda x, q, s, cfg=cfg: mxfp8_prefill_fused(x, q, s, config=cfg)),
                          warmup=5, rep=20)
            except Exception as exc:
                print(f"  {cfg.label()}: failed {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                continue
            rows.append({"n": n, "k": k, "m": m, "config": cfg.label(), "us": t, "bf16_us": bf16,
                         "speedup": bf16 / t})
            if t < best[0]:
                best = (t, cfg.label())
        print(f"{n:>6}x{k:<6} M={m:<5} bf16 {bf16:8.1f} us  cublas-path {cub:8.1f} (x{bf16 / cub:.2f})  "
              f"best {best[0]:8.1f} x{bf16 / best[0]:.2f} {best[1]}", flush=True)
    return rows


def prefill_breakdown(shapes, ms, args) -> list[dict]:
    """Where the cuBLAS prefill path's time goes: the GEMM on the original BF16 weight, the same GEMM on the
    pre-dequantized weight (MXFP8 values in BF16), the dequantization alone, and the whole path - all timed
    interleaved (`bench_pair`), since under the clock drift of long GEMMs the order of timing alone moves
    a GEMM by up to 20 %. ``--data-variants`` adds the GEMM on weights whose low mantissa bits are altered."""
    from mxmix.mx import dequantize
    from mxmix.runtime.kernels import triton_prefill as tp

    rows = []
    for n, k in shapes:
        sets = make_weights(n, k, copies_for(n, k))
        deq = [dequantize(q, s, torch.bfloat16) for _, q, s in sets]
        variants = {}
        if DATA_VARIANTS:  # which property of the dequantized values cuBLAS is sensitive to (diagnostic only)
            variants["gemm_on_low_bits_zeroed"] = [(w.view(torch.int16) & ~0xF).view(torch.bfloat16)
                                                   for w, _, _ in sets]
            variants["gemm_on_dequantized_low_bits_random"] = [
                (d.view(torch.int16) | torch.randint_like(d.view(torch.int16), 0, 16)).view(torch.bfloat16)
                for d in deq]
        buf = torch.empty(n, k, device="cuda", dtype=torch.bfloat16)
        for m in ms:
            xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(2)]

            def gemm(ws, xs=xs):
                return Rotor([(xs[i % 2], w) for i, w in enumerate(ws)], lambda x, w: torch.matmul(x, w.t()))

            rotors = {"bf16": gemm([w for w, _, _ in sets]), "gemm_on_dequantized": gemm(deq),
                      **{key: gemm(ws) for key, ws in variants.items()},
                      "dequant": Rotor([(q, s) for _, q, s in sets], lambda q, s, buf=buf: tp.dequantize_to(q, s, buf)),
                      "whole": Rotor([(xs[i % 2], q, s) for i, (_, q, s) in enumerate(sets)],
                                     lambda x, q, s: tp.mxfp8_prefill_cublas(x, q, s))}
            times = bench_pair(list(rotors.values()))
            line = {"n": n, "k": k, "m": m, **{f"{key}_us": v for key, v in zip(rotors, times)}}
            rows.append(line)
            print(f"{n:>6}x{k:<6} M={m:<5} " + "  ".join(f"{key[:-3]} {v:.1f}" for key, v in line.items()
                                                        if key.endswith("_us"))
                  + f"  -> x{line['bf16_us'] / line['whole_us']:.2f}", flush=True)
        del sets, deq, variants
        torch.cuda.empty_cache()
    return rows


def convert_candidates(m: int, n: int, k: int):
    """The shipped heuristic's pick first, then the E4M3 conversion variants around it."""
    from mxmix.runtime.kernels.triton_decode import DecodeConfig, _split_for, default_decode_config

    default = default_decode_config(m, n, k)
    cands = [default]
    if m <= 2:
        fma = default if default.kind == "fma" else DecodeConfig(
            "fma", 16, 256, _split_for(-(-n // 16), k, 256, 4 * 132, 512), 4, 3)
        cands += [DecodeConfig(fma.kind, fma.block_n, fma.block_k, fma.split_k, fma.num_warps, fma.num_stages, c)
                  for c in ("cvt", "prmt")]
    for bn, bk, w in ((64, 128, 4), (128, 128, 8), (64, 256, 4)):
        split = min(4, _split_for(-(-n // bn), k, bk, 4 * 132, 1024))
        convs = ("f32", "prmt") if (bn, bk) == (64, 128) else ("prmt",)
        cands += [DecodeConfig("mma", bn, bk, split, w, 3, c) for c in convs]
    seen = []
    for c in cands:
        if c not in seen:
            seen.append(c)
    return seen


def sweep_convert(shapes, ms, args) -> list[dict]:
    """Decode-kernel conversion variants vs the shipped heuristic, plus the Llama-8B layers at M = 1."""

    work = [(shape, 1, name) for name, shape in LLAMA_LAYERS.items()] if args.llama else []
    work += [((n, k), m, None) for n, k in shapes for m in ms if m <= 16]
    rows = []
    cache: dict = {}
    for (n, k), m, layer in work:
        if (n, k) not in cache:
            cache.clear()
            torch.cuda.empty_cache()
            cache[(n, k)] = make_weights(n, k, copies_for(n, k))
        sets = cache[(n, k)]
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
        bf16 = bench(Rotor([(xs[i % 2], w) for i, (w, _, _) in enumerate(sets)],
                           lambda x, w: torch.matmul(x, w.t())), warmup=5, rep=20)
        cands = convert_candidates(m, n, k)
        if layer is not None:  # M = 1 layer costs: the heuristic, the fma kernel's conversions, mma prmt
            cands = [c for c in cands if c.kind == "fma" or (c.convert == "prmt" and c.block_k == 128)] or cands[:1]
        timed = []
        for i, cfg in enumerate(cands):
            t = bench_decode_config(sets, xs, cfg, rep=20)
            if t is None:
                continue
            timed.append((t, cfg))
            rows.append({"n": n, "k": k, "m": m, "layer": layer, "config": cfg.label(), "kind": cfg.kind,
                         "convert": cfg.convert, "us": t, "bf16_us": bf16, "speedup": bf16 / t, "default": i == 0})
        if not timed:
            continue
        d = next((tc for tc in timed if tc[1] == cands[0]), None)
        best = min(timed, key=lambda r: r[0])
        name = f" {layer}" if layer else ""
        print(f"{n:>6}x{k:<6} M={m:<3}{name} bf16 {bf16:7.1f} us  default {d[0] if d else float('nan'):7.1f} "
              f"x{bf16 / d[0] if d else float('nan'):.2f} [{d[1].label() if d else '-'}]  best {best[0]:7.1f} "
              f"x{bf16 / best[0]:.2f} [{best[1].label()}]", flush=True)
        print("      " + "; ".join(f"{c.label()} {t:.1f}" for t, c in sorted(timed, key=lambda r: r[0])), flush=True)
    if args.llama:
        per = {r["layer"]: r for r in rows if r["layer"] and r["default"]}
        if len(per) == len(LLAMA_LAYERS):
            def token_ms(key: str) -> float:
                layer = sum(per[name][key] for name in ("qkv", "o", "gate_up", "down"))
                return (32 * layer + per["lm_head"][key]) / 1e3
            print(f"Llama-8B linear layers per token at M=1 (32 layers + lm_head): bf16 {token_ms('bf16_us'):.2f} ms, "
                  f"mxfp8 (heuristic) {token_ms('us'):.2f} ms -> x{token_ms('bf16_us') / token_ms('us'):.2f}; "
                  + ", ".join(f"{name} {per[name]['us']:.1f}/{per[name]['bf16_us']:.1f} us" for name in LLAMA_LAYERS),
                  flush=True)
    return rows


GLUON_SIGNATURE = ["x_ptr", "w_ptr", "s_ptr", "b_ptr", "out_ptr", "ws_ptr", "cnt_ptr", "M", "N", "K", "KS",
                   "stride_xm", "stride_om", "k_per_split", "kb_per_split", "split"]


def compile_gluon(fn, weight_type: str, const: dict, num_warps: int):
    """Compile a Gluon decode kernel (both share one signature) for sm_90 without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    types = ["*bf16", weight_type, "*u8", "*bf16", "*bf16", "*fp32", "*i32"] + ["i32"] * 9
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13)}
    src = GluonASTSource(fn, {**dict(zip(GLUON_SIGNATURE, types)), **dict.fromkeys(const, "constexpr")}, const,
                         attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def compile_swab(m: int, cfg, split: bool = True, bias: bool = False):
    """Compile the operand-A mma.sync kernels (`gluon_decode`) for sm_90 without a GPU."""
    import triton

    from mxmix.runtime.kernels import gluon_decode as gd

    block_m = max(8, triton.next_power_of_2(m))
    mma, a_l, b_l, w_l, l3, s_ld = gd.layouts(cfg.block_n, cfg.block_k, cfg.num_warps)
    const = {"HAS_BIAS": bias, "SPLIT": split, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "BLOCK_M": block_m,
             "MMA": mma, "A_L": a_l, "B_L": b_l, "W_L": w_l, "L3": l3, "S_LD": s_ld}
    if cfg.kind == "swabcp":
        cp_w, cp_s, cp_x, sh_w, sh_s, sh_x = gd.async_layouts(cfg.block_n, cfg.block_k, block_m, cfg.num_warps)
        const.update(STAGES=cfg.num_stages, CP_W=cp_w, CP_S=cp_s, CP_X=cp_x, SH_W=sh_w, SH_S=sh_s, SH_X=sh_x)
        fn = gd._swab_async_kernel
    else:
        const["PREFETCH"] = cfg.num_stages > 1
        fn = gd._swab_kernel
    return compile_gluon(fn, "*i32", const, cfg.num_warps)


def compile_wgmma(m: int, cfg, split: bool = True, bias: bool = False):
    """Compile the wgmma kernel (`gluon_wgmma`) for sm_90 without a GPU."""
    from mxmix.runtime.kernels import gluon_wgmma as gw

    const = gw.kernel_meta(m, block_n=cfg.block_n, block_k=cfg.block_k, split=2 if split else 1,
                           num_warps=cfg.num_warps, stages=cfg.num_stages, has_bias=bias)
    return compile_gluon(gw._wgmma_kernel, "*i16", const, cfg.num_warps)


def sass_report(ms, args) -> list[dict]:
    """Compile the decode kernels for sm_90 (no GPU needed) and count the main loop's SASS instructions.

    Uses Triton's bundled ptxas and cuobjdump. The loop is the longest backward branch; counts are per
    thread and per iteration, and an iteration covers BLOCK_N x BLOCK_K weight bytes per program.
    """
    import collections
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mxmix.runtime.kernels import triton_decode as td

    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    sig = {"x_ptr": "*bf16", "w_ptr": "*fp8e4nv", "s_ptr": "*u8", "b_ptr": "*bf16", "out_ptr": "*bf16",
           "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32",
           "stride_om": "i32", "k_per_split": "i32", "split": "i32"}
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12)}
    rows = []
    cfgs = []
    from mxmix.runtime.kernels import gluon_decode

    for m in ms:
        # the wgmma kernel (Hopper's default), the mma.sync Gluon kernel, the Triton kernels
        bases = [td.wgmma_config(m, 8192, 28672)]
        if gluon_decode.supports(m, 28672, 128):
            bases.append(td.swab_config(m, 8192, 28672))
        bases.append(td.default_decode_config(m, 8192, 28672, swab=False))
        for base in bases:
            cfgs += [(m, td.DecodeConfig(base.kind, base.block_n, base.block_k, base.split_k, base.num_warps,
                                         base.num_stages, conv)) for conv in td._KIND_CONVERTS[base.kind]
                     if (m, base.kind, conv) not in {(c[0], c[1].kind, c[1].convert) for c in cfgs}]
    for m, cfg in cfgs:
        if cfg.kind == "wgmma":
            kernel = compile_wgmma(m, cfg)
        elif cfg.kind in ("swab", "swabcp"):
            kernel = compile_swab(m, cfg)
        else:
            block_m = max(16, triton.next_power_of_2(m)) if cfg.kind == "mma" else triton.next_power_of_2(m)
            const = {"HAS_BIAS": False, "SPLIT": cfg.split_k > 1, "EVEN_K": True, "BLOCK_M": block_m,
                     "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "CONVERT": td.CONVERTS[cfg.convert]}
            fn = td._decode_fma_kernel if cfg.kind == "fma" else td._decode_mma_kernel
            kernel = triton.compile(ASTSource(fn, {**sig, **dict.fromkeys(const, "constexpr")}, const, attrs),
                                    target=GPUTarget("cuda", 90, 32),
                                    options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            text = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", f.name], capture_output=True,
                                  text=True, check=True).stdout
        instrs = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", text)]
        loop: list[str] = []
        for addr, t in instrs:
            target = re.search(r"BRA\s.*?0x([0-9a-f]+)", t)
            if target and int(target.group(1), 16) < addr:
                body = [u for a, u in instrs if int(target.group(1), 16) <= a <= addr]
                loop = body if len(body) > len(loop) else loop
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in loop)
        per_byte = sum(ops.values()) * cfg.num_warps * 32 / (cfg.block_n * cfg.block_k)
        rows.append({"m": m, "config": cfg.label(), "loop_instructions": sum(ops.values()),
                     "per_weight_byte": per_byte, "ops": dict(ops)})
        print(f"M={m:<3} {cfg.label():32} loop {sum(ops.values()):4d} instr/thread ({per_byte:.2f} per weight byte): "
              + ", ".join(f"{k} {v}" for k, v in ops.most_common(8)), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="NxK list")
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--sweep-decode", action="store_true")
    ap.add_argument("--sweep-prefill", action="store_true")
    ap.add_argument("--sweep-swab", action="store_true", help="operand-A Gluon decode kernel: tiles x splits")
    ap.add_argument("--sweep-wgmma", action="store_true", help="the wgmma kernel (Hopper): tiles x splits")
    ap.add_argument("--data-variants", action="store_true",
                    help="with --prefill-breakdown: cuBLAS on weights with altered low mantissa bits (diagnostic)")
    ap.add_argument("--deep", action="store_true", help="with --sweep-wgmma: deep-ring variants")
    ap.add_argument("--tiled", action="store_true", help="with --sweep-wgmma: on the tiled weight layout")
    ap.add_argument("--sweep-convert", action="store_true")
    ap.add_argument("--prefill-breakdown", action="store_true", help="prefill: GEMM on dequantized weight, dequant, whole")
    ap.add_argument("--llama", action="store_true", help="with --sweep-convert: Llama-8B layer shapes at M = 1")
    ap.add_argument("--sass", action="store_true", help="SASS loop instruction counts for sm_90 (no GPU)")
    ap.add_argument("--timer", choices=("graph", "do_bench"), default="graph")
    ap.add_argument("--fma-max-m", type=int, help="heuristic: largest M served by the fma kernel (default 2, M = 2 only up to 8192x8192)")
    ap.add_argument("--mma-convert", help="heuristic: E4M3 conversion of the mma kernel for every M (default prmt)")
    ap.add_argument("--json", help="write all rows to this JSON file")
    args = ap.parse_args(argv)
    if args.sass:
        rows = sass_report([int(v) for v in args.ms.split(",") if int(v) <= 16], args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows}, f, indent=1)
        return 0
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU", file=sys.stderr)
        return 2
    global TIMER, DEEP, DATA_VARIANTS, TILED
    TIMER = args.timer
    DEEP = args.deep
    TILED = args.tiled
    DATA_VARIANTS = args.data_variants
    from mxmix.runtime.kernels import triton_decode as td

    if args.fma_max_m is not None:
        td.FMA_MAX_M = args.fma_max_m
    if args.mma_convert:
        td.MMA_CONVERT = args.mma_convert
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    print(f"device: {device_name()}; timer {TIMER}; heuristic fma for M <= {td.FMA_MAX_M}, "
          f"fma convert {td.FMA_CONVERT}, mma convert {td.MMA_CONVERT or 'prmt'}",
          flush=True)
    t0 = time.time()
    warm_up_gpu()
    if args.sweep_decode:
        rows = sweep_decode(shapes, ms, args)
    elif args.sweep_convert:
        rows = sweep_convert(shapes, ms, args)
    elif args.sweep_swab or args.sweep_wgmma:
        if args.llama:
            shapes = shapes + [v for v in LLAMA_LAYERS.values() if v not in shapes]
        rows = sweep_swab(shapes, ms, args, wgmma_variants if args.sweep_wgmma else None)
    elif args.prefill_breakdown:
        rows = prefill_breakdown(shapes, ms, args)
    elif args.sweep_prefill:
        sweep_dequant(shapes)
        rows = sweep_prefill(shapes, ms, args)
    else:
        rows = run_table(shapes, ms, args)
        dec = [r["speedup"] for r in rows if r["m"] <= 16]
        pre = [r["speedup"] for r in rows if r["m"] == 4096]
        if dec:
            print(f"decode (M<=16): min x{min(dec):.2f}, mean x{sum(dec) / len(dec):.2f}  (target >= 1.75)")
        if pre:
            print(f"prefill (M=4096): min x{min(pre):.2f}  (target >= 0.9)")
    print(f"elapsed {time.time() - t0:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
