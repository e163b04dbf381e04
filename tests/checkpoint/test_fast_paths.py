"""The bulk fast paths of open / linear_modules / module_views / inspect against the straightforward
readings they replace, on random and hostile inputs.

The references below are the previous per-tensor implementations (kept here, verbatim in logic):
every answer, and every refusal message, must be the same.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxmix.checkpoint.inspect import (
    DTYPE_SIZES,
    ModuleView,
    _precision_rank,
    checkpoint_dialect,
    grouped_sums,
    grouped_sums_reference,
    inspect_checkpoint,
    layer_summary,
    module_views,
    skip_key_values,
)
from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.modules import (
    _WEIGHT_DTYPES,
    EMBEDDING_NAMES,
    LAYER_CONTAINERS,
    STACKED_SUFFIXES,
    LinearModule,
    _parent_facts,
    _PathFacts,
    layer_index,
    linear_modules,
    natural_key,
)
from mxmix.checkpoint.safetensors_header import (
    HeaderColumns,
    SafetensorsHeader,
    TensorInfo,
    _check_end,
    fast_columns,
    read_entries,
    read_header,
)
from mxmix.errors import CheckpointError

# ---- headers: fast_columns + read_header against read_entries + the offset walk ---------------------


def _reference_header(raw: bytes, size: int, where: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    n = len(raw)
    tensors, meta = read_entries(raw, where)
    data_len = size - 8 - n
    expected = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < expected:
            raise CheckpointError(f"{where}: tensor {info.name!r} overlaps the previous tensor's data")
        if info.begin > expected:
            raise CheckpointError(f"{where}: gap in the data before tensor {info.name!r}")
        expected = info.end
    _check_end(where, expected, data_len)
    return tensors, meta


def _outcome(fn):
    try:
        return "ok", fn()
    except CheckpointError as exc:
        return "error", str(exc)


NAMES = st.one_of(
    st.sampled_from(["model.layers.0.mlp.up_proj.weight", "a", "b:c", "x{y}", "é.ü", "__metadata__", "a b", "",
                     "w\x7f", "w\x01", 'q"r', "s\\t", "dtype", "1", "a,b", "]", "}", "\u2028"]),
    st.text(alphabet='ab.:,{}[]" \\\u00e9\x00\x1f\x7f0', max_size=5))
CLEAN_NAMES = st.text(alphabet="ab.:,{}[] \u00e901_", min_size=1, max_size=5)
CLEAN_DTYPES = st.sampled_from(["F32", "BF16", "U8", "F8_E4M3", "I64"])
DTYPES = st.sampled_from(["F32", "BF16", "U8", "F8_E4M3", "I64", "F8_E8M0", "f32", "X", "F8_E4M3 "])


@st.composite
def header_texts(draw):
    """(header text, data length): mostly what writers emit (compact, contiguous), with mutations."""
    entries = []
    offset = 0
    clean = draw(st.booleans())      # half the headers as writers emit them, but for the odd mutation
    for k in range(draw(st.integers(0, 5))):
        name = f"{k}/{draw(CLEAN_NAMES)}" if clean else draw(NAMES)
        dtype = draw(CLEAN_DTYPES if clean else DTYPES)
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = math.prod(shape) * DTYPE_SIZES.get(dtype, 1)
        begin, end = offset, offset + size
        offset = end
        shape_text = json.dumps(shape, separators=(",", ":"))
        offsets_text = f"[{begin},{end}]"
        mutation = draw(st.sampled_from(["none"] * (60 if clean else 8) + ["begin+1", "end+1", "leading0", "float", "bool", "neg",
                                                        "shape_float", "shape_lead0", "order", "extra", "spaces",
                                                        "escape", "huge"]))
        if mutation == "begin+1":
            offsets_text = f"[{begin + 1},{end}]"
        elif mutation == "end+1":
            offsets_text = f"[{begin},{end + 1}]"
        elif mutation == "leading0":
            offsets_text = f"[0{begin},{end}]"
        elif mutation == "float":
            offsets_text = f"[{begin},{end}.0]"
        elif mutation == "bool":
            offsets_text = "[false,true]"
        elif mutation == "neg":
            offsets_text = f"[-{begin},{end}]"
        elif mutation == "shape_float":
            shape_text = shape_text.replace("]", ".0]") if shape else "[1.0]"
        elif mutation == "shape_lead0":
            shape_text = "[0" + shape_text[1:] if shape else "[00]"
        elif mutation == "huge":
            offsets_text = f"[{begin},{'9' * 5000}]"
        name_text = json.dumps(name, ensure_ascii=draw(st.booleans()))
        if mutation == "escape":
            name_text = json.dumps(name, ensure_ascii=True).replace("a", "\\u0061")
        body = {"dtype": f'"{dtype}"', "shape": shape_text, "data_offsets": offsets_text}
        keys = ["dtype", "shape", "data_offsets"]
        if mutation == "order":
            keys = keys[::-1]
        items = [f'"{k}":{body[k]}' for k in keys]
        if mutation == "extra":
            items.append('"x":1')
        sep = ", " if mutation == "spaces" else ","
        entries.append(f"{name_text}:{{{sep.join(items)}}}")
    metas = [None, '{"format":"pt"}', '{"format":"pt","a:b":"c"}', "{}"]
    odd = ["null", '{"a":1}', '{"a":"b","a":"c"}', '{"k":"\\u0061"}', "[]", '{"format":"pt"} ', '{"a":"\\""}']
    meta = draw(st.sampled_from(metas if clean else metas + odd))
    if meta is not None:
        entries.insert(draw(st.integers(0, len(entries))), f'"__metadata__":{meta}')
    if entries and not clean and draw(st.integers(0, 4)) == 0:
        entries.append(entries[0])                     # a duplicate key
    text = "{" + ",".join(entries) + "}" + " " * draw(st.integers(0, 7))
    if not clean and draw(st.integers(0, 9)) == 0:
        text = text.replace("}", "}\n", 1)
    data_len = offset + draw(st.sampled_from([0] * 6 + [1, -1]))
    return text, max(data_len, 0)


@pytest.mark.parametrize("kinds_limit", [4096, 1])
def test_fast_header_reader_agrees_with_the_general_one(tmp_path, kinds_limit, monkeypatch):
    """Every header: read_header's answer (or one-line refusal) is the general path's, and the
    fast path is taken for what writers emit (the remembered dtype+shape texts kept across
    headers, or cleared at every header)."""
    import mxmix.checkpoint.safetensors_header as sh

    monkeypatch.setattr(sh, "_KINDS_LIMIT", kinds_limit)
    path = tmp_path / "x.safetensors"
    taken = {"fast": 0, "general": 0}

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(header_texts())
    def check(case):
        text, data_len = case
        raw = text.encode("utf-8", "surrogatepass")
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_len)
        size = 8 + len(raw) + data_len
        got = _outcome(lambda: read_header(path))
        want = _outcome(lambda: _reference_header(raw, size, str(path)))
        if want[0] == "ok":
            assert got[0] == "ok", got
            h = got[1]
            assert (h.tensors, h.metadata, h.data_start, h.file_size) == (*want[1], 8 + len(raw), size)
            rows = list(h.tensors.values())
            assert h.columns == HeaderColumns(*(list(map(operator.itemgetter(i), rows)) for i in range(5)))
        else:
            assert got == want
        fast = fast_columns(raw)
        taken["fast" if fast is not None else "general"] += 1
        if fast is not None:                 # the fast path only ever accepts what the general one does
            assert want[0] == "ok" or "unexplained bytes" in want[1] or "truncated (tensor data" in want[1]
            tensors, meta = read_entries(raw, "x")
            assert (dict(zip(fast[0].names, map(tuple, zip(*fast[0])))) ==
                    {n: tuple(t) for n, t in tensors.items()} and fast[1] == meta)

    check()
    assert taken["fast"] >= 40 and taken["general"] >= 40, taken


def test_writer_output_takes_the_fast_path(tmp_path):
    """What mxmix and the safetensors library write (compact, offsets in order) is read by the fast path."""
    import torch
    from safetensors.torch import save_file

    save_file({"é.weight": torch.zeros(2, 3), "a": torch.zeros(1, dtype=torch.uint8)}, str(tmp_path / "s.safetensors"),
              metadata={"format": "pt"})
    raw = (tmp_path / "s.safetensors").read_bytes()
    fast = fast_columns(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert fast is not None and sorted(fast[0].names) == ["a", "é.weight"]

    from mxmix.checkpoint.writer import OutTensor, ShardPlan

    names = ["model.layers.0.q_proj.weight", "b:c", "x{y}", "w"]   # (json.dumps escapes non-ASCII names)
    plan = ShardPlan("m.safetensors", [[OutTensor(n, "BF16", (2, 3)) for n in names]])
    raw = plan.header_bytes()[8:]
    fast = fast_columns(raw)
    assert fast is not None and fast[0].names == names and fast[1] == {"format": "pt"}


# ---- linear modules, module views, inspect: against the per-tensor references ---------------------


def _reference_linear_modules(tensors) -> list[LinearModule]:
    out = []
    for name, loc in tensors.items():
        info = loc.info
        dtype, shape = info.dtype, info.shape
        if dtype not in _WEIGHT_DTYPES:
            continue
        if len(shape) == 2 and name.endswith(".weight"):
            module = name[:-7]
            parent, _, last = module.rpartition(".")
            if last in EMBEDDING_NAMES or "embed" in last or "norm" in last:
                continue
            layer, expert, kind_prefix = _parent_facts(parent)
            if layer is None and parent and last.isdigit() and parent.rpartition(".")[2] in LAYER_CONTAINERS:
                layer = int(last)
            if kind_prefix is None or last == "experts":
                kind, expert = last, None
            elif expert is None:
                if last.isdigit():
                    expert, kind = int(last), "experts"
                else:
                    kind = last
            else:
                kind = kind_prefix + last
            scale = next((s for s in (module + ".weight_scale_inv", module + ".weight_scale") if s in tensors), None)
            out.append(LinearModule(module, name, dtype, tuple(shape), layer, kind, scale, False, expert,
                                    tensors[scale].info.dtype if scale else None))
        elif len(shape) == 3 and "experts" in name:
            parts = name.split(".")
            if len(parts) < 2 or "experts" not in parts[:-1]:
                continue
            tail = parts[-1]
            k, proj = (len(parts) - 2, parts[-2]) if tail == "weight" else (len(parts) - 1, tail)
            if parts[k - 1] != "experts" or proj.endswith(STACKED_SUFFIXES) or "bias" in proj:
                continue
            module = ".".join([*parts[:k - 1], "experts"])
            candidates = ([f"{name[:-7]}.weight_scale_inv", f"{name[:-7]}.weight_scale"]
                          if tail == "weight" else [f"{name}_scale_inv", f"{name}_scale"])
            scale = next((c for c in candidates if c in tensors), None)
            out.append(LinearModule(module, name, dtype, tuple(shape), layer_index(parts[:k]), f"experts.{proj}",
                                    scale, True, None, tensors[scale].info.dtype if scale else None))
    return sorted(out, key=lambda m: natural_key(m.weight))


def _reference_views(tensors, mods) -> list[ModuleView]:
    weights = [m.weight for m in mods]
    owner_of_prefix = {w[:-7]: w for w in weights if w.endswith(".weight")}
    rest = tensors.keys() - set(weights) - {m.scale for m in mods if m.scale}
    extra: dict[str, list] = {}
    for name in sorted(rest):
        prefix, _, suffix = name.rpartition(".")
        if prefix in owner_of_prefix:
            info = tensors[name].info
            extra.setdefault(owner_of_prefix[prefix], []).append((suffix, info.dtype, info.shape, info.nbytes))
    out = []
    for m in mods:
        info = tensors[m.weight].info
        comps, comp_bytes = {}, 0
        if m.scale and m.scale in tensors:
            s = tensors[m.scale].info
            comps[m.scale.rpartition(".")[2]] = (s.dtype, s.shape)
            comp_bytes += s.nbytes
        for suffix, dtype, shape, size in extra.get(m.weight, []):
            comps[suffix] = (dtype, shape)
            comp_bytes += size
        out.append(ModuleView(m.path, m.kind, m.layer, m.expert, m.stacked, m.weight, info.dtype, info.shape,
                              m.precision, m.scale, comps, info.numel, info.nbytes + comp_bytes))
    return out


def _reference_summary(ckpt, views) -> dict:
    by_dtype: dict[str, dict[str, int]] = {}
    for loc in ckpt.tensors.values():
        row = by_dtype.setdefault(loc.info.dtype, {"tensors": 0, "params": 0, "bytes": 0})
        row["tensors"] += 1
        row["params"] += loc.info.numel
        row["bytes"] += loc.info.nbytes
    acc: dict[str, list[int]] = {}
    companion_params = 0
    for m in views:
        a = acc.setdefault(m.precision, [0, 0, 0])
        a[0] += 1
        a[1] += m.params
        a[2] += m.nbytes
        companion_params += sum(math.prod(shape) for _, shape in m.companions.values())
    linear = {k: {"modules": a[0], "params": a[1], "bytes": a[2]} for k, a in sorted(acc.items(),
                                                                                       key=lambda kv: _precision_rank(kv[0]))}
    total_params = sum(r["params"] for r in by_dtype.values())
    total_bytes = sum(r["bytes"] for r in by_dtype.values())
    return {"dialect": checkpoint_dialect(ckpt), "tensors": len(ckpt.tensors), "by_dtype": dict(sorted(by_dtype.items())),
            "linear_by_precision": linear,
            "other_params": total_params - sum(m.params for m in views) - companion_params,
            "other_bytes": total_bytes - sum(m.nbytes for m in views), "layers": layer_summary(views),
            "skip_keys": skip_key_values(ckpt)}


COMPONENTS = ["model", "layers", "layer", "h", "blocks", "0", "1", "2", "10", "02", "٣", "experts", "mlp", "self_attn",
              "q_proj", "gate_up_proj", "down_proj", "embed_tokens", "norm", "lm_head", "gate", "shared_experts",
              "a1b", "", "x-9", "weight"]
SUFFIXES = ["weight", "weight", "weight", "weight_scale_inv", "weight_scale", "bias", "input_scale",
            "down_proj_scale_inv", "gate_up_proj", "down_proj", "down_proj_bias", "gate_up_proj_blocks"]


@st.composite
def tensor_tables(draw):
    table = {}
    for _ in range(draw(st.integers(0, 40))):
        parts = draw(st.lists(st.sampled_from(COMPONENTS), min_size=0, max_size=6))
        name = ".".join([*parts, draw(st.sampled_from(SUFFIXES))])
        dtype = draw(st.sampled_from(["BF16", "F8_E4M3", "F8_E5M2", "F32", "U8", "F8_E8M0", "I8", "F16"]))
        shape = tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)))
        table[name] = (dtype, shape)
        if name.endswith(".weight") and draw(st.booleans()):     # and its scale, as writers add it
            scale = name[:-len("weight")] + draw(st.sampled_from(["weight_scale_inv", "weight_scale"]))
            table[scale] = (draw(st.sampled_from(["U8", "F8_E8M0", "F32"])), (*shape[:-1], 1))
    return table


def _checkpoint(table: dict, shards: int, eager: bool) -> Checkpoint:
    headers = []
    items = list(table.items())
    for s in range(shards):
        part = items[s::shards]
        names = [n for n, _ in part]
        sizes = [math.prod(shape) * DTYPE_SIZES[d] for _, (d, shape) in part]
        ends = list(itertools.accumulate(sizes))
        cols = HeaderColumns(names, [d for _, (d, _) in part], [sh for _, (_, sh) in part], [0, *ends[:-1]], ends)
        headers.append(SafetensorsHeader(Path(f"s{s}.safetensors"), 8, 8 + (ends[-1] if ends else 0), None,
                                         columns=cols))
    ckpt = Checkpoint(Path("/nonexistent"), None, headers, None, None)
    if eager:             # the tensors dict built first: the columns then come from it
        ckpt = Checkpoint(Path("/nonexistent"), None, headers, dict(ckpt.tensors), None)
    return ckpt


@settings(max_examples=300, deadline=None, derandomize=True)
@given(tensor_tables(), st.integers(1, 3), st.booleans(), st.booleans())
def test_modules_views_and_summary_match_the_references(table, shards, eager, by_name):
    if by_name:           # as writers order them: a weight's scale right after it (the adjacent-scale path)
        table = dict(sorted(table.items()))
    ckpt = _checkpoint(table, shards, eager)
    mods = linear_modules(ckpt)
    assert mods == _reference_linear_modules(ckpt.tensors)
    assert [m.precision for m in mods] == [m.precision for m in _reference_linear_modules(ckpt.tensors)]
    views = module_views(ckpt)
    assert views == _reference_views(ckpt.tensors, mods)
    assert module_views(ckpt, mods[::-1]) == _reference_views(ckpt.tensors, mods[::-1])
    s = inspect_checkpoint(ckpt).to_dict()
    ref = _reference_summary(ckpt, views)
    assert {k: s[k] for k in ref} == ref


def test_views_of_other_module_objects_read_their_attributes():
    """module_views takes any objects with LinearModule's attributes (their own precision included)."""
    ckpt = _checkpoint({"m.q.weight": ("F8_E4M3", (2, 32)), "m.q.weight_scale_inv": ("U8", (2, 1)),
                        "m.q.bias": ("F32", (2,))}, 1, False)
    (mod,) = linear_modules(ckpt)

    class Other:
        def __init__(self, m):
            self.__dict__.update(m._asdict())
            self.precision = "custom"

    (view,) = module_views(ckpt, [Other(mod)])
    assert view._replace(precision=mod.precision) == module_views(ckpt)[0] and view.precision == "custom"
    assert view.companions == {"weight_scale_inv": ("U8", (2, 1)), "bias": ("F32", (2,))}


def test_edited_tensors_are_seen_after_forget_derived():
    ckpt = _checkpoint({"a.q.weight": ("BF16", (2, 2)), "a.k.weight": ("BF16", (2, 2))}, 1, False)
    assert [m.path for m in linear_modules(ckpt)] == ["a.k", "a.q"]
    del ckpt.tensors["a.k.weight"]
    ckpt.forget_derived()
    assert [m.path for m in linear_modules(ckpt)] == ["a.q"] and ckpt.columns.names == ["a.q.weight"]
    assert inspect_checkpoint(ckpt).tensors == 1


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.lists(st.text(alphabet="ab.0129٣_- Z\u00e9", max_size=12), max_size=12))
def test_sort_texts_order_like_natural_key(names):
    facts = _PathFacts()
    texts = [facts.text(n) for n in names]
    assert not facts.unusual
    order = sorted(range(len(names)), key=texts.__getitem__)
    assert order == sorted(range(len(names)), key=lambda i: natural_key(names[i]))
    for n in names:   # and the path facts are _parent_facts' (plus whether it ends in a layer container)
        assert facts.facts(n)[:4] == (*_parent_facts(n), n.rpartition(".")[2] in LAYER_CONTAINERS and bool(n))


def test_marker_characters_fall_back_to_natural_key():
    ckpt = _checkpoint({"a.\x01.q.weight": ("BF16", (2, 2)), "a.q.weight": ("BF16", (2, 2)),
                        "a.\x00.q.weight": ("BF16", (2, 2))}, 1, False)
    assert linear_modules(ckpt) == _reference_linear_modules(ckpt.tensors)


@pytest.mark.parametrize("weight_map_edit", ["missing", "wrong_shard", "extra_entry"])
def test_index_disagreements_keep_their_messages(tmp_path, weight_map_edit):
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2), "y": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"z": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    wm = {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}
    if weight_map_edit == "missing":
        del wm["y"]           # allowed: a tensor the index does not list
    elif weight_map_edit == "wrong_shard":
        wm["y"] = "b.safetensors"
    else:
        wm["nope"] = "a.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    if weight_map_edit == "missing":
        assert list(Checkpoint.open(tmp_path).tensors) == ["x", "y", "z"]
        return
    bad = "y" if weight_map_edit == "wrong_shard" else "nope"
    with pytest.raises(CheckpointError, match=f"tensor '{bad}' is not in shard"):
        Checkpoint.open(tmp_path)


@pytest.mark.parametrize("promote", [False, True])
def test_gc_pause_restores_the_collector(promote):
    """The pause (and the promotion to the oldest generation) leaves nothing frozen or disabled."""
    import gc

    from mxmix.checkpoint.safetensors_header import _gc_paused

    assert gc.isenabled()
    with _gc_paused(promote=promote):
        assert not gc.isenabled()
        with _gc_paused(promote=promote):
            pass
        assert not gc.isenabled()
        junk = [[i] for i in range(1000)]
        junk.append(junk)                      # a cycle made while paused is still collectable
    assert gc.isenabled() and gc.get_freeze_count() == 0
    del junk
    assert gc.collect() >= 1


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["BF16", "F8_E4M3", "U8", "mxfp8", "", "x"]), st.integers(0, 10**12),
                          st.integers(-5, 5)), max_size=60))
def test_grouped_sums_equal_the_row_by_row_definition(rows):
    keys = [k for k, _, _ in rows]
    a = [x for _, x, _ in rows]
    b = [y for _, _, y in rows]
    assert grouped_sums(keys, a, b) == grouped_sums_reference(keys, a, b)
    assert list(grouped_sums(keys, a)) == list(dict.fromkeys(keys))       # first-appearance order
    assert grouped_sums(keys) == {k: (keys.count(k),) for k in keys}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.sampled_from("abcdefgh"), max_size=5, unique=True), min_size=1, max_size=4),
       st.dictionaries(st.sampled_from("abcdefghij"), st.integers(0, 4), max_size=10), st.booleans())
def test_index_exact_cover_equals_the_owner_comparison(shards, edits, exact):
    """``_index_is_exact`` is True exactly when no name is in two shards and the index maps every
    name to its shard and nothing else (what the owner dict comparison establishes)."""
    from mxmix.checkpoint.layout import _index_is_exact

    files = [f"s{k}.safetensors" for k in range(len(shards))]
    headers = [SafetensorsHeader(Path(f), 8, 8, None, columns=HeaderColumns(names, ["U8"] * len(names),
                                                                               [()] * len(names),
                                                                               list(range(len(names))),
                                                                               list(range(1, len(names) + 1))))
               for f, names in zip(files, shards)]
    weight_map = {n: f for f, names in zip(files, shards) for n in names}
    if not exact:      # edit it: wrong shards, extra names, dropped names
        for name, k in edits.items():
            if k == 4:
                weight_map.pop(name, None)
            else:
                weight_map[name] = f"s{k}.safetensors"
    distinct = sum(map(len, shards)) == len({n for names in shards for n in names})
    owner = {n: f for f, names in zip(files, shards) for n in names}
    assert _index_is_exact(headers, files, weight_map) == (distinct and owner == weight_map)
