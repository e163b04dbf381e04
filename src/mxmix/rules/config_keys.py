"""Which config key each consumer reads its skip list from, and in what precedence (engine-semantics.md §1).

``skip_list_for(quantization_config, engine)`` returns the list *that engine* would read out of a
checkpoint's ``config.json`` ``quantization_config`` (and ModelOpt's ``hf_quant_config.json``), so
that a rule list can be judged with the key the consumer actually looks at: an empty
``ignored_layers`` hides ``modules_to_not_convert`` from SGLang; vLLM's flat ``mxfp8`` reads only
``ignored_layers``; transformers prefers ``modules_to_not_convert``.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import repeat
from typing import Any

from mxmix.errors import MxmixError
from mxmix.rules.engines import get_engine

_ABSENT = object()
SGLANG_ENV = "SGLANG_FP8_IGNORED_LAYERS"


def _get(config: Mapping[str, Any], key: str) -> Any:
    """The list under ``key``; ``_ABSENT`` when the key is missing or null."""
    value = config.get(key, _ABSENT)
    if value is None or value is _ABSENT:
        return _ABSENT
    if isinstance(value, str) or not isinstance(value, list) or not all(map(isinstance, value, repeat(str))):
        raise MxmixError(f"quantization_config.{key} must be a list of strings, got {value!r:.80}")
    return list(value)


def _first_present(config: Mapping[str, Any], *keys: str) -> list[str]:
    """The first key *present* wins, even when its list is empty."""
    for key in keys:
        value = _get(config, key)
        if value is not _ABSENT:
            return value
    return []


def _first_nonempty(config: Mapping[str, Any], *keys: str) -> list[str]:
    for key in keys:
        value = _get(config, key)
        if value is not _ABSENT and value:
            return value
    return []


def _nested_exclude(hf_quant_config: Mapping[str, Any] | None) -> Any:
    if not isinstance(hf_quant_config, Mapping):
        return _ABSENT
    quant = hf_quant_config.get("quantization")
    if not isinstance(quant, Mapping):
        return _ABSENT
    return _get(quant, "exclude_modules")


def _sglang(qc: Mapping[str, Any], hf: Mapping[str, Any] | None, environ: Mapping[str, str] | None) -> list[str]:
    method = qc.get("quant_method")
    if method in ("fp8", "mxfp8"):
        out = _first_present(qc, "ignored_layers", "modules_to_not_convert")
        extra = (environ or {}).get(SGLANG_ENV, "")
        out += [e.strip() for e in extra.split(",") if e.strip()]
        return out
    if method in ("modelopt", "modelopt_fp8"):
        nested = _nested_exclude(hf)
        return nested if nested is not _ABSENT else _first_present(qc, "ignore")
    if method == "modelopt_fp4":
        nested = _nested_exclude(hf)
        return nested if nested is not _ABSENT else _first_present(
            qc, "ignore", "modules_to_not_convert", "exclude_modules")
    if method == "modelopt_mixed":
        return _first_present(qc, "ignore", "exclude_modules")
    if method in ("compressed-tensors", "w8a8_int8"):
        return _first_present(qc, "ignore")
    if method == "quark":
        return _first_present(qc, "exclude")
    if method in ("awq", "awq_marlin", "moe_wna16", "gguf"):
        return _first_present(qc, "modules_to_not_convert")
    return []  # w8a8_fp8, mxfp4 and unknown methods read no list


def _vllm(qc: Mapping[str, Any], hf: Mapping[str, Any] | None) -> list[str]:
    method = qc.get("quant_method")
    if method == "fp8":
        return _first_nonempty(qc, "ignored_layers", "modules_to_not_convert")
    if method == "mxfp8" and not qc.get("quant_algo"):
        return _first_present(qc, "ignored_layers")
    if (isinstance(method, str) and method.startswith("modelopt")) or method == "mxfp8":
        nested = _nested_exclude(hf)
        if nested is not _ABSENT:
            return nested
        return _first_present(qc, "ignore", "exclude_modules")
    if method == "compressed-tensors":
        return _first_present(qc, "ignore")
    if method == "quark":
        return _first_present(qc, "exclude")
    if method in ("awq", "awq_marlin", "gptq", "gptq_marlin", "moe_wna16"):
        return _first_present(qc, "modules_to_not_convert")
    return []


def _transformers(qc: Mapping[str, Any]) -> list[str]:
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        return _first_present(qc, "ignore")
    value = _get(qc, "modules_to_not_convert")
    if value is _ABSENT and method in ("fp8", "mxfp8"):
        value = _get(qc, "ignored_layers")
    # No list given: the quantizer adds the output embedding (lm_head) itself.
    return ["lm_head"] if value is _ABSENT else value


def _transformers_4(qc: Mapping[str, Any]) -> list[str]:
    value = _get(qc, "modules_to_not_convert")
    return ["lm_head"] if value is _ABSENT else value


def _canonical(qc: Mapping[str, Any], hf: Mapping[str, Any] | None) -> list[str]:
    """What the writer meant: every skip key of the checkpoint's dialect, merged in order."""
    nested = _nested_exclude(hf)
    candidates = [nested] if nested is not _ABSENT else []
    for key in ("ignored_layers", "modules_to_not_convert", "ignore", "exclude_modules", "exclude"):
        candidates.append(_get(qc, key))
    # first occurrence of each rule, in key order (a dict keeps insertion order: linear, not quadratic)
    merged: dict[str, None] = {}
    for value in candidates:
        if value is not _ABSENT:
            merged.update(dict.fromkeys(value))
    return list(merged)


def skip_list_for(quantization_config: Mapping[str, Any] | None, engine: str,
                  hf_quant_config: Mapping[str, Any] | None = None, *,
                  environ: Mapping[str, str] | None = None) -> list[str]:
    """The skip list ``engine`` reads from this config, with that consumer's key precedence.

    For ``sglang-fp8config`` the list comes back after Fp8Config's ``model.`` normalisation (each
    entry without a leading ``model.`` and with it), which is what its matcher receives; reading
    it again with that engine is idempotent. ``hf_quant_config`` is ModelOpt's ``hf_quant_config.json`` (its nested
    ``quantization.exclude_modules`` wins for ModelOpt methods). ``environ`` stands for the
    serving process's environment (SGLang appends ``SGLANG_FP8_IGNORED_LAYERS``); it is not read
    from this process unless passed.
    """
    qc = quantization_config or {}
    if not isinstance(qc, Mapping):
        raise MxmixError("quantization_config must be a JSON object")
    family = get_engine(engine).family
    if engine == "sglang-fp8config":
        # Fp8Config hands is_layer_skipped the list after its model. normalisation
        from mxmix.rules.engines.sglang import fp8config_entries

        raw = _sglang(qc, hf_quant_config, environ)
        return list(dict.fromkeys(e for _, e in fp8config_entries(raw)))
    if family == "sglang":
        return _sglang(qc, hf_quant_config, environ)
    if engine == "vllm-substring" and qc.get("quant_method") == "mxfp8":
        # the older vLLM online mxfp8 (quantization/mxfp8.py): ignored_layers, then modules_to_not_convert
        return _first_nonempty(qc, "ignored_layers", "modules_to_not_convert")
    if family == "vllm":
        return _vllm(qc, hf_quant_config)
    if family == "transformers":
        return _transformers(qc)
    if family == "transformers-4":
        return _transformers_4(qc)
    if family == "compressed-tensors":
        return _first_present(qc, "ignore")
    return _canonical(qc, hf_quant_config)
