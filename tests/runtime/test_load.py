"""mxmix.load: mixed checkpoints become transformers models with compressed MXFP8 Linears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mxmix
from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.checkpoint.layout import Checkpoint
from mxmix.errors import MxmixError
from mxmix.runtime import MXFP8Linear, set_cpu_weight_cache

TINY = {"layers": 3, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2, "vocab": 256}


def _mixed(make_synthetic, tmp_path: Path, name: str = "m", shards: int = 1, keep_last: int = 1, **spec) -> Path:
    src = make_synthetic(f"{name}-src", shards=shards, **{**TINY, **spec})
    dst = tmp_path / name
    quantize_checkpoint(src, dst, keep_last=keep_last, max_shard_size=20_000 if shards > 1 else 5 * 10**9)
    return dst


def _hf_reference(path: Path):
    """transformers' own load of the same checkpoint (its mxfp8 support dequantizes on a CPU)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()


def _rewrite_config(path: Path, edit) -> None:
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("tie,shards", [(True, 1), (False, 3)])
def test_synthetic_mixed_checkpoint_matches_transformers(make_synthetic, tmp_path, tie: bool, shards: int) -> None:
    path = _mixed(make_synthetic, tmp_path, shards=shards, tie_embeddings=tie)
    model = mxmix.load(path)
    report = model.mxmix_load_report
    # the plan: layers 0-1 MXFP8, layer 2 and lm_head BF16
    q_mods = {n for n, m in model.named_modules() if isinstance(m, MXFP8Linear)}
    assert q_mods == {f"model.layers.{i}.{p}" for i in (0, 1) for p in
                      ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert isinstance(model.model.layers[2].mlp.up_proj, torch.nn.Linear)
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float8_e4m3fn
    assert report.tied_embeddings == tie
    if tie:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    # memory ~ checkpoint size: no BF16 copy of the quantized weights anywhere
    assert report.weight_bytes <= Checkpoint.open(path).total_bytes * 1.02
    ids = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = _hf_reference(path)
    with torch.no_grad():
        got, want = model(ids).logits.float(), ref(ids).logits.float()
    assert float((got - want).norm() / want.norm()) < 1e-3
    out = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 16)


def test_config_that_contradicts_tensors_is_refused(make_synthetic, tmp_path) -> None:
    path = _mixed(make_synthetic, tmp_path)
    kept = "model.layers.2.mlp.up_proj"

    def drop(cfg):  # config now says layer 2's up_proj is MXFP8, but it is stored BF16
        qc = cfg["quantization_config"]
        for key in ("ignored_layers", "modules_to_not_convert"):
            qc[key] = [r for r in qc.get(key, []) if r != kept]

    _rewrite_config(path, drop)
    with pytest.raises(MxmixError) as exc:
        mxmix.load(path)
    msg = str(exc.value)
    assert kept in msg and "mxmix audit" in msg and "disagree" in msg


def test_config_keeping_a_quantized_module_is_refused(make_synthetic, tmp_path) -> None:
    path = _mixed(make_synthetic, tmp_path)

    def add(cfg):
        for key in ("ignored_layers", "modules_to_not_convert"):
            cfg["quantization_config"][key].append("model.layers.0.self_attn")

    _rewrite_config(path, add)
    with pytest.raises(MxmixError, match=r"model\.layers\.0\.self_attn\.q_proj.*mxmix audit"):
        mxmix.load(path)


def test_missing_quantization_config_or_foreign_method_is_refused(make_synthetic, tmp_path) -> None:
    path = _mixed(make_synthetic, tmp_path)
    _rewrite_config(path, lambda cfg: cfg.pop("quantization_config"))
    with pytest.raises(MxmixError, match="no quantization_config"):
        mxmix.load(path)
    _rewrite_config(path, lambda cfg: cfg.update(quantization_config={"quant_method": "awq"}))
    with pytest.raises(MxmixError, match="not an MXFP8 format"):
        mxmix.load(path)


def test_plain_bf16_checkpoint_loads_as_is(make_synthetic) -> None:
    model = mxmix.load(make_synthetic("plain", **TINY))
    assert not any(isinstance(m, MXFP8Linear) for m in model.modules())
    assert model.mxmix_load_report.dialect == "plain"


def test_moe_layouts_are_refused_clearly(make_synthetic, tmp_path) -> None:
    # transformers builds Qwen3-MoE experts as fused 3-D tensors: per-expert MXFP8 Linears have no home
    per_expert = _mixed(make_synthetic, tmp_path, "experts", keep_last=0, moe="experts", intermediate=64)
    with pytest.raises(MxmixError, match=r"experts\.0\..*no nn\.Linear"):
        mxmix.load(per_expert)
    stacked = _mixed(make_synthetic, tmp_path, "stacked", keep_last=0, moe="stacked", intermediate=64)
    with pytest.raises(MxmixError, match="stacked 3-D MXFP8 expert tensors"):
        mxmix.load(stacked)


def test_bad_device_and_dtype(make_synthetic, tmp_path) -> None:
    path = _mixed(make_synthetic, tmp_path)
    with pytest.raises(MxmixError, match="dtype"):
        mxmix.load(path, dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(MxmixError, match="no CUDA GPU"):
            mxmix.load(path, device="cuda")


@pytest.mark.slow
def test_smollm2_mixed_matches_transformers_mxfp8_and_generates(smollm2_mixed) -> None:
    from transformers import AutoTokenizer

    model = mxmix.load(smollm2_mixed)
    assert model.mxmix_load_report.mxfp8_modules and model.mxmix_load_report.bf16_modules
    tok = AutoTokenizer.from_pretrained(smollm2_mixed)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    ref = _hf_reference(smollm2_mixed)
    with torch.no_grad():
        got, want = model(ids).logits.float(), ref(ids).logits.float()
    del ref
    assert float((got - want).norm() / want.norm()) < 1e-3
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    set_cpu_weight_cache(model, True)
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.strip()
    assert "Paris" in text


def test_tiled_load_gives_the_same_logits_and_state_dict(make_synthetic, tmp_path) -> None:
    # every projection tiles (N a multiple of 64, K of 256): the tiled layout the Hopper kernel reads
    path = _mixed(make_synthetic, tmp_path, hidden=256, intermediate=512)
    tiled = mxmix.load(path, tile=True)
    plain = mxmix.load(path, tile=False)
    assert tiled.mxmix_load_report.tiled_modules == 14 and plain.mxmix_load_report.tiled_modules == 0
    assert tiled.mxmix_load_report.fused_groups == plain.mxmix_load_report.fused_groups == 4
    assert all(m.tiled for m in tiled.modules() if isinstance(m, MXFP8Linear))
    assert mxmix.load(path).mxmix_load_report.tiled_modules == 0  # the default tiles only where it pays (CUDA)
    ids = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(tiled(ids).logits, plain(ids).logits)
    sd_t, sd_p = tiled.state_dict(), plain.state_dict()
    assert set(sd_t) == set(sd_p)
    for key, t in sd_p.items():
        assert torch.equal(sd_t[key].view(torch.uint8) if t.dtype == torch.float8_e4m3fn else sd_t[key],
                           t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t), key


@pytest.mark.gpu
def test_cuda_load_tiles_where_the_hopper_kernel_reads_it_and_decodes_the_same(make_synthetic, tmp_path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from mxmix.runtime.generate import greedy_generate
    from mxmix.runtime.kernels import gluon_wgmma

    path = _mixed(make_synthetic, tmp_path, hidden=256, intermediate=512)
    # pointwise=False: installing the rotary kernel patches transformers' module for the whole process
    auto = mxmix.load(path, device="cuda", pointwise=False)
    plain = mxmix.load(path, device="cuda", tile=False, pointwise=False)
    hopper = gluon_wgmma.AVAILABLE and torch.cuda.get_device_capability()[0] == 9
    assert auto.mxmix_load_report.tiled_modules == (14 if hopper else 0)
    ids = torch.randint(3, 256, (1, 9), generator=torch.Generator().manual_seed(2)).cuda()
    with torch.no_grad():
        a, p = auto(ids).logits.float(), plain(ids).logits.float()  # prefill M = 9: the decode kernels
    assert torch.equal(a, p)
    ga, gp = greedy_generate(auto, ids, 6, stop_at_eos=False), greedy_generate(plain, ids, 6, stop_at_eos=False)
    assert ga.tokens == gp.tokens and len(ga.tokens) == 6
