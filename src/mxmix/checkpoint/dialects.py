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
