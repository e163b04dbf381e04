"""Load a mixed MXFP8/BF16 checkpoint as a transformers model whose MXFP8 Linears stay compressed.

The model is built by transformers from the checkpoint's config (never remote code) with its
parameters on the meta device, then filled one tensor at a time from the safetensors shards: MXFP8
modules become `MXFP8Linear` (E4M3 weight + E8M0 scales, no BF16 copy), everything else is loaded as
usual. Device memory is therefore about the checkpoint's size. Which modules must be MXFP8 comes from
the checkpoint's own config, read canonically (`mxmix.rules.skip_list_for(qc, "canonical")`), and is
cross-checked against the stored tensors: a checkpoint whose config and tensors disagree is refused
(`mxmix audit` explains it in full).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mxmix.checkpoint.dialects import DIALECTS, recognise_dialect
from mxmix.checkpoint.layout import Checkpoint
from mxmix.errors import MxmixError

SCALE_DTYPES = ("U8", "F8_E8M0")
MAX_LISTED = 5


@dataclass
class LoadReport:
    """What `load` did, attached to the model as ``model.mxmix_load_report``."""

    checkpoint: str
    dialect: str
    architecture: str
    mxfp8_modules: list[str] = field(default_factory=list)
    bf16_modules: list[str] = field(default_factory=list)
    tied_embeddings: bool = False
    weight_bytes: int = 0
    fused_groups: int = 0
    tiled_modules: int = 0  # MXFP8 weights kept in the tiled layout (`mxmix.runtime.tiles`)
    pointwise: dict[str, Any] = field(default_factory=dict)  # `install_pointwise`'s report (CUDA only)

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "dialect": self.dialect, "architecture": self.architecture,
                "mxfp8_modules": len(self.mxfp8_modules), "bf16_linear_modules": len(self.bf16_modules),
                "tied_embeddings": self.tied_embeddings, "weight_bytes": self.weight_bytes,
                "fused_groups": self.fused_groups, "tiled_modules": self.tiled_modules,
                "pointwise_norms": self.pointwise.get("norms", 0),
                "pointwise_rotary": bool(self.pointwise.get("rotary_modules"))}


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (e.g. model.layers.0.mlp.up_proj)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MxmixError("device 'cuda' was requested but no CUDA GPU is available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise MxmixError(f"unsupported device {device!r}: use cpu or cuda")
    return dev


def _check_quantization_config(ckpt: Checkpoint) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    qc = ckpt.quantization_config
    hf = ckpt.read_json("hf_quant_config.json")
    if hf is not None and not isinstance(hf, dict):
        raise MxmixError(f"{ckpt.root}/hf_quant_config.json: not a JSON object")
    dialect = recognise_dialect(qc)
    if dialect == "plain" and hf is not None:
        dialect = "modelopt"
    if dialect.startswith("other:"):
        raise MxmixError(f"{ckpt.root}: quant_method {qc.get('quant_method')!r} is not an MXFP8 format mxmix "
                         f"can run (supported: {', '.join(DIALECTS)})")
    algo = str(qc.get("quant_algo") or ((hf or {}).get("quantization") or {}).get("quant_algo") or "")
    if dialect == "modelopt" and algo and algo.upper() not in ("MXFP8", "MIXED_PRECISION"):
        raise MxmixError(f"{ckpt.root}: ModelOpt quant_algo {algo!r} is not MXFP8")
    fmt = str(qc.get("format") or "")
    if dialect == "compressed-tensors" and fmt and "mxfp8" not in fmt:
        raise MxmixError(f"{ckpt.root}: compressed-tensors format {fmt!r} is not MXFP8")
    return dialect, qc, hf


def _stored_plan(ckpt: Checkpoint):
    """Linear modules from the headers, refusing layouts the runtime cannot hold compressed."""
    from mxmix.checkpoint.modules import linear_modules

    modules = linear_modules(ckpt)
    stacked = [m.path for m in modules if m.stacked and m.quantized]
    if stacked:
        raise MxmixError(f"{ckpt.root}: stacked 3-D MXFP8 expert tensors ({_listed(sorted(set(stacked)))}) are not "
                         "supported by mxmix.load; it runs per-expert Linear modules (experts.N.*_proj) only")
    other_fp8 = [m.path for m in modules if m.quantized and m.precision != "mxfp8"]
    if other_fp8:
        raise MxmixError(f"{ckpt.root}: FP8 weights without E8M0 block scales ({_listed(other_fp8)}) are not MXFP8")
    return [m for m in modules if not m.stacked]


def check_plan(ckpt: Checkpoint, qc: dict[str, Any], hf: dict[str, Any] | None, modules) -> None:
    """Config (canonical reading) and tensors must agree on which Linear modules are MXFP8."""
    from mxmix.rules import compile_rules, skip_list_for

    quantized_paths = [m.path for m in modules if m.precision == "mxfp8"]
    if not qc and hf is None:
        if quantized_paths:
            raise MxmixError(f"{ckpt.root}: tensors are MXFP8 ({_listed(quantized_paths)}) but config.json has no "
                             f"quantization_config; run `mxmix audit {ckpt.root}` for the full report")
        return
    rules = skip_list_for(qc, "canonical", hf)
    reading = compile_rules(rules, "canonical")
    wrong: list[str] = []
    for m in modules:
        d = reading.decide(m.path)
        if d.decision == "error":
            raise MxmixError(f"{ckpt.root}: the skip list cannot be read for {m.path}: {d.reason}; "
                             f"run `mxmix audit {ckpt.root}`")
        planned = "bf16" if d.decision == "keep" else "mxfp8"
        stored = "mxfp8" if m.precision == "mxfp8" else "bf16"
        if planned != stored:
            why = f"rule {d.rule!r}" if d.rule else "no rule keeps it"
            wrong.append(f"{m.path} (config: {planned} by {why}; tensors: {stored})")
    if wrong:
        raise MxmixError(f"{ckpt.root}: config and tensors disagree for {len(wrong)} Linear module(s): "
                         f"{_listed(wrong)}; run `mxmix audit {ckpt.root}` for the full report")


def _build_empty_model(ckpt: Checkpoint, dtype: torch.dtype):
    """transformers model from config.json with parameters on meta (buffers real, on the CPU)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = dict(ckpt.config or {})
    model_type = cfg.get("model_type")
    if not model_type:
        raise MxmixError(f"{ckpt.root}/config.json: no model_type")
    if model_type not in CONFIG_MAPPING:
        raise MxmixError(f"{ckpt.root}: model_type {model_type!r} is not built into this transformers "
                         "(mxmix never runs remote code)")
    for key in ("quantization_config", "auto_map", "_name_or_path"):
        cfg.pop(key, None)
    config = CONFIG_MAPPING[model_type].from_dict(cfg)
    import transformers

    archs = cfg.get("architectures") or []
    model_cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
    with init_empty_weights(include_buffers=False):
        if model_cls is not None:
            model = model_cls._from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, config


def _read(ckpt: Checkpoint, name: str) -> torch.Tensor:
    return ckpt.read_tensor(name)


def _place(model: nn.Module, name: str, tensor: torch.Tensor) -> bool:
    """Put ``tensor`` where parameter/buffer ``name`` lives; False if the model has no such slot."""
    module_path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_path) if module_path else model
    except AttributeError:
        return False
    if leaf in module._parameters and module._parameters[leaf] is not None:
        old = module._parameters[leaf]
        if tuple(old.shape) != tuple(tensor.shape):
            raise MxmixError(f"tensor {name}: shape {tuple(tensor.shape)} does not fit the model's {tuple(old.shape)}")
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
        return True
    if leaf in module._buffers and module._buffers[leaf] is not None:
        old = module._buffers[leaf]
        if tuple(old.shape) != tuple(tensor.shape):
            raise MxmixError(f"tensor {name}: shape {tuple(tensor.shape)} does not fit the model's {tuple(old.shape)}")
        module._buffers[leaf] = tensor
        return True
    return False


def load(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.bfloat16, *, fuse_siblings: bool = True, pointwise: bool = True,
         tile: bool | None = None, progress: bool = False):
    """Load ``checkpoint`` (a directory) as a transformers model on ``device``.

    MXFP8 Linear modules become `MXFP8Linear` (weights stay E4M3 + E8M0), kept modules and all other
    tensors load in ``dtype``. With ``fuse_siblings``, MXFP8 q/k/v and gate/up projections share one
    kernel launch (`mxmix.runtime.fusion`). With ``pointwise`` (CUDA only), RMSNorms and the rotary
    embedding run as one kernel each where they provably compute the same (`mxmix.runtime.pointwise`).
    ``tile``: MXFP8 weights in the tiled layout that the Hopper decode kernel streams faster
    (`mxmix.runtime.tiles`) - None (default) where it pays (`mxmix.runtime.kernels.tiled_layout_pays`), True
    wherever the shape tiles, False never.
    Raises `MxmixError` for unsupported or inconsistent
    checkpoints.
    """
    from mxmix.runtime.mxfp8_linear import MXFP8Linear, check_quantized, tile_weights

    dev = _resolve_device(device)
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise MxmixError(f"unsupported dtype {dtype}: use bfloat16, float16 or float32")
    ckpt = Checkpoint.open(checkpoint, require_config=True)
    dialect, qc, hf = _check_quantization_config(ckpt)
    modules = _stored_plan(ckpt)
    check_plan(ckpt, qc, hf, modules)
    model, config = _build_empty_model(ckpt, dtype)
    report = LoadReport(str(ckpt.root), dialect, type(model).__name__)

    consumed: set[str] = set()
    mx = [m for m in modules if m.precision == "mxfp8"]
    items = list(mx)
    if progress:
        from mxmix.progress import progress as _progress

        items = _progress(items, total=len(items), desc="MXFP8 modules")
    for m in items:
        try:
            target = model.get_submodule(m.path)
        except AttributeError:
            target = None
        if not isinstance(target, nn.Linear):
            found = type(target).__name__ if target is not None else f"nothing; {_nearest_module(model, m.path)}"
            raise MxmixError(f"{ckpt.root}: MXFP8 module {m.path} has no nn.Linear in {type(model).__name__} as "
                             f"transformers builds it (found {found}); the architecture's modules do not match "
                             "the checkpoint (e.g. transformers fuses per-expert MoE weights into 3-D tensors)")
        if (target.out_features, target.in_features) != tuple(m.shape):
            raise MxmixError(f"{ckpt.root}: {m.weight} has shape {tuple(m.shape)} but the model expects "
                             f"{(target.out_features, target.in_features)}")
        w = _read(ckpt, m.weight)
        s = _read(ckpt, m.scale)
        if s.dtype != torch.uint8:
            s = s.view(torch.uint8)
        check_quantized(w, s, name=m.weight)
        bias_name = f"{m.path}.bias"
        bias = _read(ckpt, bias_name).to(dtype) if bias_name in ckpt.tensors else None
        if target.bias is not None and bias is None:
            raise MxmixError(f"{ckpt.root}: {m.path} needs a bias tensor {bias_name}, which is missing")
        mod = MXFP8Linear.from_quantized(w.to(dev), s.to(dev), None if bias is None else bias.to(dev),
                                         dtype=dtype, validate=False)
        set_submodule(model, m.path, mod)
        consumed.update({m.weight, m.scale} | ({bias_name} if bias is not None else set()))
        report.mxfp8_modules.append(m.path)
    report.bf16_modules = [m.path for m in modules if m.precision != "mxfp8"]

    unplaced: list[str] = []
    names = [n for n in ckpt.tensors if n not in consumed]
    for name in names:
        t = _read(ckpt, name)
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        if not _place(model, name, t.to(dev)):
            unplaced.append(name)
    if unplaced:
        raise MxmixError(f"{ckpt.root}: {len(unplaced)} tensor(s) have no place in {type(model).__name__} as "
                         f"transformers builds it: {_listed(unplaced)}")

    _tie_or_fail(model, config, ckpt, report)
    if tile is not False:
        report.tiled_modules = tile_weights(model, where_it_pays=tile is None)
    if fuse_siblings:
        from mxmix.runtime.fusion import fuse_sibling_linears

        report.fused_groups = fuse_sibling_linears(model)
    model.to(dev)  # buffers (rotary tables etc.) were built on the CPU; weights are already on dev
    model.eval()
    model.requires_grad_(False)
    if pointwise and dev.type == "cuda":
        from mxmix.runtime.pointwise import install_pointwise

        report.pointwise = install_pointwise(model, dev).to_dict()
    report.weight_bytes = sum(t.numel() * t.element_size() for t in _unique_tensors(model))
    model.mxmix_load_report = report
    return model


def _nearest_module(model: nn.Module, path: str) -> str:
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            mod = model.get_submodule(".".join(parts[:i]))
        except AttributeError:
            continue
        return f"{'.'.join(parts[:i])} is a {type(mod).__name__}"
    return "no enclosing module"


def _unique_tensors(model: nn.Module):
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def _tie_or_fail(model: nn.Module, config, ckpt: Checkpoint, report: LoadReport) -> None:
    """Tie the output embedding when the config says so and the checkpoint stores none."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    in_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tie = bool(getattr(config, "tie_word_embeddings", False))
    if isinstance(out_emb, nn.Linear) and out_emb.weight.is_meta and tie and in_emb is not None \
            and not in_emb.weight.is_meta:
        out_emb.weight = in_emb.weight
        report.tied_embeddings = True
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    missing += [n for n, b in model.named_buffers() if b.is_meta]
    if missing:
        raise MxmixError(f"{ckpt.root}: checkpoint lacks {len(missing)} tensor(s) the model needs: {_listed(missing)}")
