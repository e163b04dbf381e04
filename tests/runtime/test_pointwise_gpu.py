"""One-kernel RMSNorm and rotary embedding vs the transformers code they replace (CUDA only).

The rotary kernel must be bit-identical (it replaces a module-level function process-wide); the norm
kernel may differ only by the mean's summation order (bf16 rounding of a few elements).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _llama(layers: int = 2, dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(dtype).cuda().eval()


@pytest.mark.parametrize("shape", [(5, 4096), (3, 7, 96), (1, 1, 2048), (2, 5000)])
@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float32, torch.float32)])
def test_rmsnorm_matches_llama_norm(shape, dtype, wdtype) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from mxmix.runtime.kernels.triton_pointwise import rmsnorm

    gen = torch.Generator(device="cuda").manual_seed(sum(shape))
    norm = LlamaRMSNorm(shape[-1], eps=1e-5).cuda().to(wdtype)
    norm.weight.data = (1 + 0.3 * torch.randn(shape[-1], device="cuda", generator=gen)).to(wdtype)
    x = (4 * torch.randn(shape, device="cuda", generator=gen)).to(dtype)
    ref = norm(x)
    got = rmsnorm(x, norm.weight, 1e-5)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert not torch.isnan(got).any()
    diff = (got.float() - ref.float()).abs()
    if dtype == torch.float32:  # no rounding to hide the mean's summation order: a few fp32 ulps
        assert (diff <= 1e-5 * ref.abs() + 1e-6).all(), diff.max()
    else:
        assert (diff <= 2 ** -7 * ref.float().abs() + 1e-6).all(), diff.max()
        assert (diff == 0).float().mean() > 0.95


def test_rmsnorm_strided_rows() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from mxmix.runtime.kernels.triton_pointwise import rmsnorm

    norm = LlamaRMSNorm(128).cuda().to(torch.bfloat16)
    base = torch.randn(6, 256, device="cuda").to(torch.bfloat16)
    x = base[:, 64:192]  # rows 256 apart, elements contiguous
    assert torch.allclose(rmsnorm(x, norm.weight, 1e-6).float(), norm(x).float(), rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,t,hq,hk,d,cos_b", [(1, 1, 32, 8, 128, 1), (2, 9, 4, 2, 64, 2), (2, 3, 6, 6, 96, 1),
                                                (1, 300, 8, 1, 128, 1)])
def test_rotary_is_bit_identical(dtype, b, t, hq, hk, d, cos_b) -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from mxmix.runtime.kernels.triton_pointwise import apply_rotary, rotary_supported

    gen = torch.Generator(device="cuda").manual_seed(b * 1000 + t)
    q = (3 * torch.randn(b, t, hq, d, device="cuda", generator=gen)).to(dtype).transpose(1, 2)
    k = (3 * torch.randn(b, t, hk, d, device="cuda", generator=gen)).to(dtype).transpose(1, 2)
    ang = torch.rand(cos_b, t, d // 2, device="cuda", generator=gen) * 100
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
    assert rotary_supported(q, k, cos, sin)
    rq, rk = apply_rotary_pos_emb(q, k, cos, sin)
    fq, fk = apply_rotary(q, k, cos, sin)
    assert torch.equal(fq, rq) and torch.equal(fk, rk)
    assert torch.equal(torch.signbit(fq), torch.signbit(rq))  # -0.0 vs 0.0 too


def test_rotary_unsupported_layouts_fall_back() -> None:
    from mxmix.runtime.kernels.triton_pointwise import rotary_supported

    q = torch.randn(1, 4, 3, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 3, 64, device="cuda", dtype=torch.bfloat16)
    cos = torch.randn(1, 3, 64, device="cuda", dtype=torch.bfloat16)
    assert rotary_supported(q, k, cos, cos)
    assert not rotary_supported(q, k, cos.float(), cos.float())     # mixed dtypes
    assert not rotary_supported(q, k, cos[:, :2], cos[:, :2])        # wrong T
    assert not rotary_supported(q.cpu(), k.cpu(), cos.cpu(), cos.cpu())
    assert not rotary_supported(q[..., :63], k[..., :63], cos[..., :63], cos[..., :63])  # odd head dim


def test_install_on_llama_keeps_logits_and_can_be_removed() -> None:
    from transformers.models.llama import modeling_llama

    from mxmix.runtime.pointwise import install_pointwise, remove_pointwise

    model = _llama()
    original = modeling_llama.apply_rotary_pos_emb
    ids = torch.randint(0, 1000, (2, 37), device="cuda")
    with torch.inference_mode():
        before = model(ids).logits.float()
    report = install_pointwise(model)
    try:
        assert report.norms == 2 * 2 + 1 and report.norm_classes == ["LlamaRMSNorm"]
        assert "transformers.models.llama.modeling_llama" in report.rotary_modules
        assert modeling_llama.apply_rotary_pos_emb is not original
        assert install_pointwise(model).norms == report.norms  # idempotent
        with torch.inference_mode():
            after = model(ids).logits.float()
        assert float((after - before).norm() / before.norm()) < 1e-2
        # CPU inputs still take the original code path
        assert modeling_llama.apply_rotary_pos_emb(*(t.cpu() for t in _rotary_args()))[0].device.type == "cpu"
    finally:
        remove_pointwise(model)
    assert modeling_llama.apply_rotary_pos_emb is original
    assert not any("forward" in m.__dict__ for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(ids).logits.float(), before)


def _rotary_args():
    q = torch.randn(1, 2, 3, 8, device="cuda", dtype=torch.bfloat16)
    cos = torch.randn(1, 3, 8, device="cuda", dtype=torch.bfloat16)
    return q, q, cos, cos


def test_gemma_norms_are_refused() -> None:
    from transformers import GemmaConfig, GemmaForCausalLM

    from mxmix.runtime.pointwise import install_pointwise, remove_pointwise

    cfg = GemmaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=64, vocab_size=500)
    model = GemmaForCausalLM(cfg).to(torch.bfloat16).cuda().eval()
    report = install_pointwise(model)
    try:
        assert report.norms == 0
        assert any("GemmaRMSNorm" in r for r in report.refused)
    finally:
        remove_pointwise(model)


def test_pointwise_under_graph_decode_matches_eager() -> None:
    from mxmix.runtime.generate import greedy_generate
    from mxmix.runtime.pointwise import install_pointwise, remove_pointwise

    model = _llama(layers=3)
    ids = torch.randint(0, 1000, (1, 12), device="cuda")
    install_pointwise(model)
    try:
        eager = greedy_generate(model, ids, 12, use_cuda_graph=False, stop_at_eos=False)
        graph = greedy_generate(model, ids, 12, use_cuda_graph=True, stop_at_eos=False)
    finally:
        remove_pointwise(model)
    assert graph.mode == "cuda-graph"
    assert graph.tokens == eager.tokens


def test_mxmix_load_on_cuda_installs_pointwise_and_matches_cpu(make_synthetic, tmp_path) -> None:
    import mxmix
    from mxmix.checkpoint.convert import quantize_checkpoint
    from mxmix.runtime.pointwise import remove_pointwise

    src = make_synthetic("pw-src", layers=3, hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=512)
    dst = tmp_path / "pw"
    quantize_checkpoint(src, dst, keep_last=1)
    ids = torch.randint(0, 512, (1, 21))
    cpu = mxmix.load(dst)
    gpu = mxmix.load(dst, device="cuda")
    plain = mxmix.load(dst, device="cuda", pointwise=False)
    try:
        report = gpu.mxmix_load_report.to_dict()
        assert report["pointwise_norms"] == 2 * 3 + 1 and report["pointwise_rotary"]
        assert plain.mxmix_load_report.to_dict()["pointwise_norms"] == 0
        with torch.inference_mode():
            want = cpu(ids).logits.float()
            got = gpu(ids.cuda()).logits.float().cpu()
        assert float((got - want).norm() / want.norm()) < 2e-2
    finally:
        remove_pointwise(gpu)
