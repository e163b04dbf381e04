"""Audit checks 1–4 on checkpoints with one deliberate flaw each (and on converter output, which has none)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mxmix.audit import audit_checkpoint
from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.example.synthetic import SyntheticSpec, write_synthetic_checkpoint
from mxmix.rules import ENGINES

from .builders import build, layer_of

SPEC = SyntheticSpec(layers=6)
CURRENT = ["sglang", "vllm", "transformers"]


def by_code(result, code, engine=None):
    out = [f for f in result.findings if f.code == code and (engine is None or f.engine == engine)]
    assert len(out) <= 1, out
    return out[0] if out else None


def linear_paths(ckpt: Path, layers: set[int]) -> set[str]:
    """Module paths of the *_proj weights in ``layers``, read with the safetensors library."""
    out = set()
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():  # noqa: SIM118
                if k.endswith("_proj.weight") and layer_of(k) in layers:
                    out.add(k[: -len(".weight")])
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conv")
    src = write_synthetic_checkpoint(root / "bf16", SPEC)
    out = {}
    for style in ("prefix", "full"):
        out[style] = root / style
        quantize_checkpoint(src, out[style], keep_last=2, skip_list_style=style, progress=False)
    return out


def test_seed_case_prefix_list(converted):
    """Last layers listed as 'model.layers.N.' prefixes: clean for sglang 0.5.23, flagged for the #23467
    state (and vLLM exact) with exactly those layers' modules, which they would quantize."""
    result = audit_checkpoint(converted["prefix"])
    expected = linear_paths(converted["prefix"], {4, 5})
    verdicts = {v.engine: v for v in result.verdicts}
    assert set(verdicts) == set(ENGINES) - {"canonical"}
    assert verdicts["sglang"].clean and verdicts["transformers"].clean
    for engine in ("sglang-23467", "vllm"):
        f = by_code(result, "engine-quantizes-stored-bf16", engine)
        assert f is not None and f.severity == "error" and verdicts[engine].consumes
        assert set(f.modules) == expected
        assert "loads sglang-dialect checkpoints" in f.message
    assert by_code(result, "engine-quantizes-stored-bf16", "sglang") is None
    # readings that never load an mxfp8 checkpoint only get notes
    f = by_code(result, "engine-quantizes-stored-bf16", "vllm-compressed-tensors")
    assert f is not None and f.severity == "info" and "does not load sglang-dialect" in f.message
    assert result.exit_code == 1
    # the config (canonical reading) and the structure are fine: only engines misread it
    assert not [f for f in result.findings if f.check in ("config", "structure") and f.severity == "error"]
    assert any(f.check == "rules" and f.code == "trailing-dot" for f in result.findings)


def test_seed_case_narrowed_to_one_engine(converted):
    assert audit_checkpoint(converted["prefix"], engines=["sglang"]).exit_code == 0
    narrowed = audit_checkpoint(converted["prefix"], engines=["sglang-23467"])
    assert narrowed.exit_code == 1 and [v.engine for v in narrowed.verdicts] == ["sglang-23467"]


def test_full_list_is_clean_for_every_consumer(converted):
    result = audit_checkpoint(converted["full"])
    errors = [f for f in result.findings if f.severity == "error"]
    assert errors == [], [f.to_dict() for f in errors]
    assert all(v.clean for v in result.verdicts if v.consumes)


def _quantize_all_but(*names: str):
    return lambda w: not any(w.startswith(n + ".") for n in names) and not w.startswith("lm_head")


def test_config_keeps_module_stored_fp8(tmp_path):
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(), skip_list=["lm_head", "model.layers.3.self_attn.o_proj"])
    result = audit_checkpoint(d, engines=CURRENT)
    f = by_code(result, "config-keeps-but-stored-fp8")
    assert f is not None and f.modules == ("model.layers.3.self_attn.o_proj",) and f.severity == "error"
    engine = by_code(result, "engine-keeps-stored-fp8", "sglang")
    assert engine is not None and engine.modules == ("model.layers.3.self_attn.o_proj",)


def test_bf16_module_no_rule_keeps(tmp_path):
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but("model.layers.1.mlp.down_proj"), skip_list=["lm_head"])
    result = audit_checkpoint(d, engines=CURRENT)
    f = by_code(result, "stored-bf16-not-kept-by-config")
    assert f is not None and f.modules == ("model.layers.1.mlp.down_proj",)
    assert result.exit_code == 1


def _drop(name):
    def mutate(t):
        del t[name]
    return mutate


def _replace(name, fn):
    def mutate(t):
        t[name] = fn(t[name])
    return mutate


@pytest.mark.parametrize(("mutate", "code", "module"), [
    (_drop("model.layers.2.mlp.up_proj.weight_scale_inv"), "missing-scale", "model.layers.2.mlp.up_proj"),
    (_replace("model.layers.0.self_attn.q_proj.weight_scale_inv", lambda s: torch.zeros(s.shape[0], s.shape[1] + 1,
                                                                                         dtype=torch.uint8)),
     "scale-wrong-shape", "model.layers.0.self_attn.q_proj"),
    (_replace("model.layers.0.self_attn.k_proj.weight_scale_inv", lambda s: s.float()),
     "scale-wrong-dtype", "model.layers.0.self_attn.k_proj"),
])
def test_scale_tensor_flaws(tmp_path, mutate, code, module):
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(), skip_list=["lm_head"], mutate=mutate)
    result = audit_checkpoint(d, engines=CURRENT)
    f = by_code(result, code)
    assert f is not None and f.modules == (module,) and f.severity == "error"
    assert result.exit_code == 1


def test_scales_under_another_dialects_name(tmp_path):
    def rename(t):
        for k in [k for k in t if k.endswith("weight_scale_inv") and layer_of(k) == 5]:
            t[k.replace("weight_scale_inv", "weight_scale")] = t.pop(k)
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(), skip_list=["lm_head"], mutate=rename)
    f = by_code(audit_checkpoint(d, engines=CURRENT), "scale-name-not-dialect")
    assert f is not None and set(f.modules) == linear_paths(d, {5})


def test_fp8_without_quantization_config(tmp_path):
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(), skip_list=None)
    result = audit_checkpoint(d)
    f = by_code(result, "fp8-without-quantization-config")
    assert f is not None and set(f.modules) == linear_paths(d, set(range(6)))
    assert not [f for f in result.findings if f.check == "engine"]


def test_plain_bf16_checkpoint_is_clean(converted, tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "plain", SPEC)
    result = audit_checkpoint(d)
    assert result.findings == [] and result.exit_code == 0 and result.dialect == "plain"


def test_partial_qkv_and_gate_up(tmp_path):
    keep = ["lm_head", "model.layers.2.self_attn.v_proj", "model.layers.4.mlp.up_proj"]
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(*keep[1:]), skip_list=keep)
    result = audit_checkpoint(d, engines=["sglang", "vllm"])
    qkv = by_code(result, "mixed-precision-qkv-proj")
    gate_up = by_code(result, "mixed-precision-gate-up-proj")
    assert qkv is not None and set(qkv.modules) == {f"model.layers.2.self_attn.{p}_proj" for p in "qkv"}
    assert gate_up is not None and set(gate_up.modules) == {"model.layers.4.mlp.gate_proj", "model.layers.4.mlp.up_proj"}
    # the config is self-consistent; the serving engines raise on the fused modules
    assert by_code(result, "config-keeps-but-stored-fp8") is None
    raised = [f for f in result.findings if f.code == "engine-raises" and f.engine == "sglang"]
    assert raised and {m for f in raised for m in f.modules} >= {"model.layers.2.self_attn.v_proj"}


def test_every_engine_verdict_counts_its_own_misreads(tmp_path):
    """Each engine's verdict and findings follow its own plan column, also after an engine that raises
    (the error grouping once rebound the list of paths the later engines were compared on)."""
    keep = ["lm_head", "model.layers.2.self_attn.v_proj", "model.layers.4.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(*keep[1:]), skip_list=keep[:3])
    engines = ["sglang", "vllm", "sglang-23467", "transformers", "vllm-substring"]
    result = audit_checkpoint(d, engines=engines)
    assert [v.engine for v in result.verdicts] == engines
    for v in result.verdicts:
        rows = result.plan.rows
        keeps = {r.module.path for r in rows if r.decisions[v.engine].decision == "keep" and r.module.quantized}
        quants = {r.module.path for r in rows if r.decisions[v.engine].decision == "quantize" and not r.module.quantized}
        raises = {r.module.path for r in rows if r.decisions[v.engine].decision == "error"}
        assert (v.keeps_fp8, v.quantizes_bf16, v.raises) == (len(keeps), len(quants), len(raises)), v
        found = {f.code: set(f.modules) for f in result.findings if f.engine == v.engine and f.code != "engine-raises"}
        assert found.get("engine-keeps-stored-fp8", set()) == keeps
        assert found.get("engine-quantizes-stored-bf16", set()) == quants
        raised = {m for f in result.findings if f.engine == v.engine and f.code == "engine-raises" for m in f.modules}
        assert raised == raises
    assert sum(v.raises for v in result.verdicts) >= 2 and any(v.quantizes_bf16 for v in result.verdicts)


def test_experts_not_uniform(tmp_path):
    spec = SyntheticSpec(layers=3, moe="experts", experts=4)
    odd = "model.layers.1.mlp.experts.2"
    keep = ["lm_head", *[f"{odd}.{p}" for p in ("gate_proj", "up_proj", "down_proj")]]
    d = build(tmp_path / "c", spec, fp8=_quantize_all_but(odd), skip_list=keep)
    result = audit_checkpoint(d, engines=["sglang", "vllm", "vllm-compressed-tensors"])
    f = by_code(result, "experts-not-uniform")
    assert f is not None and f.severity == "error"
    assert f.details == {"model.layers.1.mlp.experts": {"mxfp8": 9, "bf16": 3}}
    assert {m.rsplit(".", 2)[0] for m in f.modules} == {"model.layers.1.mlp.experts"}
    # SGLang keeps the whole FusedMoE BF16 because one expert is listed: the other experts are misread
    keeps = by_code(result, "engine-keeps-stored-fp8", "sglang")
    assert keeps is not None and len(keeps.modules) == 9


def test_findings_group_modules(converted):
    f = by_code(audit_checkpoint(converted["prefix"], engines=["sglang-23467"]), "engine-quantizes-stored-bf16",
                "sglang-23467")
    assert f.groups == ["model.layers.[4-5].mlp.{down_proj,gate_proj,up_proj}",
                        "model.layers.[4-5].self_attn.{k_proj,o_proj,q_proj,v_proj}"]


def test_seed_case_with_stacked_experts(tmp_path):
    """Stacked [E, N, K] expert tensors: the FusedMoE of a prefix-listed layer is misread as a whole."""
    src = write_synthetic_checkpoint(tmp_path / "bf16", SyntheticSpec(layers=4, moe="stacked"))
    dst = tmp_path / "prefix"
    quantize_checkpoint(src, dst, keep_last=1, skip_list_style="prefix", progress=False)
    result = audit_checkpoint(dst, engines=["sglang", "sglang-23467"])
    assert [v.clean for v in result.verdicts] == [True, False]
    f = by_code(result, "engine-quantizes-stored-bf16", "sglang-23467")
    assert set(f.modules) == {"model.layers.3.mlp.experts", "model.layers.3.mlp.gate",
                              *(f"model.layers.3.self_attn.{p}_proj" for p in "qkvo")}
    assert not [f for f in result.findings if f.check in ("config", "structure")]


def test_non_mx_fp8_and_k_not_multiple_of_32(tmp_path):
    def e5m2(t):
        name = "model.layers.0.mlp.gate_proj.weight"
        t[name] = t[name].float().to(torch.float8_e5m2)
    d = build(tmp_path / "c", SyntheticSpec(layers=1, hidden=48, intermediate=96, heads=4, kv_heads=4),
              fp8=_quantize_all_but(), skip_list=["lm_head"], mutate=e5m2)
    result = audit_checkpoint(d, engines=["sglang"])
    assert by_code(result, "fp8-not-mxfp8").modules == ("model.layers.0.mlp.gate_proj",)
    k48 = by_code(result, "k-not-multiple-of-32")
    assert set(k48.modules) == {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                                *(f"model.layers.0.self_attn.{p}_proj" for p in "qkvo")}


def test_block_fp8_checkpoint_is_not_judged_by_mx_scale_rules(tmp_path):
    """A DeepSeek-style block-FP8 checkpoint (F32 scales per 128x128 tile) is another method, not broken MXFP8."""
    def block_scales(t):
        for k in [k for k in t if k.endswith("weight_scale_inv")]:
            w = t[k[: -len("weight_scale_inv")] + "weight"]
            t[k] = torch.ones(-(-w.shape[0] // 128), -(-w.shape[1] // 128))
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(), skip_list=["lm_head"], mutate=block_scales,
              config_extra={"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
                                                    "ignored_layers": ["lm_head"]}})
    result = audit_checkpoint(d, engines=["sglang"])
    assert result.dialect == "other:fp8"
    assert {f.code for f in result.findings if f.check == "config"} == {"not-an-mxfp8-dialect"}
    assert result.exit_code == 0


def test_engine_errors_are_grouped_across_layers(tmp_path):
    keep = ["lm_head", *(f"model.layers.{n}.self_attn.v_proj" for n in range(6))]
    d = build(tmp_path / "c", SPEC, fp8=_quantize_all_but(*keep[1:]), skip_list=keep)
    raised = [f for f in audit_checkpoint(d, engines=["sglang"]).findings if f.code == "engine-raises"]
    assert len(raised) == 1 and "e.g. " in raised[0].message
    assert set(raised[0].modules) == {f"model.layers.{n}.self_attn.{p}_proj" for n in range(6) for p in "qkv"}


def test_add_finding_only_reports_non_empty_groups():
    from mxmix.audit.findings import Finding, add_finding

    out: list[Finding] = []
    add_finding(out, "error", "config", "none", "m", "c", [])
    add_finding(out, "warning", "scales", "some", "m", "c", ("a", "b"), bytes={"a": 1})
    add_finding(out, "info", "config", "plain", "m", "c", ["x"])
    assert out == [Finding("warning", "scales", "some", "m", "c", ("a", "b"), details={"bytes": {"a": 1}}),
                   Finding("info", "config", "plain", "m", "c", ("x",))]
