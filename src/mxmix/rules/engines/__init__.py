"""The registry of readings: name -> what it mirrors (consumer, version, source file) and its builder."""

from __future__ import annotations

from dataclasses import dataclass, field

from mxmix import __version__
from mxmix.errors import MxmixError
from mxmix.rules import canonical
from mxmix.rules.engines.compressed_tensors import build_compressed_tensors
from mxmix.rules.engines.sglang import (
    build_sglang,
    build_sglang_23467,
    build_sglang_compressed_tensors,
    build_sglang_fp8config,
    build_sglang_legacy,
    build_sglang_modelopt,
)
from mxmix.rules.engines.transformers import build_transformers, build_transformers_4
from mxmix.rules.engines.vllm import (
    build_vllm,
    build_vllm_compressed_tensors,
    build_vllm_modelopt,
    build_vllm_substring,
    build_vllm_suffix,
)
from mxmix.rules.reading import ReadingBuilder

FP8_METHODS = ("fp8", "mxfp8")
SGLANG_UTILS = "sgl-project/sglang python/sglang/srt/layers/quantization/utils.py (is_layer_skipped)"
VLLM_UTILS = "vllm-project/vllm vllm/model_executor/layers/quantization/utils/quant_utils.py (is_layer_skipped)"


@dataclass(frozen=True)
class EngineInfo:
    """One reading: the consumer it mirrors and what it consumes.

    ``family`` selects the config-key precedence (config_keys.py); ``dialects`` are the on-disk
    dialects (mxmix.checkpoint.dialects) whose checkpoints this consumer loads; ``globs`` /
    ``regex`` say whether it honours glob characters / ``re:`` rules at all; ``runtime_names``
    that it asks about runtime modules (fused ``qkv_proj`` / ``gate_up_proj``, FusedMoE
    ``…experts``) rather than checkpoint names.
    """

    name: str
    version: str
    source: str
    summary: str
    family: str
    dialects: tuple[str, ...]
    quant_methods: tuple[str, ...]
    globs: bool
    regex: bool
    runtime_names: bool
    build: ReadingBuilder = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "source": self.source, "summary": self.summary,
                "family": self.family, "dialects": list(self.dialects),
                "quant_methods": list(self.quant_methods), "globs": self.globs,
                "regex": self.regex, "runtime_names": self.runtime_names}


_ALL = (
    EngineInfo("canonical", __version__, "mxmix src/mxmix/rules/canonical.py",
               "whole dotted components; re: start-anchored regex; globs on path or ancestors; "
               "fused shards all-or-error; FusedMoE all-or-error",
               "canonical", ("sglang", "modelopt", "compressed-tensors"), ("mxfp8", "modelopt", "modelopt_mxfp8", "compressed-tensors"), True, True, False,
               canonical.build),
    EngineInfo("sglang", "0.5.23", SGLANG_UTILS,
               "dot-boundary component match after rstrip('.') (#26287); shards all-or-ValueError, "
               "fused name never tested; experts branch",
               "sglang", ("sglang",), FP8_METHODS, False, False, True, build_sglang),
    EngineInfo("sglang-23467", "#23467 state (2026-04-22 to 2026-05-25)", SGLANG_UTILS,
               "dot-boundary component match without the trailing-dot strip: 'model.layers.34.' matches nothing",
               "sglang", ("sglang",), FP8_METHODS, False, False, True, build_sglang_23467),
    EngineInfo("sglang-legacy", "before #23467", SGLANG_UTILS,
               "plain substring (over-matches mlp.gate -> mlp.gate_up_proj); experts branch",
               "sglang", ("sglang",), FP8_METHODS, False, False, True, build_sglang_legacy),
    EngineInfo("sglang-fp8config", "0.5.23",
               "sgl-project/sglang python/sglang/srt/layers/quantization/fp8.py (Fp8Config) + utils.py",
               "0.5.23 matching after Fp8Config's 'model.' normalisation of the list ('' keeps every model.* Linear)",
               "sglang", ("sglang",), FP8_METHODS, False, False, True, build_sglang_fp8config),
    EngineInfo("sglang-compressed-tensors", "0.5.23",
               "sgl-project/sglang python/sglang/srt/layers/quantization/compressed_tensors/utils.py "
               "(should_ignore_layer)",
               "re: start-anchored; plain = equal or dotted suffix; a fused path not literally in the list "
               "is decided by its shards (all or ValueError)",
               "sglang", ("compressed-tensors",), ("compressed-tensors", "w8a8_int8"), False, True, True, build_sglang_compressed_tensors),
    EngineInfo("sglang-modelopt", "0.5.23",
               "sgl-project/sglang python/sglang/srt/layers/quantization/modelopt_quant.py (is_layer_excluded) "
               "+ utils.py",
               "is_layer_skipped OR is_layer_excluded ('*'->'.*', full match of path or any component); "
               "FusedMoE: is_layer_excluded only",
               "sglang", ("modelopt",), ("modelopt", "modelopt_fp8", "modelopt_fp4", "modelopt_mixed"), True, False, True, build_sglang_modelopt),
    EngineInfo("vllm", "0.33.0", VLLM_UTILS,
               "exact membership (Fp8Config / mxfp8); packed path direct then shards; experts branch; "
               "LM head never quantized",
               "vllm", ("sglang",), FP8_METHODS, False, False, True, build_vllm),
    EngineInfo("vllm-substring", "0.33.0", VLLM_UTILS,
               "substring mode (AWQ family; older vLLM online mxfp8 skip_with_substr)",
               "vllm", ("sglang",), ("awq", "awq_marlin", "moe_wna16"), False, False, True, build_vllm_substring),
    EngineInfo("vllm-suffix", "0.33.0", VLLM_UTILS,
               "suffix mode: equal or dotted suffix (bailing_moe_v3 only)",
               "vllm", (), (), False, False, True, build_vllm_suffix),
    EngineInfo("vllm-compressed-tensors", "0.33.0",
               "vllm-project/vllm vllm/model_executor/layers/quantization/compressed_tensors/utils.py "
               "(should_ignore_layer)",
               "re: start-anchored else exact; a fused path not literally listed is decided by its shards; "
               "FusedMoE inspects expert 0 only",
               "vllm", ("compressed-tensors",), ("compressed-tensors",), False, True, True, build_vllm_compressed_tensors),
    EngineInfo("vllm-modelopt", "0.33.0",
               "vllm-project/vllm vllm/model_executor/layers/quantization/modelopt.py (is_layer_excluded)",
               "exact is_layer_skipped, then substring (also without language_model.), then fnmatch",
               "vllm", ("modelopt",), ("modelopt", "modelopt_fp8", "modelopt_fp4", "modelopt_mxfp8"), True, False, True, build_vllm_modelopt),
    EngineInfo("transformers", "5.24.0",
               "huggingface/transformers src/transformers/quantizers/quantizers_utils.py (should_convert_module)",
               "rule as regex + dot boundary at the start of the name, or raw suffix; leading '*' raises re.error",
               "transformers", ("sglang", "compressed-tensors"), ("fp8", "mxfp8", "compressed-tensors"), False, False, False, build_transformers),
    EngineInfo("transformers-4", "4.57.6",
               "huggingface/transformers src/transformers/integrations/finegrained_fp8.py",
               "name in list or any rule a substring of it; no list means ['lm_head']; no mxfp8 support",
               "transformers-4", (), ("fp8",), False, False, False, build_transformers_4),
    EngineInfo("compressed-tensors", "0.20.0",
               "vllm-project/compressed-tensors src/compressed_tensors/utils/match.py",
               "re: start-anchored else exact; a name ending in a fused suffix matches iff ANY shard does "
               "(the fused name itself is not tested)",
               "compressed-tensors", ("compressed-tensors",), ("compressed-tensors",), False, True, False, build_compressed_tensors),
)

ENGINES: dict[str, EngineInfo] = {e.name: e for e in _ALL}


def get_engine(name: str) -> EngineInfo:
    try:
        return ENGINES[name]
    except KeyError:
        raise MxmixError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})") from None


def engines_for_dialect(dialect: str | None) -> list[str]:
    """Readings that consume checkpoints of ``dialect`` (a DIALECTS key); all of them for anything else."""
    names = [e.name for e in _ALL if dialect in e.dialects]
    return names if names else list(ENGINES)


def engines_in_family(family: str) -> list[str]:
    return [e.name for e in _ALL if e.family == family]


def engines_for_quant_method(quant_method: str | None) -> list[str]:
    """Readings whose consumer handles ``quant_method`` (e.g. "mxfp8"), canonical included."""
    return [e.name for e in _ALL if quant_method in e.quant_methods or e.name == "canonical"]
