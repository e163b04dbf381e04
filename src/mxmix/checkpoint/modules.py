"""A checkpoint's Linear modules, from safetensors headers alone (no tensor data is read).

Recognised: 2-D ``<m>.weight`` tensors of Linear-like modules (attention and MLP projections, fused
``qkv_proj`` / ``gate_up_proj``, per-expert ``experts.N.*``, ``lm_head``, router gates), 3-D stacked
expert tensors (``…mlp.experts.gate_up_proj`` ``[E, N, K]``, ``…mlp.experts.down_proj``) — reported
under the FusedMoE module path ``…mlp.experts`` — and their scale companions
(``weight_scale_inv`` / ``weight_scale``, ``<proj>_scale_inv`` / ``<proj>_scale`` for stacked).
Embeddings are never Linear; norms and biases are not ``.weight`` matrices.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.safetensors_header import FLOAT_DTYPES, FP8_DTYPES, _gc_paused

EMBEDDING_NAMES = frozenset({
    "embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings", "token_type_embeddings",
    "embed_positions", "embeddings", "embed_in", "tok_embeddings", "shared", "embedding", "embed",
})
STACKED_SUFFIXES = ("_scale_inv", "_scale", "_bias", "_blocks", "_scales", "_zero_point", "_input_scale")
LAYER_CONTAINERS = frozenset({"layers", "layer", "h", "blocks", "block"})
MX_SCALE_DTYPES = frozenset({"U8", "F8_E8M0"})
_DIGITS = re.compile(r"(\d+)")
_HAS_DIGIT = re.compile(r"\d")


class LinearModule(NamedTuple):
    """One Linear weight: ``path`` is the runtime module (``…mlp.experts`` for stacked experts).

    A named tuple (immutable, compared and hashed by value like the frozen dataclass it replaced):
    10^5 of them are built per large MoE checkpoint, straight from tuples.
    """

    path: str
    weight: str
    dtype: str
    shape: tuple[int, ...]
    layer: int | None
    kind: str
    scale: str | None
    stacked: bool
    expert: int | None
    scale_dtype: str | None = None

    @property
    def precision(self) -> str:
        """What is stored: "mxfp8" (E4M3 + E8M0 block scales), "fp8" (other FP8), else the dtype ("bf16")."""
        return stored_precision(self.dtype, self.scale_dtype, self.scale is not None)

    @property
    def quantized(self) -> bool:
        return self.dtype in FP8_DTYPES

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "weight": self.weight, "dtype": self.dtype, "shape": list(self.shape),
                "layer": self.layer, "kind": self.kind, "scale": self.scale, "stacked": self.stacked,
                "expert": self.expert, "precision": self.precision}


def stored_precision(dtype: str, scale_dtype: str | None, has_scale: bool) -> str:
    """``LinearModule.precision`` from the three fields it depends on (bulk readers memoise it)."""
    if dtype == "F8_E4M3" and (scale_dtype in MX_SCALE_DTYPES or (scale_dtype is None and has_scale)):
        return "mxfp8"
    if dtype in FP8_DTYPES:
        return "fp8"
    return dtype.lower()


def precisions_of(items: Sequence[Any]) -> list[str]:
    """Each item's ``precision``. For ``LinearModule``s it is decided per distinct dtype (10^5 modules,
    a handful of dtypes) instead of one property call each; only when some E4M3 weight has no E8M0
    scale dtype are (dtype, scale dtype, has scale) keys formed. Any other object (a ``ModuleView``)
    is asked."""
    if not items or set(map(type, items)) != {LinearModule}:
        return list(map(_PRECISION, items))
    dtypes = list(map(_DTYPE, items))
    by_dtype = {d: stored_precision(d, None, False) for d in set(dtypes)}
    if "F8_E4M3" in by_dtype:
        e4m3 = list(map(operator.eq, dtypes, itertools.repeat("F8_E4M3")))
        if not set(itertools.compress(map(_SCALE_DTYPE, items), e4m3)) <= MX_SCALE_DTYPES:
            keys = list(zip(dtypes, map(_SCALE_DTYPE, items),
                            map(operator.is_not, map(_SCALE, items), itertools.repeat(None))))
            memo = {key: stored_precision(*key) for key in set(keys)}
            return list(map(memo.__getitem__, keys))
        by_dtype["F8_E4M3"] = stored_precision("F8_E4M3", "U8", True)   # every E4M3 weight: E8M0 scales
    return list(map(by_dtype.__getitem__, dtypes))


# LinearModule fields by position (itemgetter is several times faster than attrgetter on named tuples)
_DTYPE, _SCALE, _SCALE_DTYPE = map(operator.itemgetter, (2, 6, 9))
_PRECISION = operator.attrgetter("precision")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``layers.2`` before ``layers.10``."""
    parts = _DIGITS.split(name)          # text, digits, text, ...: the digit runs are the odd items
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


def natural_keys(names: Sequence[str]) -> list[tuple[Any, ...]]:
    """``[natural_key(n) for n in names]``, faster on names that share parents.

    A digit run never spans a dot, so when the last two components hold no digit the key is the
    (memoised) key of the grandparent path with its trailing text extended.
    """
    split = _DIGITS.split
    parents: dict[str, tuple[Any, ...]] = {}
    plain_tails: dict[str, bool] = {}
    out: list[tuple[Any, ...]] = []
    append = out.append
    for name in names:
        head, _, tail = name.rpartition(".")
        grand, dot, mid = head.rpartition(".")
        tail = f".{mid}.{tail}"
        plain = plain_tails.get(tail)
        if plain is None:
            plain = plain_tails[tail] = _HAS_DIGIT.search(tail) is None
        if plain and dot:
            key = parents.get(grand)
            if key is None:
                parts = split(grand)
                parts[1::2] = map(int, parts[1::2])
                key = parents[grand] = tuple(parts)
            append((*key[:-1], key[-1] + tail))
        else:
            append(natural_key(name))
    return out


def layer_index(parts: list[str]) -> int | None:
    """The decoder layer a module belongs to: the number after ``layers`` / ``h`` / ``blocks``."""
    for prev, cur in itertools.pairwise(parts):
        if prev in LAYER_CONTAINERS and cur.isdigit():
            return int(cur)
    return None


def decoder_layer(path: str) -> tuple[str, int] | None:
    """(the decoder layer's module path, its number) for a module inside one, e.g.
    ``model.layers.3.mlp.up_proj`` → ``("model.layers.3", 3)``; the same reading as :func:`layer_index`."""
    parts = path.split(".")
    for i in range(1, len(parts) - 1):
        if parts[i - 1] in LAYER_CONTAINERS and parts[i].isdigit():
            return ".".join(parts[:i + 1]), int(parts[i])
    return None


_WEIGHT_DTYPES = frozenset(FLOAT_DTYPES) | frozenset(FP8_DTYPES)


def _parent_facts(parent: str) -> tuple[int | None, int | None, str | None]:
    """What a module's parent path fixes: its decoder layer (unless the module name itself is the
    layer number), and for per-expert modules the expert and the kind's prefix.

    ``kind_prefix`` is None when ``experts`` is not a parent component; when the parent ends in
    ``experts`` the expert is None (the module's own name is then the expert number).
    """
    if not parent:
        return None, None, None
    parts = parent.split(".")
    layer = layer_index(parts)
    if "experts" not in parts:
        return layer, None, None
    k = len(parts) - 1 - parts[::-1].index("experts")
    rest = parts[k + 1:]
    if not rest:
        return layer, None, ""
    if not rest[0].isdigit():
        return layer, None, None
    return layer, int(rest[0]), "experts." + "".join(p + "." for p in rest[1:])


def linear_modules(ckpt: Checkpoint) -> list[LinearModule]:
    """Every Linear module of ``ckpt``, naturally sorted by weight name; headers only.

    Computed once per opened checkpoint (``Checkpoint.derived``): inspect, plan and audit on one open
    share it. The list is a fresh copy; the (frozen) modules are shared."""
    return list(linear_table(ckpt).modules)


class LinearTable(NamedTuple):
    """``linear_modules`` with, per module, the rows (in ``Checkpoint.columns``) of its weight and of
    its scale (-1: none), so that module views need no name lookups."""

    modules: list[LinearModule]
    weight_rows: list[int]
    scale_rows: list[int]


def linear_table(ckpt: Checkpoint) -> LinearTable:
    """The checkpoint's ``LinearTable``, computed once per opened checkpoint (see ``linear_modules``)."""
    return ckpt.derived("linear_modules", lambda: _build_linear_modules(ckpt))


def _build_linear_modules(ckpt: Checkpoint) -> LinearTable:
    with _gc_paused(promote=True):  # ~10^5 small acyclic objects, kept with the checkpoint
        return _linear_modules(ckpt)


def _linear_modules(ckpt: Checkpoint) -> LinearTable:
    # One pass over the checkpoint's columns (no per-tensor objects): string tests before any split,
    # per-parent facts and per-component sort texts memoised, modules built straight from tuples,
    # then one sort on plain strings ordered like natural_key.
    cols = ckpt.columns
    dtypes = cols.dtypes
    row_of = ckpt.row_of
    weight_dtypes = _WEIGHT_DTYPES
    new = tuple.__new__
    paths = _PathFacts()
    facts_of = paths.facts
    known_parents = paths.memo
    tails: dict[str, str | None] = {}               # last component -> its sort-text tail; None: not Linear
    n_rows = len(dtypes)
    rows: list[LinearModule] = []
    keys: list[str] = []
    weight_rows: list[int] = []
    scale_rows: list[int] = []
    append = rows.append
    append_key = keys.append
    append_weight = weight_rows.append
    append_scale = scale_rows.append
    names = cols.names
    for name, dtype, shape, i in zip(names, dtypes, cols.shapes, itertools.count(1)):   # i: the next row
        if dtype not in weight_dtypes:
            continue
        ndim = len(shape)
        if ndim == 2 and name[-7:] == ".weight":
            module = name[:-7]
            parent, dot, last = module.rpartition(".")
            tail = tails.get(last, "")
            if tail == "":
                tail = tails[last] = (None if last in EMBEDDING_NAMES or "embed" in last or "norm" in last
                                      else "." + paths.component(last) + ".weight")
            if tail is None:
                continue
            facts = known_parents.get(parent)
            if facts is None:
                facts = facts_of(parent)
            layer, expert, kind_prefix, in_container, parent_key = facts
            if layer is None and in_container and last.isdigit():
                layer = int(last)
            if kind_prefix is None or last == "experts":
                kind = last
                expert = None
            elif expert is None:          # <...>.experts.<last>: last is the expert number
                if last.isdigit():
                    expert = int(last)
                    kind = "experts"
                else:
                    kind = last
            else:
                kind = kind_prefix + last
            scale = module + ".weight_scale_inv"
            # writers put a weight's scale right after it (sorted names): compare before hashing
            j = i if i < n_rows and names[i] == scale else row_of.get(scale)
            if j is None:
                scale = module + ".weight_scale"
                j = i if i < n_rows and names[i] == scale else row_of.get(scale)
            if j is None:
                append(new(LinearModule, (module, name, dtype, shape, layer, kind, None, False, expert, None)))
                append_scale(-1)
            else:
                append(new(LinearModule, (module, name, dtype, shape, layer, kind, scale, False, expert, dtypes[j])))
                append_scale(j)
            append_weight(i - 1)
            append_key(parent_key + tail if dot else tail[1:])
        elif ndim == 3 and "experts" in name:
            stacked = _stacked_module(name, dtype, shape, row_of, dtypes)
            if stacked is not None:
                append(stacked)
                append_weight(i - 1)
                append_scale(row_of[stacked.scale] if stacked.scale else -1)
                append_key(paths.text(name))
    if paths.unusual:        # a name with a character the sort texts use as a marker
        keys = natural_keys([m.weight for m in rows])   # type: ignore[assignment]
    order = sorted(range(len(rows)), key=keys.__getitem__)
    return LinearTable(list(map(rows.__getitem__, order)), list(map(weight_rows.__getitem__, order)),
                       list(map(scale_rows.__getitem__, order)))


def _stacked_module(name: str, dtype: str, shape: tuple[int, ...], row_of: dict[str, int],
                    dtypes: list[str]) -> LinearModule | None:
    """A 3-D stacked-experts tensor ``<p>.experts.<proj>[.weight]`` as its FusedMoE module, else None."""
    parts = name.split(".")
    if len(parts) < 2 or "experts" not in parts[:-1]:
        return None
    tail = parts[-1]
    if tail == "weight":
        k = len(parts) - 2
        proj = parts[-2]
    else:
        k = len(parts) - 1
        proj = tail
    if parts[k - 1] != "experts" or proj.endswith(STACKED_SUFFIXES) or "bias" in proj:
        return None
    module = ".".join([*parts[:k - 1], "experts"])
    candidates = ([f"{name[:-len('.weight')]}.weight_scale_inv", f"{name[:-len('.weight')]}.weight_scale"]
                  if tail == "weight" else [f"{name}_scale_inv", f"{name}_scale"])
    scale = next((c for c in candidates if c in row_of), None)
    return LinearModule(module, name, dtype, tuple(shape), layer_index(parts[:k]), f"experts.{proj}", scale, True,
                        None, dtypes[row_of[scale]] if scale else None)


def _number_text(m: re.Match[str]) -> str:
    digits = str(int(m.group()))
    return f"\x01{chr(0x20 + len(digits))}{digits}"


class _PathFacts:
    """Per module path, memoised component by component: its decoder layer, expert and kind prefix
    (what :func:`_parent_facts` reads), whether it ends in a layer container, and its sort text.

    Sort texts order like :func:`natural_key`: each digit run becomes ``\x01`` + a character for its
    length + its digits without leading zeros. The marker sorts below every character a validated
    tensor name holds (so a text that ends, or meets a number, where the other goes on with text
    sorts first, as the shorter tuple item does), and numbers compare by length, then digit by digit:
    numerically. A digit run never spans a dot, so texts compose component by component.
    """

    def __init__(self) -> None:
        self._components: dict[str, str] = {}
        # path -> (layer, expert, kind_prefix, ends in a layer container, sort text)
        self.memo: dict[str, tuple[int | None, int | None, str | None, bool, str]] = {
            "": (None, None, None, False, "")}
        self.unusual = False      # a name held "\x00" or "\x01": callers fall back to natural_keys

    def component(self, c: str) -> str:
        text = self._components.get(c)
        if text is None:
            if "\x00" in c or "\x01" in c:
                self.unusual = True
            text = self._components[c] = _DIGITS.sub(_number_text, c) if _HAS_DIGIT.search(c) else c
        return text

    def facts(self, p: str) -> tuple[int | None, int | None, str | None, bool, str]:
        memo = self.memo
        head, dot, c = p.rpartition(".")
        known = memo.get(head)
        if known is not None and dot:      # the usual case: the parent's parent is known (one step)
            out = memo[p] = self._extend(known, c, False)
            return out
        pending = []
        while p not in memo:            # walk up to the nearest known ancestor (no recursion)
            head, _, last = p.rpartition(".")
            pending.append((p, last))
            p = head
        out = memo[p]
        for path, c in reversed(pending):
            out = memo[path] = self._extend(out, c, "." not in path)
        return out

    def _extend(self, facts: tuple[int | None, int | None, str | None, bool, str], c: str,
                first: bool) -> tuple[int | None, int | None, str | None, bool, str]:
        """The facts of ``<path>.c`` (of ``c`` alone when ``first``) from those of ``<path>``: what
        _parent_facts reads, one component at a time."""
        layer, expert, prefix, in_container, text = facts
        if layer is None and in_container and c.isdigit():
            layer = int(c)
        if c == "experts":
            expert, prefix = None, ""
        elif prefix == "":
            expert, prefix = (int(c), "experts.") if c.isdigit() else (None, None)
        elif prefix is not None:
            prefix = prefix + c + "."
        ct = self._components.get(c)
        if ct is None:
            ct = self.component(c)
        return layer, expert, prefix, c in LAYER_CONTAINERS, ct if first else text + "." + ct

    def text(self, p: str) -> str:
        return self.facts(p)[4]


__all__ = ["LinearModule", "layer_index", "linear_modules", "natural_key", "natural_keys"]
