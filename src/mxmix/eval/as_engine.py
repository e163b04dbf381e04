"""The candidate as a given engine would run it: that engine's reading of the skip list, applied online.

Why: a checkpoint's bytes say what the writer meant; what a user gets is what the engine reads. An engine
that does not recognise a kept module as kept quantizes its BF16 weight online (MXFP8 of the stored
BF16, as SGLang's online ``mxfp8`` path does). So: every Linear the engine's reading (``skip_list_for`` +
``compile_rules`` for that engine) would quantize and which is stored BF16 is quantized here with
`mxmix.mx`; stored-MXFP8 modules stay MXFP8 whatever the reading says (an engine cannot recover the BF16
weight; such modules are listed as ``stored_fp8_engine_keeps`` — a real engine would misload them).
The per-module decisions come from `mxmix.rules.plan.plan_checkpoint` (the same table `mxmix plan` and
`mxmix audit` show): serving engines decide on their fused runtime modules (``qkv_proj``,
``gate_up_proj``, FusedMoE), and an ``error`` answer (some but not all shards kept) is raised, as the
engine raises at load time. The LM head is left as stored: these engines' FP8 methods do not quantize it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mxmix.checkpoint.layout import Checkpoint
from mxmix.errors import MxmixError


@dataclass
class EngineView:
    engine: str
    skip_list: list[str]
    quantized_online: list[str] = field(default_factory=list)   # stored BF16, the engine quantizes
    kept_bf16: list[str] = field(default_factory=list)          # stored BF16, the engine keeps
    stored_fp8: list[str] = field(default_factory=list)         # stored MXFP8, the engine quantizes
    stored_fp8_engine_keeps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "skip_list_len": len(self.skip_list),
                "quantized_online": len(self.quantized_online), "kept_bf16": len(self.kept_bf16),
                "stored_fp8": len(self.stored_fp8), "stored_fp8_engine_keeps": self.stored_fp8_engine_keeps,
                "quantized_online_modules": self.quantized_online}

    def summary(self) -> str:
        s = (f"as {self.engine}: {len(self.stored_fp8)} stored MXFP8, {len(self.kept_bf16)} kept BF16, "
             f"{len(self.quantized_online)} stored BF16 but quantized online by the engine")
        if self.stored_fp8_engine_keeps:
            s += f"; {len(self.stored_fp8_engine_keeps)} stored MXFP8 that the engine would read as BF16"
        return s


def quantizable_linears(model: Any) -> list[tuple[str, Any]]:
    """Every Linear a quantizing engine would touch: all but the LM head (and embeddings, not Linear)."""
    from torch import nn

    from mxmix.runtime.mxfp8_linear import MXFP8Linear

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear | MXFP8Linear) and not n.endswith("lm_head") and n != "lm_head"]


def fake_quantize_(linear: Any, scale_mode: str = "rceil") -> None:
    """Replace a Linear's weight by its MXFP8 round trip, in place (CPU numerics of MXFP8Linear)."""
    import torch

    from mxmix.mx import dequantize, quantize

    with torch.no_grad():
        w = linear.weight
        q, s = quantize(w.detach(), block_size=32, scale_mode=scale_mode)
        w.copy_(dequantize(q, s, dtype=w.dtype, block_size=32))


def engine_view(ckpt: Checkpoint, module_paths: list[str], engine: str) -> EngineView:
    """Classify each module path by what ``engine`` does with it (headers and config only)."""
    from mxmix.rules import ENGINES
    from mxmix.rules.plan import plan_checkpoint

    if engine not in ENGINES:
        raise MxmixError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    plan = plan_checkpoint(ckpt, [engine])
    rows = {r.module.path: r for r in plan.rows}
    view = EngineView(engine, list(plan.skip_lists.get(engine, [])))
    for path in module_paths:
        row = rows.get(path)
        if row is None:
            raise MxmixError(f"{ckpt.root}: the model has a Linear {path} that the checkpoint does not store")
        d = row.decisions[engine]
        if d.decision == "error":
            raise MxmixError(f"{engine} would refuse to load this checkpoint: {d.path}: {d.reason}")
        if row.module.quantized:
            (view.stored_fp8_engine_keeps if d.keep else view.stored_fp8).append(path)
        else:
            (view.kept_bf16 if d.keep else view.quantized_online).append(path)
    return view


def apply_engine_view(model: Any, view: EngineView, scale_mode: str = "rceil") -> None:
    """Quantize online every stored-BF16 module the engine quantizes."""
    mods = dict(model.named_modules())
    for path in view.quantized_online:
        mod = mods.get(path)
        if mod is None or getattr(mod, "weight", None) is None or not mod.weight.dtype.is_floating_point \
                or mod.weight.dtype.itemsize < 2:
            raise MxmixError(f"cannot quantize {path} online: not a BF16 Linear in the loaded model")
        fake_quantize_(mod, scale_mode)


def load_as_engine(path: str | os.PathLike[str], engine: str, device: str = "cpu", dtype: str = "bfloat16",
                   scale_mode: str = "rceil") -> tuple[Any, EngineView]:
    """Load the candidate and make it what ``engine`` would run."""
    from mxmix.eval.models import load_model

    ckpt = Checkpoint.open(path, require_config=True)
    model = load_model(path, device=device, dtype=dtype)
    view = engine_view(ckpt, [n for n, _ in quantizable_linears(model)], engine)
    apply_engine_view(model, view, scale_mode)
    return model, view
