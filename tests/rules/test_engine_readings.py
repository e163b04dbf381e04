"""Every engine reading on the examples of engine-semantics.md (§7 table exactly, plus §2–5 details)."""

from __future__ import annotations

import pytest

from mxmix.rules import ENGINES, compile_rules, decide

Y, N, ERR = "keep", "quantize", "error"
SGLANG_FP8 = ("sglang", "sglang-23467", "sglang-legacy", "sglang-fp8config")
SERVING = tuple(e for e in ENGINES if e.startswith(("sglang", "vllm")))
EVERY = tuple(ENGINES)


def everywhere(value: str, *, but: dict[str, str] | None = None, among=EVERY) -> dict[str, str]:
    out = dict.fromkeys(among, value)
    out.update(but or {})
    return out


# (id, rules, path, {engine: expected}) — transcribed from the §7 table; "everywhere"/"others"
# expand to every reading the row's wording covers, nothing is filled in from our own output.
TABLE = [
    ("1-mlp.gate-vs-gate_up", ["mlp.gate"], "model.layers.0.mlp.gate_up_proj",
     {"sglang": N, "sglang-23467": N, "sglang-fp8config": N, "sglang-legacy": ERR, "vllm": N,
      "vllm-modelopt": Y}),
    ("2-trailing-dot-layer34", ["model.layers.34."], "model.layers.34.mlp.experts.0.down_proj",
     {"sglang": Y, "sglang-fp8config": Y, "sglang-23467": N, "vllm": N, "vllm-modelopt": Y,
      "compressed-tensors": N, "sglang-compressed-tensors": N, "vllm-compressed-tensors": N, "transformers": Y}),
    ("3-layer34-vs-340", ["model.layers.34."], "model.layers.340.mlp.down_proj",
     everywhere(N, but={"transformers": Y})),
    ("4-layer3-vs-34", ["model.layers.3"], "model.layers.34.mlp.down_proj",
     {"canonical": N, "sglang": N, "sglang-23467": N, "sglang-fp8config": N, "vllm": N, "vllm-suffix": N,
      "transformers": N, "sglang-legacy": Y, "vllm-substring": Y, "vllm-modelopt": Y, "transformers-4": Y}),
    ("5-partial-shards", ["model.layers.0.self_attn.q_proj"], "model.layers.0.self_attn.qkv_proj",
     {**everywhere(ERR, among=SERVING), "compressed-tensors": Y}),
    ("6-fused-name-listed", ["model.layers.0.self_attn.qkv_proj"], "model.layers.0.self_attn.qkv_proj",
     {**everywhere(N, among=SGLANG_FP8), "vllm": Y, "vllm-substring": Y, "vllm-suffix": Y,
      "vllm-compressed-tensors": Y, "vllm-modelopt": Y}),
    ("7-one-expert-listed", ["model.layers.5.mlp.experts.7.down_proj"], "model.layers.5.mlp.experts",
     {**everywhere(Y, among=SGLANG_FP8), "vllm": Y, "vllm-compressed-tensors": N}),
    ("7b-expert-zero-listed", ["model.layers.5.mlp.experts.0.down_proj"], "model.layers.5.mlp.experts",
     {**everywhere(Y, among=SGLANG_FP8), "vllm": Y, "vllm-compressed-tensors": ERR}),
    ("8-bare-gate", ["gate"], "model.layers.0.mlp.shared_expert_gate",
     {"sglang": N, "transformers": Y, "transformers-4": Y, "vllm-substring": Y, "vllm-modelopt": Y}),
    ("9-glob", ["*mlp.gate*"], "model.layers.0.mlp.gate_up_proj",
     everywhere(N, but={"sglang-modelopt": Y, "vllm-modelopt": Y, "transformers": ERR},
                among=tuple(e for e in EVERY if e != "canonical"))),
    ("10-regex", ["re:.*mlp.gate$"], "model.layers.0.mlp.gate",
     everywhere(N, but={"sglang-compressed-tensors": Y, "vllm-compressed-tensors": Y, "compressed-tensors": Y},
                among=tuple(e for e in EVERY if e != "canonical"))),
]

CASES = [pytest.param(rules, path, engine, want, id=f"{rid}-{engine}")
         for rid, rules, path, table in TABLE for engine, want in table.items()]


@pytest.mark.parametrize(("rules", "path", "engine", "want"), CASES)
def test_section7_table(rules, path, engine, want):
    d = decide(path, rules, engine)
    assert d.decision == want, d.reason
    assert compile_rules(rules, engine).decide(path) == d
    if want == Y and d.rule is not None:
        assert d.rule in rules


def test_table_covers_every_engine():
    covered = {engine for _, _, _, table in TABLE for engine in table}
    assert covered == set(ENGINES)


def test_canonical_on_the_table_examples():
    # canonical honours globs and re: and is boundary-aware; partial experts / shards are errors
    assert decide("model.layers.0.mlp.gate_up_proj", ["*mlp.gate*"]).decision == Y
    assert decide("model.layers.0.mlp.gate", ["re:.*mlp.gate$"]).decision == Y
    assert decide("model.layers.5.mlp.experts", ["model.layers.5.mlp.experts.7.down_proj"]).decision == ERR
    assert decide("model.layers.0.mlp.shared_expert_gate", ["gate"]).decision == N
    assert decide("model.layers.0.self_attn.qkv_proj", ["model.layers.0.self_attn.qkv_proj"]).decision == Y


def test_errors_name_the_shards():
    d = decide("model.layers.0.self_attn.qkv_proj", ["model.layers.0.self_attn.q_proj"], "sglang")
    assert d.decision == ERR and "ValueError" in d.reason
    assert "model.layers.0.self_attn.q_proj" in d.reason and "k_proj" in d.reason


# ---- §2 SGLang -----------------------------------------------------------------------------------

def test_sglang_never_matches_empty_components():
    for rule in ("", ".", ".model.layers.0"):
        assert decide("model.layers.0.mlp.down_proj", [rule], "sglang").decision == N


def test_sglang_is_case_sensitive_and_does_not_strip_whitespace():
    assert decide("model.layers.0.mlp.down_proj", ["MLP.down_proj"], "sglang").decision == N
    assert decide("model.layers.0.mlp.down_proj", [" mlp.down_proj"], "sglang").decision == N
    assert decide("model.layers.0.mlp.down_proj", [" mlp.down_proj"], "canonical").decision == Y


def test_sglang_legacy_substring_over_matches():
    assert decide("model.layers.0.linear_attn.in_proj_ba", ["in_proj_a"], "sglang-legacy").decision == N
    assert decide("model.layers.0.linear_attn.in_proj_ba", ["in_proj_b"], "sglang-legacy").decision == Y
    assert decide("model.layers.34.mlp.down_proj", ["layers.3"], "sglang-legacy").decision == Y


def test_sglang_shard_names_replace_every_occurrence():
    # a parent component containing the fused name is rewritten too (str.replace), so the shard
    # names the engine builds do not exist and the rules for the real shards never match
    path = "model.qkv_proj_block.self_attn.qkv_proj"
    rules = [f"model.qkv_proj_block.self_attn.{s}" for s in ("q_proj", "k_proj", "v_proj")]
    assert decide(path, rules, "sglang").decision == N
    assert decide(path, rules, "canonical").decision == Y


def test_fp8config_prefix_normalisation_and_trap():
    # every entry E also reads as E without 'model.' (and 'model.' + that)
    assert decide("layers.3.mlp.down_proj", ["model.layers.3.mlp"], "sglang-fp8config").decision == Y
    assert decide("layers.3.mlp.down_proj", ["model.layers.3.mlp"], "sglang").decision == N
    for bad in ("", "."):
        assert decide("model.layers.7.self_attn.o_proj", [bad], "sglang-fp8config").decision == Y
        assert decide("lm_head", [bad], "sglang-fp8config").decision == N
        assert decide("mtp.layers.0.eh_proj", [bad], "sglang-fp8config").decision == N
    d = decide("model.layers.7.self_attn.o_proj", [""], "sglang-fp8config")
    assert d.rule == ""


def test_sglang_compressed_tensors_suffix_not_prefix():
    e = "sglang-compressed-tensors"
    assert decide("model.layers.0.mlp.down_proj", ["mlp.down_proj"], e).decision == Y
    assert decide("model.layers.0.mlp.down_proj", ["model.layers.0.mlp"], e).decision == N
    assert decide("model.layers.0.mlp.down_proj", ["layers.0.mlp.down_proj"], e).decision == Y
    assert decide("model.layers.0.mlp.xdown_proj", ["down_proj"], e).decision == N
    # only a literal listing of the fused name skips the shard check; a suffix rule does not
    assert decide("model.layers.0.self_attn.qkv_proj", ["model.layers.0.self_attn.qkv_proj"], e).decision == Y
    assert decide("model.layers.0.self_attn.qkv_proj", ["self_attn.qkv_proj"], e).decision == N


def test_sglang_modelopt_components_and_tails():
    e = "sglang-modelopt"
    assert decide("model.layers.0.mlp.gate", ["gate"], e).decision == Y          # any 'gate' component
    assert decide("model.layers.0.mlp.gate_proj", ["gate"], e).decision == N
    assert decide("mtp_layers.0.proj", ["mtp*"], e).decision == Y
    assert decide("model.layers.1.self_attn.fused_qkv_a_proj_with_mqa", ["model.layers.1.self_attn.kv_a_proj_with_mqa"],
                  e).decision == Y
    assert decide("language_model.model.layers.0.mlp.down_proj", ["model.layers.0.mlp.down_proj"], e).decision == Y
    # a trailing-dot prefix never reaches a FusedMoE (is_layer_excluded only)
    assert decide("model.layers.5.mlp.experts", ["model.layers.5."], e).decision == N
    assert decide("model.layers.5.mlp.down_proj", ["model.layers.5."], e).decision == Y
    # other regex metacharacters are live: an invalid one raises
    assert decide("model.layers.0.mlp.down_proj", ["model.layers.(0"], e).decision == ERR


# ---- §3 vLLM ---------------------------------------------------------------------------------------

def test_vllm_exact_and_lm_head():
    assert decide("model.layers.0.mlp.down_proj", ["model.layers.0.mlp.down_proj"], "vllm").decision == Y
    assert decide("model.layers.0.mlp.down_proj", ["mlp.down_proj"], "vllm").decision == N
    assert decide("model.layers.0.linear_attn.in_proj_qkv", ["linear_attn.in_proj_qkv"], "vllm").decision == N
    d = decide("lm_head", [], "vllm")
    assert d.decision == Y and d.rule is None and "LM head" in d.reason
    assert decide("lm_head", [], "vllm-substring").decision == N


def test_vllm_layer_rule_never_skips_fused_moe_in_exact_mode():
    assert decide("model.layers.5.mlp.experts", ["model.layers.5.mlp"], "vllm").decision == N
    assert decide("model.layers.5.mlp.experts", ["model.layers.5.mlp"], "vllm-substring").decision == Y


def test_vllm_suffix_mode():
    assert decide("model.layers.0.mlp.down_proj", ["mlp.down_proj"], "vllm-suffix").decision == Y
    assert decide("model.layers.0.mlp.down_proj", ["model.layers.0"], "vllm-suffix").decision == N


def test_vllm_compressed_tensors_expert_zero_only():
    e = "vllm-compressed-tensors"
    zero = [f"model.layers.5.mlp.experts.0.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    assert decide("model.layers.5.mlp.experts", zero, e).decision == Y
    assert decide("model.layers.5.mlp.experts", ["model.layers.5.mlp.experts"], e).decision == N
    assert decide("model.layers.5.mlp.experts", ["re:model\\.layers\\.5\\.mlp\\.experts\\.0\\."], e).decision == Y
    assert decide("model.layers.0.mlp.down_proj", ["re:model.layers.0"], e).decision == Y
    assert decide("model.layers.0.mlp.down_proj", ["re:layers"], e).decision == N


def test_vllm_modelopt_steps():
    e = "vllm-modelopt"
    assert decide("lm_head", ["head"], e).decision == Y
    assert decide("language_model.model.layers.3.mlp.down_proj", ["model.layers.3.mlp"], e).decision == Y
    assert decide("model.layers.12.mlp.down_proj", ["model.layers.1*"], e).decision == Y
    assert decide("model.layers.2.mlp.down_proj", ["model.layers.1*"], e).decision == N
    d = decide("model.vision_tower.blocks.0.attn.proj", [], e)
    assert d.decision == Y and d.rule is None


# ---- §4 transformers ---------------------------------------------------------------------------------

def test_transformers_5_regex_reading():
    e = "transformers"
    assert decide("model.layers.11.mlp.down_proj", ["model.layers.1."], e).decision == Y
    assert decide("model.layers.34.mlp.down_proj", ["model.layers.3*"], e).decision == Y
    assert decide("model.layers.34.mlp.down_proj", ["model.layers.3.*"], e).decision == Y
    assert decide("model.layers.7.self_attn.q_proj", ["model.layers.*.self_attn"], e).decision == Y
    assert decide("model.layers.0.mlp.down_proj", [""], e).decision == Y
    assert decide("lm_head", ["head"], e).decision == Y  # endswith, no boundary
    d = decide("model.layers.0.mlp.down_proj", ["*mlp"], e)
    assert d.decision == ERR and "re.error" in d.reason and d.rule == "*mlp"


def test_transformers_error_only_when_reached():
    e = "transformers"
    # an earlier rule that matches decides before the broken pattern is compiled
    assert decide("lm_head", ["lm_head", "*x"], e).decision == Y
    assert decide("lm_head", ["*x", "lm_head"], e).decision == ERR
    assert compile_rules(["*x", "lm_head"], e).decide("lm_head").decision == ERR


def test_transformers_4_substring():
    e = "transformers-4"
    assert decide("model.layers.0.self_attn.q_proj", ["qkv_proj"], e).decision == N
    assert decide("model.layers.0.self_attn.q_proj", ["q_proj"], e).decision == Y
    assert decide("model.layers.11.mlp", ["layers.1"], e).decision == Y


# ---- §5 compressed-tensors ---------------------------------------------------------------------------

def test_compressed_tensors_any_shard():
    e = "compressed-tensors"
    assert decide("model.layers.0.mlp.gate_up_proj", ["model.layers.0.mlp.up_proj"], e).decision == Y
    assert decide("model.layers.0.mlp.down_proj", ["mlp.down_proj"], e).decision == N
    assert decide("model.layers.0.mlp.down_proj", ["re:(unclosed"], e).decision == ERR


def test_every_engine_has_metadata():
    for info in ENGINES.values():
        assert info.version and info.source and info.summary
        assert info.to_dict()["name"] == info.name


@pytest.mark.parametrize("engine", ["sglang-compressed-tensors", "vllm-compressed-tensors"])
def test_compressed_tensors_engines_check_shards_unless_fused_name_literally_listed(engine):
    qkv = "model.layers.0.self_attn.qkv_proj"
    # a regex that matches the fused path does not stop the shard check (the name is not *in* the list)
    d = decide(qkv, [r"re:model\.layers\.0\.self_attn\.(qkv|q)_proj$"], engine)
    assert d.decision == ERR and "ValueError" in d.reason
    assert decide(qkv, [r"re:model\.layers\.0\.self_attn\.qkv_proj$"], engine).decision == N
    assert decide(qkv, [qkv], engine).decision == Y


def test_sglang_23467_fallback_unfuses_linear_attention():
    path = "model.layers.0.linear_attn.in_proj_ba"
    assert decide(path, ["model.layers.0.linear_attn.in_proj_a"], "sglang-23467").decision == ERR
    assert decide(path, ["model.layers.0.linear_attn.in_proj_ba"], "sglang-23467").decision == N
    # 0.5.23 treats in_proj_ba as the real tensor it is
    assert decide(path, ["model.layers.0.linear_attn.in_proj_ba"], "sglang").decision == Y
