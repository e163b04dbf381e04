"""What a reading answers for one module path: keep (BF16), quantize, or error, and why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from mxmix.errors import MxmixError

KEEP = "keep"
QUANTIZE = "quantize"
ERROR = "error"
OUTCOMES = (KEEP, QUANTIZE, ERROR)

# The serving engines' fallback packed-module mapping: a fused runtime module and the
# checkpoint shards it is built from (engine-semantics.md §2.2).
DEFAULT_FUSED: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}

Fused = Mapping[str, Sequence[str]]


class Decision(NamedTuple):
    """One reading's answer for one path; ``rule`` is the list entry that decided (None if none did).

    A named tuple: immutable, and cheap enough to build 100,000 of in the bulk form.
    """

    path: str
    engine: str
    decision: str
    rule: str | None
    reason: str

    @property
    def keep(self) -> bool:
        return self.decision == KEEP

    def to_dict(self) -> dict[str, Any]:
        return dict(self._asdict())


def normalise_fused(fused: Fused | None) -> dict[str, tuple[str, ...]]:
    """Validate a fused-module mapping (None = the engines' default) into name -> shard names."""
    if fused is None:
        return dict(DEFAULT_FUSED)
    out: dict[str, tuple[str, ...]] = {}
    for name, shards in fused.items():
        if not isinstance(name, str) or not name or "." in name:
            raise MxmixError(f"fused module name {name!r} must be one non-empty path component")
        if isinstance(shards, str) or not shards:
            raise MxmixError(f"fused module {name!r} needs a list of shard names")
        parts = tuple(shards)
        if not all(isinstance(s, str) and s and "." not in s for s in parts):
            raise MxmixError(f"fused module {name!r}: shard names must be non-empty path components")
        out[name] = parts
    return out


def parse_fused_spec(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """CLI form ``NAME=a,b,c`` (repeatable) on top of the default mapping."""
    out = dict(DEFAULT_FUSED)
    for spec in specs:
        name, sep, rest = spec.partition("=")
        shards = [s.strip() for s in rest.split(",") if s.strip()]
        if not sep or not name.strip() or not shards:
            raise MxmixError(f"cannot read --fused {spec!r} (expected NAME=shard1,shard2,...)")
        out[name.strip()] = tuple(shards)
    return normalise_fused(out)
