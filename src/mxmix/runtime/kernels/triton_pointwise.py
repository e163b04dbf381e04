"""One-kernel RMSNorm and rotary embedding, rounding exactly where the transformers code rounds.

At batch 1 a decoder step is hundreds of tiny kernels: transformers' RMSNorm is six (cast, square,
mean, rsqrt, scale, weight) and its rotary embedding ten (products, ``rotate_half``'s slices, negation
and concatenation, sums) for each layer. Each costs a few microseconds even inside a CUDA graph, which
is as much as the MXFP8 weight streaming saves. These kernels do the same arithmetic in one pass:

* RMSNorm: ``w * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype)`` in the promoted dtype of ``w`` and
  ``x`` (Llama / Mistral / Qwen semantics); only the mean's summation order differs.
* rotary: ``q * cos + rotate_half(q) * sin`` with every product and the sum rounded to the input dtype,
  as the eager ops round them, so the result is bit-identical. Both kernels are compiled without
  multiply-add contraction: Triton would otherwise turn "round(a*b) + c" into one fused bf16 FMA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, H, stride_x, stride_o, eps,
                    BLOCK: tl.constexpr, MID_DTYPE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    var = tl.sum(x * x, axis=0) / H
    h = (x * tl.math.rsqrt(var + eps)).to(MID_DTYPE)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    y = w.to(tl.float32) * h.to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of a CUDA tensor (rows may be strided, elements contiguous)."""
    h = x.shape[-1]
    x2 = x.reshape(-1, h)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty((x2.shape[0], h), device=x.device, dtype=out_dtype)
    if x2.shape[0]:
        block = triton.next_power_of_2(h)
        warps = 4 if block <= 4096 else 8
        _rmsnorm_kernel[(x2.shape[0],)](x2, weight, out, h, x2.stride(0), out.stride(0), float(eps),
                                        BLOCK=block, MID_DTYPE=_TL_DTYPES[x.dtype], num_warps=warps,
                                        enable_fp_fusion=False)
    return out.reshape(*x.shape[:-1], h)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr,
                   T, HQ, HK,
                   sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sqo_b, sqo_h, sqo_t, sko_b, sko_h, sko_t,
                   sc_b, sc_t, ss_b, ss_t,
                   HALF: tl.constexpr, BLOCK: tl.constexpr):
    bt = tl.program_id(0)
    head = tl.program_id(1)
    b = (bt // T).to(tl.int64)
    t = (bt % T).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HALF
    c1 = tl.load(cos_ptr + b * sc_b + t * sc_t + offs, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + b * sc_b + t * sc_t + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + b * ss_b + t * ss_t + offs, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + b * ss_b + t * ss_t + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    if head < HQ:
        src = q_ptr + b * sq_b + head * sq_h + t * sq_t
        dst = qo_ptr + b * sqo_b + head * sqo_h + t * sqo_t
    else:
        src = k_ptr + b * sk_b + (head - HQ) * sk_h + t * sk_t
        dst = ko_ptr + b * sko_b + (head - HQ) * sko_h + t * sko_t
    x1 = tl.load(src + offs, mask=mask, other=0.0)
    x2 = tl.load(src + HALF + offs, mask=mask, other=0.0)
    dt = x1.dtype
    # out[:half] = x1*c1 + (-x2)*s1 ; out[half:] = x2*c2 + x1*s2, each product and sum rounded to dt
    # (x * -1.0 negates exactly, zero signs included; Triton's unary minus is 0 - x)
    lo = ((x1.to(tl.float32) * c1).to(dt).to(tl.float32) + (x2.to(tl.float32) * -1.0 * s1).to(dt).to(tl.float32)).to(dt)
    hi = ((x2.to(tl.float32) * c2).to(dt).to(tl.float32) + (x1.to(tl.float32) * s2).to(dt).to(tl.float32)).to(dt)
    tl.store(dst + offs, lo, mask=mask)
    tl.store(dst + HALF + offs, hi, mask=mask)


def rotary_supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """The layouts the kernel serves: q/k [B, H, T, D] on CUDA, cos/sin [B or 1, T, D], one float dtype."""
    if not (q.is_cuda and k.is_cuda and cos.is_cuda and sin.is_cuda):
        return False
    if q.ndim != 4 or k.ndim != 4 or cos.ndim != 3 or sin.ndim != 3:
        return False
    if len({q.dtype, k.dtype, cos.dtype, sin.dtype}) != 1 or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    b, _, t, d = q.shape
    if d % 2 or k.shape[0] != b or k.shape[2] != t or k.shape[3] != d:
        return False
    for c in (cos, sin):
        if c.shape[0] not in (1, b) or c.shape[1] != t or c.shape[2] != d or c.stride(-1) != 1:
            return False
    return q.stride(-1) == 1 and k.stride(-1) == 1


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)`` with cos/sin unsqueezed at dim 1."""
    b, hq, t, d = q.shape
    hk = k.shape[1]
    qo = torch.empty_like(q)
    ko = torch.empty_like(k)
    if qo.stride(-1) != 1 or ko.stride(-1) != 1:
        qo, ko = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype,
                                                                                  device=k.device)
    if b * t == 0:
        return qo, ko
    half = d // 2

    def bstride(c: torch.Tensor) -> int:
        return 0 if c.shape[0] == 1 else c.stride(0)

    _rotary_kernel[(b * t, hq + hk)](
        q, k, cos, sin, qo, ko, t, hq, hk,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        bstride(cos), cos.stride(1), bstride(sin), sin.stride(1),
        HALF=half, BLOCK=triton.next_power_of_2(half), num_warps=1,
        enable_fp_fusion=False)
    return qo, ko
