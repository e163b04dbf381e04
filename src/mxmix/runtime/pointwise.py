"""Serve a transformers model's RMSNorm and rotary embedding with one Triton kernel each, on CUDA.

At batch 1 the non-matmul part of a decoder step (about forty tiny kernels per layer in transformers'
eager code) costs as much GPU time as the MXFP8 weight streaming saves; the RMSNorms and the rotary
embedding are most of those kernels (`mxmix.runtime.kernels.triton_pointwise`).

Nothing is assumed from a class name alone. A norm module is served only if its class computes what the
kernel computes: a copy of the module with random weights is run through the class's own forward and
through the kernel, and the kernel is used only when they agree to bf16 rounding (this refuses e.g.
Gemma's ``(1 + w)`` norms). The rotary function of a model's code module (``apply_rotary_pos_emb``,
looked up by the attention code at call time) is replaced only when the kernel's output is bit-identical
to the original's on probe inputs, so the swap cannot change any result in the process; every call the
kernel does not serve (CPU tensors, other layouts, extra arguments) goes to the original function.
`remove_pointwise` undoes both.
"""

from __future__ import annotations

import copy
import sys
import types
from dataclasses import dataclass, field

import torch
from torch import nn

_ORIGINAL_ATTR = "_mxmix_original_rotary"


@dataclass
class PointwiseReport:
    norms: int = 0                                   # norm modules now served by the kernel
    norm_classes: list[str] = field(default_factory=list)
    rotary_modules: list[str] = field(default_factory=list)  # code modules whose rotary function is served
    refused: list[str] = field(default_factory=list)         # what was checked and left alone, and why

    def to_dict(self) -> dict:
        return {"norms": self.norms, "norm_classes": self.norm_classes, "rotary_modules": self.rotary_modules,
                "refused": self.refused}


def _norm_eps(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        eps = getattr(module, name, None)
        if isinstance(eps, float):
            return eps
    return None


def _is_norm_candidate(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(w, torch.Tensor) and w.ndim == 1
            and _norm_eps(module) is not None and getattr(module, "bias", None) is None)


def _fused_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and x.shape[-1] == self.weight.shape[0]:
        from mxmix.runtime.kernels.triton_pointwise import rmsnorm

        return rmsnorm(x, self.weight, self._mxmix_eps)
    return type(self).forward(self, x)


@torch.no_grad()
def _norm_agrees(module: nn.Module, device: torch.device) -> bool:
    """The class's own forward and the kernel agree on a copy with random weights and inputs."""
    from mxmix.runtime.kernels.triton_pointwise import rmsnorm

    probe = copy.deepcopy(module).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    w = probe.weight
    w.copy_((1 + 0.5 * torch.randn(w.shape, device=device, generator=g)).to(w.dtype))
    x = (3 * torch.randn((5, w.shape[0]), device=device, generator=g)).to(w.dtype)
    ref = type(probe).forward(probe, x)
    got = rmsnorm(x, w, _norm_eps(probe))
    if ref.shape != got.shape or ref.dtype != got.dtype:
        return False
    ref32, got32 = ref.float(), got.float()
    tol = 2.0 ** -6 if ref.dtype in (torch.bfloat16, torch.float16) else 1e-5
    close = (ref32 - got32).abs() <= tol * ref32.abs() + 1e-6
    exact = (ref32 == got32).float().mean().item()
    return bool(close.all()) and exact >= 0.95


def _rotary_agrees(original, device: torch.device) -> bool:
    """Bit-identical output of the kernel and ``original`` on decode- and prefill-shaped probes."""
    from mxmix.runtime.kernels.triton_pointwise import apply_rotary

    g = torch.Generator(device=device).manual_seed(1)
    for dtype in (torch.bfloat16, torch.float16):
        for t in (1, 7):
            # q/k as the attention code makes them: [B, T, H, D] projections viewed as [B, H, T, D]
            q = torch.randn((2, t, 4, 64), device=device, generator=g).to(dtype).transpose(1, 2)
            k = torch.randn((2, t, 2, 64), device=device, generator=g).to(dtype).transpose(1, 2)
            ang = torch.rand((1, t, 32), device=device, generator=g) * 6.3
            cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
            sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
            try:
                rq, rk = original(q, k, cos, sin)
            except Exception:
                return False
            fq, fk = apply_rotary(q, k, cos, sin)
            if not (torch.equal(rq, fq) and torch.equal(rk, fk)):
                return False
    return True


def _make_rotary(original):
    from mxmix.runtime.kernels.triton_pointwise import apply_rotary, rotary_supported

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if not args and set(kwargs) <= {"unsqueeze_dim"} and kwargs.get("unsqueeze_dim", 1) == 1 \
                and rotary_supported(q, k, cos, sin):
            return apply_rotary(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    setattr(apply_rotary_pos_emb, _ORIGINAL_ATTR, original)
    apply_rotary_pos_emb.__doc__ = f"mxmix one-kernel rotary embedding; falls back to {original.__module__}'s"
    return apply_rotary_pos_emb


def install_pointwise(model: nn.Module, device: torch.device | str | None = None) -> PointwiseReport:
    """Serve ``model``'s RMSNorms and rotary embedding with single kernels where they provably agree.

    Does nothing off CUDA or without Triton. Safe to call twice.
    """
    report = PointwiseReport()
    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    if dev.type != "cuda":
        report.refused.append("not on CUDA")
        return report
    try:
        import triton  # noqa: F401
    except ImportError:
        report.refused.append("Triton is not installed")
        return report
    verdicts: dict[tuple, bool] = {}
    for module in model.modules():
        if not _is_norm_candidate(module):
            continue
        if "forward" in module.__dict__:  # already served (or someone else's override): leave it
            report.norms += int(hasattr(module, "_mxmix_eps"))
            continue
        key = (type(module), module.weight.dtype)
        if key not in verdicts:
            verdicts[key] = _norm_agrees(module, dev)
            name = type(module).__name__
            if verdicts[key]:
                report.norm_classes.append(name)
            else:
                report.refused.append(f"{name}: its forward differs from the RMSNorm kernel")
        if verdicts[key]:
            module._mxmix_eps = _norm_eps(module)
            module.forward = types.MethodType(_fused_norm_forward, module)
            report.norms += 1
    code_modules = {type(m).__module__ for m in model.modules()}
    for mod_name in sorted(code_modules):
        code = sys.modules.get(mod_name)
        fn = getattr(code, "apply_rotary_pos_emb", None) if code is not None else None
        if fn is None or not callable(fn):
            continue
        if hasattr(fn, _ORIGINAL_ATTR):
            report.rotary_modules.append(mod_name)
            continue
        if _rotary_agrees(fn, dev):
            code.apply_rotary_pos_emb = _make_rotary(fn)
            report.rotary_modules.append(mod_name)
        else:
            report.refused.append(f"{mod_name}.apply_rotary_pos_emb: not bit-identical to the rotary kernel")
    return report


def remove_pointwise(model: nn.Module) -> None:
    """Undo `install_pointwise`: norms use their class forward, rotary functions are the originals."""
    for module in model.modules():
        if "forward" in module.__dict__ and hasattr(module, "_mxmix_eps"):
            del module.forward
            del module._mxmix_eps
    for mod_name in {type(m).__module__ for m in model.modules()}:
        code = sys.modules.get(mod_name)
        fn = getattr(code, "apply_rotary_pos_emb", None) if code is not None else None
        if fn is not None and hasattr(fn, _ORIGINAL_ATTR):
            code.apply_rotary_pos_emb = getattr(fn, _ORIGINAL_ATTR)
