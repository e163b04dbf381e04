"""`MXFP8Linear`: a Linear layer whose weight stays MXFP8 (E4M3 elements + E8M0 scale per 32 along K).

The forward is defined as the BF16 (or the activation's dtype) matmul on the exactly dequantized
weight with fp32 accumulation. On the CPU it runs that definition (dequantize, then ``F.linear``); on
CUDA it runs the Triton kernels of `mxmix.runtime.kernels`, which never materialise the weight for
small M and stream it compressed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mxmix.errors import MxmixError
from mxmix.runtime import tiles

BLOCK = 32
E8M0_NAN = 255
E4M3_NAN = 0x7F  # magnitude bits of the E4M3 NaN bytes 0x7F / 0xFF


def dequantize_weight(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                      tiled: bool = False) -> torch.Tensor:
    """Exact decode of an MXFP8 weight (row-major result from either layout, ``tiled``: `mxmix.runtime.tiles`):
    the codec's torch path, or the runtime's Triton kernel on CUDA."""
    if weight.is_cuda and dtype in (torch.bfloat16, torch.float16) and _kernels_available():
        from mxmix.runtime.kernels import dequantize_cuda

        return dequantize_cuda(weight.contiguous(), scale.contiguous(), dtype, tiled)
    from mxmix.mx import dequantize

    if tiled:
        weight, scale = tiles.untile(weight, scale)

    # the codec's CPU path fills scratch tensors from worker threads, which inference mode forbids
    with torch.inference_mode(False):
        return dequantize(weight, scale, dtype=dtype, block_size=BLOCK, backend="torch")


class MXFP8Linear(nn.Module):
    """y = x @ dequant(weight, weight_scale)^T + bias, with the weight kept compressed.

    Buffers: ``weight`` float8_e4m3fn [out, in], ``weight_scale`` uint8 [out, in/32] (E8M0 bytes),
    optional ``bias``. ``in_features`` must be a multiple of 32 (every MXFP8 consumer requires it).

    ``tiled`` (`tile_weight`): the two buffers hold their bytes in the tiled layout of `mxmix.runtime.tiles`
    (same shapes and dtypes), which the Hopper decode kernel streams faster. State dicts and
    `dequantized_weight` are row-major in either layout; the CPU path untiles per call (use the CPU cache).
    """

    tiled = False

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if in_features % BLOCK:
            raise MxmixError(f"MXFP8Linear needs in_features divisible by {BLOCK}, got {in_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = dtype
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.float8_e4m3fn,
                                                   device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, in_features // BLOCK, dtype=torch.uint8,
                                                         device=device))
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def from_quantized(cls, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
                       dtype: torch.dtype = torch.bfloat16, validate: bool = True) -> MXFP8Linear:
        """Wrap existing tensors (no copy when they already have the right dtype and layout)."""
        check_quantized(weight, scale, validate=validate)
        out_features, in_features = weight.shape
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.in_features = in_features
        mod.out_features = out_features
        mod.compute_dtype = dtype
        mod.register_buffer("weight", weight.contiguous())
        mod.register_buffer("weight_scale", scale.contiguous())
        if bias is not None:
            mod.register_buffer("bias", bias.to(dtype).contiguous())
        else:
            mod.bias = None
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale_mode: str = "rceil") -> MXFP8Linear:
        """Quantize an ``nn.Linear`` with the project codec (for tests, benchmarks, experiments)."""
        from mxmix.mx import quantize

        q, s = quantize(linear.weight.detach(), block_size=BLOCK, scale_mode=scale_mode)
        bias = linear.bias.detach() if linear.bias is not None else None
        dtype = linear.weight.dtype if linear.weight.dtype.is_floating_point else torch.bfloat16
        return cls.from_quantized(q, s, bias, dtype=dtype if dtype != torch.float32 else torch.bfloat16)

    def set_cpu_cache(self, enabled: bool) -> None:
        """On the CPU, keep the dequantized weight between calls (faster, but a full-precision copy)."""
        self.cache_dequantized = enabled
        if not enabled:
            self._dequantized = None
            sibling = getattr(self, "_sibling", None)
            if sibling is not None:
                sibling[0]._dequantized = None

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_weight(self.weight, self.weight_scale, dtype or self.compute_dtype, self.tiled)

    def tile_weight(self) -> bool:
        """Store the weight and scales in the tiled layout (`mxmix.runtime.tiles`); False where the shape
        does not tile. Fused siblings (`mxmix.runtime.fusion`) change layout together, in their shared buffers."""
        return self._relayout(True)

    def untile_weight(self) -> None:
        """Back to row-major buffers (with fused siblings, all of them)."""
        self._relayout(False)

    def _relayout(self, tiled: bool) -> bool:
        sibling = getattr(self, "_sibling", None)
        mods = sibling[0].members if sibling is not None else [self]
        if all(m.tiled == tiled for m in mods):
            return True
        if tiled and not all(tiles.can_tile(m.out_features, m.in_features) for m in mods):
            return False
        convert = tiles.tile if tiled else tiles.untile
        for m in mods:
            w, s = convert(m.weight, m.weight_scale)
            if sibling is None:  # new buffers: the tensors may be the caller's (`from_quantized` does not copy)
                m.weight, m.weight_scale = w, s
            else:  # in place: the members' buffers are views of the group's
                m._overwrite(w, s)
            m.tiled = tiled
            m._dequantized = None
        if sibling is not None:
            sibling[0]._dequantized = None
        return True

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.tiled:  # a state dict is row-major, whatever the runtime layout
            destination[prefix + "weight"], destination[prefix + "weight_scale"] = tiles.untile(
                self.weight, self.weight_scale)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        loaded = prefix + "weight" in state_dict and prefix + "weight_scale" in state_dict
        if self.tiled and loaded and len(error_msgs) == errors:
            # the loaded row-major bytes are re-tiled in place (views shared with fused siblings stay valid)
            self._overwrite(*tiles.tile(self.weight, self.weight_scale))

    def _overwrite(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        """Copy into the existing buffers (inference tensors included), keeping every view of them."""
        with torch.no_grad(), torch.inference_mode(self.weight.is_inference()):
            self.weight.copy_(weight)
            self.weight_scale.copy_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise MxmixError(f"MXFP8Linear expects inputs with last dimension {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        sibling = getattr(self, "_sibling", None)
        if sibling is not None:  # fused with q/k/v or gate/up siblings (mxmix.runtime.fusion)
            group, index = sibling
            return group.output(index, x, lambda x_, w, s, b: self._matmul(x_, w, s, b, group))
        return self._matmul(x, self.weight, self.weight_scale, self.bias, self)

    def _matmul(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                cache_owner: object) -> torch.Tensor:
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and _kernels_available():
            from mxmix.runtime.kernels import mxfp8_matmul

            lead = x.shape[:-1]
            x2 = x.reshape(-1, x.shape[-1])
            if x2.shape[0] == 0:
                return x.new_empty(*lead, weight.shape[0])
            y = mxfp8_matmul(x2, weight, scale, bias, tiled=self.tiled)
            return y.reshape(*lead, weight.shape[0])
        if getattr(self, "cache_dequantized", False) and not x.is_cuda:
            dtype = x.dtype if x.dtype.is_floating_point else torch.bfloat16
            cached = getattr(cache_owner, "_dequantized", None)
            if cached is None or cached.dtype != dtype or cached.device != x.device:
                cached = dequantize_weight(weight, scale, dtype, self.tiled)
                cache_owner._dequantized = cached  # type: ignore[attr-defined]
            return F.linear(x.to(dtype), cached, None if bias is None else bias.to(dtype))
        if self.tiled:
            weight, scale = tiles.untile(weight, scale)
        return reference_forward(x, weight, scale, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format=mxfp8{', tiled' if self.tiled else ''}")


def tile_weights(model: nn.Module, where_it_pays: bool = True) -> int:
    """Put MXFP8Linear weights in the tiled layout (`MXFP8Linear.tile_weight`): those the Hopper decode kernel
    serves (`mxmix.runtime.kernels.tiled_layout_pays`), or every one whose shape tiles; returns how many are."""
    count = 0
    for m in model.modules():
        if isinstance(m, MXFP8Linear) and (not where_it_pays or _tiling_pays(m)):
            count += int(m.tile_weight())
    return count


def _tiling_pays(m: MXFP8Linear) -> bool:
    if not (m.weight.is_cuda and _kernels_available()):
        return False
    from mxmix.runtime.kernels import tiled_layout_pays

    return tiled_layout_pays(m.weight, m.weight_scale, m.compute_dtype)


def set_cpu_weight_cache(model: nn.Module, enabled: bool = True) -> int:
    """Toggle the CPU dequantized-weight cache on every MXFP8Linear of ``model``; returns how many."""
    mods = [m for m in model.modules() if isinstance(m, MXFP8Linear)]
    for m in mods:
        m.set_cpu_cache(enabled)
    return len(mods)


def reference_forward(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """The definition: matmul in the activation's dtype on the exactly dequantized weight."""
    dtype = x.dtype if x.dtype.is_floating_point else torch.bfloat16
    w = dequantize_weight(weight, scale, dtype)
    return F.linear(x.to(dtype), w, None if bias is None else bias.to(dtype))


def check_quantized(weight: torch.Tensor, scale: torch.Tensor, *, validate: bool = True,
                    name: str = "weight") -> None:
    """Shapes and dtypes of an MXFP8 weight, and (``validate``) no NaN scale bytes or NaN elements.

    The CUDA kernels decode E4M3 bytes with integer operations that do not produce NaN, so NaN
    elements are refused here, where a checkpoint's tensors first meet the runtime.
    """
    if weight.dtype != torch.float8_e4m3fn:
        raise MxmixError(f"{name}: MXFP8 weight must be float8_e4m3fn, got {weight.dtype}")
    if scale.dtype != torch.uint8:
        raise MxmixError(f"{name}: MXFP8 scales must be uint8 E8M0 bytes, got {scale.dtype}")
    if weight.ndim != 2:
        raise MxmixError(f"{name}: MXFP8Linear needs a 2-D weight, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if k % BLOCK:
        raise MxmixError(f"{name}: in_features {k} is not a multiple of {BLOCK}")
    if tuple(scale.shape) != (n, k // BLOCK):
        raise MxmixError(f"{name}: scale shape {tuple(scale.shape)} does not match weight {tuple(weight.shape)} "
                         f"(expected {(n, k // BLOCK)})")
    if weight.device != scale.device:
        raise MxmixError(f"{name}: weight on {weight.device} but scales on {scale.device}")
    if validate and bool((scale == E8M0_NAN).any()):
        raise MxmixError(f"{name}: scale byte 0xFF (NaN) found; the weights contain NaN/Inf blocks")
    if validate and bool(((weight.view(torch.uint8) & 0x7F) == E4M3_NAN).any()):
        raise MxmixError(f"{name}: E4M3 NaN element (byte 0x7F/0xFF) found; the weights contain NaN values")


_KERNELS_OK: bool | None = None


def _kernels_available() -> bool:
    global _KERNELS_OK
    if _KERNELS_OK is None:
        try:
            import triton  # noqa: F401

            _KERNELS_OK = True
        except Exception:
            _KERNELS_OK = False
    return _KERNELS_OK
