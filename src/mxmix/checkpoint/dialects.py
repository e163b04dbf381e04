"""The on-disk MXFP8 dialects: same bytes, different tensor names and config keys.

One table serves the converter (what to write), inspect/audit (what was found) and the runtime
(how to read). See shared docs mxfp8-format.md §5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    name: str
    quant_method: str           # config.json quantization_config.quant_method
    scale_suffix: str           # "<module>.<scale_suffix>" holds the uint8 E8M0 scales
    skip_keys: tuple[str, ...]  # keys under which the writer lists BF16 modules


SGLANG = Dialect("sglang", "mxfp8", "weight_scale_inv", ("ignored_layers", "modules_to_not_convert"))
MODELOPT = Dialect("modelopt", "modelopt", "weight_scale", ("ignore",))
COMPRESSED_TENSORS = Dialect("compressed-tensors", "compressed-tensors", "weight_scale", ("ignore",))

DIALECTS: dict[str, Dialect] = {d.name: d for d in (SGLANG, MODELOPT, COMPRESSED_TENSORS)}
SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale")


def recognise_dialect(quantization_config: dict[str, Any] | None) -> str:
    """Name the dialect a ``quantization_config`` declares: a DIALECTS key, or "plain" / "other:<method>"."""
    qc = quantization_config or {}
    method = qc.get("quant_method")
    if not method:
        return "plain"
    if method == "mxfp8":
        return "sglang"
    if method in ("modelopt", "modelopt_mxfp8", "modelopt_mixed"):
        return "modelopt"
    if method == "compressed-tensors":
        return "compressed-tensors"
    return f"other:{method}"


# ---- writing: tensor names and config per dialect -------------------------------------------------

BLOCK_SIZE = 32


def scale_tensor_name(weight_name: str, dialect: Dialect) -> str:
    """Where a quantized weight's scales go: ``<m>.weight`` → ``<m>.<scale_suffix>``; a stacked expert
    tensor ``<m>.experts.down_proj`` → ``<m>.experts.down_proj_scale_inv`` (transformers' FP8Experts names)."""
    if weight_name.endswith(".weight"):
        return weight_name[: -len("weight")] + dialect.scale_suffix
    return f"{weight_name}_{dialect.scale_suffix.removeprefix('weight_')}"


def quantization_config_for(dialect: Dialect, skip_list: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``quantization_config`` for config.json and any side files ({file name: JSON}) of ``dialect``.

    The same skip list goes under every key the dialect's consumers read (engine-semantics.md §8.5–6).
    """
    skip = list(skip_list)
    if dialect.name == "sglang":
        return {
            "quant_method": "mxfp8",
            "fmt": "e4m3",
            "weight_block_size": [1, BLOCK_SIZE],
            "scale_fmt": "ue8m0",
            "activation_scheme": "dynamic",
            "ignored_layers": skip,
            "modules_to_not_convert": list(skip),
        }, {}
    if dialect.name == "modelopt":
        from mxmix import __version__

        producer = {"name": "mxmix", "version": __version__}
        hf_quant_config = {
            "producer": producer,
            "quantization": {"quant_algo": "MXFP8", "kv_cache_quant_algo": None, "exclude_modules": skip},
        }
        config = {
            "quant_method": "modelopt",
            "quant_algo": "MXFP8",
            "kv_cache_quant_algo": None,
            "producer": producer,
            "ignore": list(skip),
        }
        return config, {"hf_quant_config.json": hf_quant_config}
    if dialect.name == "compressed-tensors":
        weights = {
            "num_bits": 8, "type": "float", "symmetric": True, "group_size": BLOCK_SIZE, "strategy": "group",
            "block_structure": None, "dynamic": False, "actorder": None, "scale_dtype": "torch.uint8",
            "zp_dtype": None, "observer": "memoryless_minmax", "observer_kwargs": {},
        }
        return {
            "quant_method": "compressed-tensors",
            "format": "mxfp8-quantized",
            "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "mxfp8-quantized"}},
            "ignore": skip,
            "kv_cache_scheme": None,
            "global_compression_ratio": None,
        }, {}
    raise ValueError(f"unknown dialect {dialect.name!r}")
