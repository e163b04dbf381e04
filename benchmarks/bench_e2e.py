"""End-to-end batch-1 greedy decode: an 8B-shaped Llama in BF16 vs the same model with MXFP8 Linears.

    PYTHONPATH=src python benchmarks/bench_e2e.py [--layers 32] [--new-tokens 128] [--json out.json]

The model has Llama-3-8B shapes (hidden 4096, intermediate 14336, 32 layers, 32 heads / 8 KV heads,
vocab 128256) and random weights; it is built directly on the GPU (no checkpoint is written). Measured, in order:

1. ``bf16``: the transformers model as built (the baseline of issue 5);
2. ``bf16+pointwise``: the same with mxmix's one-kernel RMSNorm and rotary (`mxmix.runtime.pointwise`), for a
   like-for-like comparison, then removed again;
3. every nn.Linear (decoder projections and lm_head) replaced in place by an `MXFP8Linear` quantized from its
   weight (RCEIL), BF16 weights freed: ``mxfp8-unfused``, then with q/k/v and gate/up fused (``mxfp8``), then
   with the pointwise kernels (``mxfp8+pointwise``: what `mxmix.load` gives on CUDA).

All go through the same decoders:

* ``graph``: `mxmix.runtime.generate.greedy_generate` - static KV cache, one-token step in a CUDA graph;
* ``hf-eager``: transformers ``model.generate(do_sample=False)`` with its default dynamic cache (host-bound).

Reported: decode tokens/s (steady state), the ratios, weights-resident GPU memory and peak GPU memory during
generation. Target (issue 5): graph decode >= 1.5x BF16. ``--profile`` prints the GPU time by kernel of one
eager step.

``--variants swab=off,wgmma=off,fma=prmt,mma=f32,fma=prmt+mma=cvt`` re-measures the final MXFP8 graph decode
with the Triton decode kernels instead of the Gluon ones (``swab=off``), the mma.sync Gluon kernel instead of
the wgmma one (``wgmma=off``), or other E4M3 conversions in their heuristic
(`triton_decode.FMA_CONVERT` / `MMA_CONVERT`), then the shipped default once more (run-to-run spread).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

GiB = 2**30


def build_bf16(layers: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=vocab,
                      max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = 0
    return model


def to_mxfp8(model) -> int:
    """Replace every nn.Linear by an MXFP8Linear quantized from its weight; returns how many."""
    from mxmix.mx import quantize
    from mxmix.runtime import MXFP8Linear
    from mxmix.runtime.load import set_submodule

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for name in names:
        lin = model.get_submodule(name)
        q, s = quantize(lin.weight.detach(), backend="torch")
        bias = lin.bias.detach() if lin.bias is not None else None
        set_submodule(model, name, MXFP8Linear.from_quantized(q, s, bias, dtype=torch.bfloat16))
        del lin
    gc.collect()
    torch.cuda.empty_cache()
    return len(names)


def measure(model, prompt_len: int, new_tokens: int, label: str, hf_tokens: int) -> dict:
    from mxmix.runtime.generate import greedy_generate

    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len), device="cuda", generator=g)
    res: dict = {"label": label}
    torch.cuda.synchronize()
    res["weights_gib"] = torch.cuda.memory_allocated() / GiB
    # warm-up (kernel compilation), then the measured run
    greedy_generate(model, ids, 8, stop_at_eos=False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    r = greedy_generate(model, ids, new_tokens, stop_at_eos=False)
    res["graph"] = {"tok_s": r.decode_tokens_per_s, "mode": r.mode, "timed_tokens": r.timed_tokens,
                    "prefill_ms": r.prefill_s * 1e3, "notes": r.notes,
                    "peak_gib": torch.cuda.max_memory_allocated() / GiB}
    res["tokens"] = r.tokens[:16]
    print(f"[{label}] graph decode: {r.decode_tokens_per_s:.1f} tok/s ({r.mode}), prefill {r.prefill_s * 1e3:.0f} ms, "
          f"peak {res['graph']['peak_gib']:.2f} GiB, weights {res['weights_gib']:.2f} GiB {r.notes}", flush=True)
    if hf_tokens > 0:
        model.generate(ids, max_new_tokens=4, do_sample=False)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=hf_tokens, do_sample=False, min_new_tokens=hf_tokens)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        n = out.shape[1] - ids.shape[1]
        tok_s = (n - 1) / max(total - t_first, 1e-9)
        res["hf_eager"] = {"tok_s": tok_s, "tokens": n, "peak_gib": torch.cuda.max_memory_allocated() / GiB}
        print(f"[{label}] HF generate (eager, dynamic cache): {tok_s:.1f} tok/s, "
              f"peak {res['hf_eager']['peak_gib']:.2f} GiB", flush=True)
    return res


def profile_step(model, label: str, top: int = 15) -> None:
    """GPU time by kernel over one eager one-token step (after a prefill), to show where a step goes."""
    from torch.profiler import ProfilerActivity, profile

    from mxmix.runtime.generate import _cache_kw, _static_cache

    ids = torch.randint(3, model.config.vocab_size, (1, 32), device="cuda")
    cache = _static_cache(model, 64)
    kw = {_cache_kw(model): cache}
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        model(input_ids=nxt, use_cache=True, **kw)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(input_ids=nxt, use_cache=True, **kw)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0)]
    total = sum(getattr(e, "self_device_time_total", 0) for e in events)
    launches = sum(e.count for e in events if getattr(e, "self_device_time_total", 0) > 0)
    print(f"[{label}] one eager step: {launches} kernels, {total / 1e3:.2f} ms of GPU time", flush=True)
    for e in sorted(events, key=lambda e: -getattr(e, "self_device_time_total", 0))[:top]:
        t = getattr(e, "self_device_time_total", 0)
        print(f"    {t / 1e3:7.3f} ms {e.count:5d}x  {e.key[:90]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--hf-tokens", type=int, default=32, help="tokens for the HF generate comparison (0: skip)")
    ap.add_argument("--variants", default="", help="comma list of swab=off / wgmma=off / tiles=off / fma=CONVERT / mma=CONVERT to compare")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of one eager decode step")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_e2e: needs a CUDA GPU", file=sys.stderr)
        return 2
    import transformers

    p = torch.cuda.get_device_properties(0)
    info = {"device": f"{p.name} ({p.multi_processor_count} SMs)", "torch": torch.__version__,
            "transformers": transformers.__version__, "layers": args.layers, "vocab": args.vocab,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    print(info, flush=True)
    t0 = time.time()
    model = build_bf16(args.layers, args.vocab)
    print(f"built BF16 model in {time.time() - t0:.0f} s", flush=True)
    bf16 = measure(model, args.prompt_len, args.new_tokens, "bf16", args.hf_tokens)
    probe = torch.randint(3, args.vocab, (1, 16), device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
    from mxmix.runtime.pointwise import install_pointwise, remove_pointwise

    with torch.inference_mode():
        plain = model(probe).logits.float()
    pw = install_pointwise(model)
    with torch.inference_mode():
        pw_err = float((model(probe).logits.float() - plain).norm() / plain.norm())
    print(f"pointwise kernels: {pw.to_dict()}; logits rel diff vs plain {pw_err:.2e}", flush=True)
    bf16_pw = measure(model, args.prompt_len, args.new_tokens, "bf16+pointwise", 0)
    if args.profile:
        profile_step(model, "bf16+pointwise")
    remove_pointwise(model)
    t0 = time.time()
    n = to_mxfp8(model)
    print(f"quantized {n} Linear modules to MXFP8 in {time.time() - t0:.0f} s", flush=True)
    mx_unfused = measure(model, args.prompt_len, args.new_tokens, "mxfp8-unfused", 0)
    with torch.inference_mode():
        before = model(probe).logits.float()
    from mxmix.runtime import tile_weights
    from mxmix.runtime.fusion import fuse_sibling_linears

    n_tiled = tile_weights(model)  # as `mxmix.load` does: the tiled layout where the Hopper kernel reads it
    print(f"tiled layout for {n_tiled} of {n} MXFP8 weights", flush=True)
    groups = fuse_sibling_linears(model)
    with torch.inference_mode():
        after = model(probe).logits.float()
    fuse_err = float((after - before).norm() / before.norm())
    print(f"fused {groups} sibling groups (q/k/v, gate/up); logits rel diff vs unfused {fuse_err:.2e}", flush=True)
    mx_plain = measure(model, args.prompt_len, args.new_tokens, "mxfp8", 0)
    install_pointwise(model)
    mx = measure(model, args.prompt_len, args.new_tokens, "mxfp8+pointwise", args.hf_tokens)
    if args.profile:
        profile_step(model, "mxfp8+pointwise")
    mx["unfused_graph_tok_s"] = mx_unfused["graph"]["tok_s"]
    mx["no_pointwise_graph_tok_s"] = mx_plain["graph"]["tok_s"]
    bf16["pointwise_graph_tok_s"] = bf16_pw["graph"]["tok_s"]
    bf16["pointwise_logits_rel_diff"] = pw_err
    if args.variants:
        from mxmix.runtime.kernels import triton_decode as td

        mx["variants"] = {}
        for spec in [v for v in args.variants.split(",") if v] + ["default"]:
            saved = (td.FMA_CONVERT, td.MMA_CONVERT, td.SWAB, td.WGMMA)
            parts = [] if spec == "default" else [p.split("=") for p in spec.split("+")]
            # tiles=off, and any variant without the wgmma kernel (the only reader of the tiled layout): row-major
            untiled = [m for m in model.modules() if getattr(m, "tiled", False)
                       and any(kind in ("tiles", "swab", "wgmma") for kind, _ in parts)]
            for m in untiled:
                m.untile_weight()
            for kind, conv in parts:
                if kind == "tiles":
                    pass
                elif kind == "swab":  # swab=off: the Triton decode kernels instead of the Gluon ones
                    td.SWAB = conv not in ("off", "0")
                elif kind == "wgmma":  # wgmma=off: the mma.sync Gluon kernel instead of the wgmma one
                    td.WGMMA = conv not in ("off", "0")
                else:
                    setattr(td, f"{kind.upper()}_CONVERT", conv)
            r = measure(model, args.prompt_len, args.new_tokens, f"mxfp8+pointwise {spec}", 0)
            td.FMA_CONVERT, td.MMA_CONVERT, td.SWAB, td.WGMMA = saved
            for m in untiled:
                m.tile_weight()
            mx["variants"][spec] = {"tok_s": r["graph"]["tok_s"], "speedup": r["graph"]["tok_s"] / bf16["graph"]["tok_s"],
                                    "tokens_equal_default": sum(a == b for a, b in zip(r["tokens"], mx["tokens"]))}
            print(f"SUMMARY variant {spec}: {r['graph']['tok_s']:.1f} tok/s -> x{mx['variants'][spec]['speedup']:.2f} "
                  f"vs bf16 (first tokens equal to default: {mx['variants'][spec]['tokens_equal_default']}/16)", flush=True)
    mx["fusion_logits_rel_diff"] = fuse_err
    mx["tiled_weights"] = n_tiled
    summary = {"graph_speedup": mx["graph"]["tok_s"] / bf16["graph"]["tok_s"],
               "graph_speedup_like_for_like": mx["graph"]["tok_s"] / bf16_pw["graph"]["tok_s"],
               "graph_speedup_no_pointwise": mx_plain["graph"]["tok_s"] / bf16["graph"]["tok_s"],
               "graph_speedup_unfused": mx_unfused["graph"]["tok_s"] / bf16["graph"]["tok_s"]}
    if "hf_eager" in bf16:
        summary["hf_eager_speedup"] = mx["hf_eager"]["tok_s"] / bf16["hf_eager"]["tok_s"]
    summary["first_tokens_equal"] = sum(a == b for a, b in zip(bf16["tokens"], mx["tokens"]))
    print(f"SUMMARY graph decode: transformers bf16 {bf16['graph']['tok_s']:.1f} tok/s, mxmix mxfp8 {mx['graph']['tok_s']:.1f} "
          f"tok/s -> x{summary['graph_speedup']:.2f} (target >= 1.5)", flush=True)
    print(f"SUMMARY like for like: bf16+pointwise {bf16_pw['graph']['tok_s']:.1f} vs mxfp8+pointwise -> "
          f"x{summary['graph_speedup_like_for_like']:.2f}; no pointwise kernels on either side "
          f"x{summary['graph_speedup_no_pointwise']:.2f}; unfused q/k/v+gate/up x{summary['graph_speedup_unfused']:.2f}", flush=True)
    print(f"SUMMARY memory: weights {bf16['weights_gib']:.2f} -> "
          f"{mx['weights_gib']:.2f} GiB; peak {bf16['graph']['peak_gib']:.2f} -> {mx['graph']['peak_gib']:.2f} GiB",
          flush=True)
    if "hf_eager_speedup" in summary:
        print(f"SUMMARY HF eager generate: bf16 {bf16['hf_eager']['tok_s']:.1f}, mxfp8 {mx['hf_eager']['tok_s']:.1f} "
              f"-> x{summary['hf_eager_speedup']:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "bf16": bf16, "mxfp8": mx, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
