"""Read safetensors headers (and single tensors) from untrusted files without trusting anything.

A header is validated before it is believed: bounded length, strict JSON, known dtypes, sizes that
agree with shapes, offsets that tile the data region exactly. Everything that inspects or converts a
checkpoint goes through here, so a lying file fails the same way everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import math
import operator
import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from mxmix.errors import CheckpointError

# Same bound as the reference implementation: a larger header is refused before it is allocated.
MAX_HEADER_BYTES = 100_000_000

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
FP8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2"})


class TensorInfo(NamedTuple):
    """One tensor's entry; ``begin``/``end`` are offsets from the start of the data region.

    An immutable named tuple rather than a dataclass: checkpoints hold 10^5 tensors and building
    them is on the hot path of `mxmix inspect`/`audit` (3x cheaper to construct).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class HeaderColumns(NamedTuple):
    """A header's tensors as parallel lists, in header order (what bulk readers such as `mxmix
    inspect` scan: building 10^5 TensorInfo objects costs more than validating the header)."""

    names: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    begins: list[int]
    ends: list[int]


class SafetensorsHeader:
    """One validated file header: ``tensors`` (name → TensorInfo) and ``columns`` (the same, as lists)
    are two views of the same entries, each built on first use from the other."""

    __slots__ = ("_columns", "_tensors", "data_start", "file_size", "metadata", "path")
    __hash__ = None   # type: ignore[assignment]   # equality is by value (as the former frozen dataclass)

    def __init__(self, path: Path, data_start: int, file_size: int, tensors: dict[str, TensorInfo] | None,
                 metadata: dict[str, str] | None = None, *, columns: HeaderColumns | None = None) -> None:
        if tensors is None and columns is None:
            raise TypeError("SafetensorsHeader needs tensors or columns")
        self.path = path
        self.data_start = data_start
        self.file_size = file_size
        self.metadata = {} if metadata is None else metadata
        self._tensors = tensors
        self._columns = columns

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        if self._tensors is None:
            c = self._columns
            assert c is not None
            self._tensors = dict(zip(c.names, map(_new_info, zip(c.names, c.dtypes, c.shapes, c.begins, c.ends))))
        return self._tensors

    @property
    def columns(self) -> HeaderColumns:
        if self._columns is None:
            infos = list(self.tensors.values())
            self._columns = HeaderColumns(*(list(map(operator.itemgetter(i), infos)) for i in range(5)))
        return self._columns

    def _key(self) -> tuple[Any, ...]:
        return (self.path, self.data_start, self.file_size, self.tensors, self.metadata)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return (f"SafetensorsHeader(path={self.path!r}, data_start={self.data_start!r}, file_size={self.file_size!r}, "
                f"tensors={self.tensors!r}, metadata={self.metadata!r})")


_new_info = functools.partial(tuple.__new__, TensorInfo)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in strict JSON")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@contextlib.contextmanager
def _gc_paused(*, promote: bool = False) -> Iterator[None]:
    """Parsing a header allocates ~10 objects per tensor and nothing cyclic; pausing the cyclic GC
    meanwhile halves the time on 10^5-tensor checkpoints.

    ``promote``: for bulk results that live as long as their checkpoint (10^5 modules and views),
    move every tracked object to the oldest generation on the way out (``gc.freeze`` then
    ``gc.unfreeze``: two list splices), so the next young collection does not walk them all
    (measured: 20-45 ms per 5*10^4 objects). Nothing becomes uncollectable; cycles among the
    promoted objects are found by the next full collection instead.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if promote:
            gc.freeze()
            gc.unfreeze()
        if was:
            gc.enable()


def _loads(text: str, where: str, hook: Any = None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=hook, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: header is not valid JSON ({exc})") from None


def parse_header_bytes(raw: bytes, where: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Strict JSON → (tensor entries, metadata). Raises CheckpointError naming ``where``.

    Duplicate keys are refused. The fast path parses with the C decoder and proves there were none
    by counting colons (see :func:`_colons_account_for`); only when that proof fails (escapes in the
    text, or an actual duplicate) is the text re-parsed with a duplicate-checking hook.
    """
    text = _decode(raw, where)
    with _gc_paused():
        obj = _loads(text, where)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: header is not a JSON object")
    if not _colons_account_for(raw, obj):
        obj = _loads(text, where, _no_duplicate_keys)   # raises on the duplicate
    meta = _pop_metadata(obj, where)
    return obj, meta


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{where}: header is not valid JSON ({exc})") from None


def _pop_metadata(obj: dict[str, Any], where: str) -> dict[str, str]:
    meta = obj.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings")
    return meta


def read_entries(raw: bytes, where: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """``parse_header_bytes`` + per-tensor validation in one pass (the hot path of ``read_header``).

    The duplicate-key proof is folded into the validation loop: for entries with exactly the three
    standard keys (validated, so their only string is a known dtype without ':'), the structural
    colons are one per top-level key, three per entry and one per metadata key.
    """
    text = _decode(raw, where)
    with _gc_paused():
        obj = _loads(text, where)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{where}: header is not a JSON object")
        had_meta = "__metadata__" in obj
        meta = _pop_metadata(obj, where)
        # Strict JSON has no raw control characters in strings: names can only hold them through escapes
        # (or a raw DEL), so the name scan is skipped for texts without either.
        infos, regular = _tensor_infos(obj, where, b"\\" in raw or b"\x7f" in raw)
    if regular and b"\\" not in raw:
        strings = "".join(obj) + "".join(meta) + "".join(meta.values())
        if raw.count(b":") == len(obj) * 4 + had_meta + len(meta) + strings.count(":"):
            return infos, meta
    entries, meta = parse_header_bytes(raw, where)   # proves there is no duplicate, or raises
    return _tensor_infos(entries, where)[0], meta


def _colons_account_for(raw: bytes, obj: dict[str, Any]) -> bool:
    """True only if ``raw`` provably has no duplicate keys.

    Without backslashes in the text, every ':' byte is either structural (one per key token) or a
    literal character inside a string that survives parsing. So when the parsed keys plus the colons
    inside parsed strings account for every ':' in the text, no key token was lost to a duplicate.
    Only the shapes real headers have are counted here (entries whose values hold no strings beyond
    ``dtype``); anything else returns False and takes the slow, hook-checked path.
    """
    if b"\\" in raw:
        return False
    keys = len(obj)
    strings: list[str] = list(obj)
    for name, entry in obj.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                return False
            for k, v in entry.items():
                if not isinstance(v, str):
                    return False
                strings.append(k)
                strings.append(v)
            keys += len(entry)
            continue
        if type(entry) is not dict:
            return False
        keys += len(entry)
        for key, value in entry.items():
            strings.append(key)
            if type(value) is str:
                strings.append(value)
            elif type(value) is list:
                for x in value:
                    if type(x) is not int:
                        return False
            else:
                return False
    return raw.count(b":") == keys + "".join(strings).count(":")


def _tensor_info(name: str, entry: Any, where: str) -> TensorInfo:
    if not name or _CONTROL.search(name):
        raise CheckpointError(f"{where}: tensor name {name!r} is empty or contains control characters")
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: entry for tensor {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")
    info = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    if info.numel * DTYPE_SIZES[dtype] != info.nbytes:
        raise CheckpointError(
            f"{where}: tensor {name!r} claims {info.nbytes} bytes but {dtype}{list(shape)} needs "
            f"{info.numel * DTYPE_SIZES[dtype]}")
    return info


def _tensor_infos(entries: dict[str, Any], where: str, maybe_control: bool = True) -> tuple[dict[str, TensorInfo], bool]:
    """All entries → TensorInfo, and whether every entry had exactly the three standard keys; the
    common case inline, anything unusual through :func:`_tensor_info` (which raises the precise error)."""
    sizes = DTYPE_SIZES
    new = tuple.__new__
    out: dict[str, TensorInfo] = {}
    regular = True
    with _gc_paused():
        for name, e in entries.items():
            try:
                dtype = e["dtype"]
                shape = e["shape"]
                begin, end = e["data_offsets"]
                numel = 1
                for d in shape:
                    if type(d) is not int or d < 0:
                        raise TypeError
                    numel *= d
                if (type(begin) is not int or type(end) is not int or not 0 <= begin <= end
                        or type(shape) is not list or numel * sizes[dtype] != end - begin):
                    raise TypeError
            except (KeyError, TypeError, ValueError):
                out[name] = _tensor_info(name, e, where)   # raises
                continue
            if len(e) != 3:
                regular = False
            out[name] = new(TensorInfo, (name, dtype, tuple(shape), begin, end))
    if "" in out or (maybe_control and _CONTROL.search("".join(out))):
        bad = next(n for n in out if not n or _CONTROL.search(n))
        _tensor_info(bad, entries[bad], where)
    return out, regular


# One entry as safetensors writers emit it (compact, keys in the standard order): the name, the dtype and
# shape together (few distinct values: each validated once, by _KIND), and the offsets pair.
_ENTRY = re.compile(r'"([^"]+)":\{("dtype":"[^"]+","shape":\[[^\]]*\]),"data_offsets":\[([0-9]+,[0-9]+)\]\}')
_NUM = r"(?:0|[1-9][0-9]*)"
_KIND = re.compile(r'"dtype":"([A-Z0-9_]+)","shape":\[((?:' + _NUM + r"(?:," + _NUM + r")*)?)\]")
_META_KEY = '{"__metadata__":'
# bytes that may not appear in a fast-path header: controls (invalid raw in JSON strings, refused in
# names), DEL (refused in names) and backslash (escapes: the raw text would not be the string's value)
_ODD_BYTES = bytes(range(0x20)) + b"\x7f\\"


def fast_columns(raw: bytes) -> tuple[HeaderColumns, dict[str, str]] | None:
    """The usual header, parsed and fully validated with one regex split and whole-list operations;
    None for anything else, which :func:`read_entries` then parses (or refuses with its message).

    Only headers whose tensors lie back to back in header order are taken (what writers emit). Why
    this is sound: the split proves the text is exactly ``{`` [``"__metadata__":`` M ``,``] E (``,`` E)*
    ``}`` plus spaces, with M strictly parsed on its own (duplicate keys refused) and each E an entry
    whose name holds no quote, escape or control character, whose dtype and shape match ``_KIND``
    (JSON integers >= 0) and whose offsets are two digit runs equal to the running sum of the sizes
    (so canonical integers, contiguous from 0). Names are checked distinct; 10^5 entries cost about
    half of what ``json.loads`` alone does.
    """
    if len(raw.translate(None, _ODD_BYTES)) != len(raw):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = _ENTRY.split(text)
    n = len(parts) // 4
    if not n or parts[-1].rstrip(" ") != "}" or parts[4:-1:4].count(",") != n - 1:
        return None
    head = parts[0]
    meta: Any = {}
    if head != "{":
        if not head.startswith(_META_KEY) or head[-1] != ",":
            return None
        meta = _metadata(head[len(_META_KEY):-1])
        if meta is None:
            return None
    names, kinds, offsets = parts[1::4], parts[2::4], parts[3::4]
    unique = set(names)
    if len(unique) != n or "__metadata__" in unique:
        return None
    sizes = DTYPE_SIZES
    seen = _KINDS_SEEN             # the shards of one checkpoint repeat a handful of dtype+shape texts
    kind_of: dict[str, tuple[str, tuple[int, ...], int]] = {}
    try:   # int()/str() refuse numbers over the interpreter's digit limit: leave those to json
        for k in set(kinds):
            kind = seen.get(k)
            if kind is None:
                m = _KIND.fullmatch(k)
                if m is None or m[1] not in sizes:
                    return None
                shape = tuple(map(int, m[2].split(","))) if m[2] else ()
                kind = (m[1], shape, math.prod(shape) * sizes[m[1]])
                if len(seen) >= _KINDS_LIMIT:
                    seen.clear()
                seen[k] = kind
            kind_of[k] = kind
        rows = list(map(kind_of.__getitem__, kinds))
        ends = list(itertools.accumulate(map(_THIRD, rows)))
        end_texts = list(map(str, ends))
    except ValueError:
        return None
    # offsets "b,e" against the expected "0,e0", "e0,e1", ...: one comma in each, so comparing the
    # comma-joined texts compares every pair
    flat = [""] * (2 * n)
    flat[0::2] = ["0", *end_texts[:-1]]
    flat[1::2] = end_texts
    if ",".join(flat) != ",".join(offsets):
        return None
    begins = ends[:-1]
    begins.insert(0, 0)
    return HeaderColumns(names, list(map(_FIRST, rows)), list(map(_SECOND, rows)), begins, ends), meta


_META_SEEN: dict[str, dict[str, str]] = {}
# a validated dtype+shape text -> (dtype, shape, bytes): a pure function of the text, remembered
_KINDS_SEEN: dict[str, tuple[str, tuple[int, ...], int]] = {}
_KINDS_LIMIT = 4096


def _metadata(text: str) -> dict[str, str] | None:
    """A strictly parsed ``__metadata__`` object of strings (a fresh dict), else None; the shards of
    one checkpoint mostly repeat the same one, so short texts are remembered."""
    meta = _META_SEEN.get(text)
    if meta is None:
        try:
            meta = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return None
        if type(meta) is not dict or not all(type(k) is str and type(v) is str for k, v in meta.items()):
            return None
        if len(text) <= 256 and len(_META_SEEN) < 64:
            _META_SEEN[text] = dict(meta)
        return meta
    return dict(meta)


_FIRST, _SECOND, _THIRD = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


def _read_header_bytes(path: Path, where: str) -> tuple[int, int, bytes]:
    """(header length, file size, header bytes), every bound checked before anything is allocated."""
    try:
        # O_NONBLOCK: a FIFO planted as a shard must not hang us at open(); it is refused below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{where}: not a regular file")
        size = st.st_size
        head = _read_exactly(fd, 8)
        if len(head) < 8:
            raise CheckpointError(f"{where}: truncated (shorter than the 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{where}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if 8 + n > size:
            raise CheckpointError(f"{where}: truncated (header claims {n} bytes, file has {size - 8})")
        raw = _read_exactly(fd, n)
        if len(raw) != n:
            raise CheckpointError(f"{where}: truncated while reading the header")
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    return n, size, raw


def _read_exactly(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at end of file); plain os.read, no buffered file object."""
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and fully validate one file's header; reads no tensor data."""
    path = Path(path)
    where = str(path)
    n, size, raw = _read_header_bytes(path, where)
    data_len = size - 8 - n
    fast = fast_columns(raw)
    if fast is not None:
        columns, meta = fast
        _check_end(where, columns.ends[-1], data_len)
        return SafetensorsHeader(path, 8 + n, size, None, meta, columns=columns)
    tensors, meta = read_entries(raw, where)
    expected = 0
    for info in tensors.values():        # writers lay tensors out in header order: check that first
        if info.begin != expected:
            break
        expected = info.end
    else:
        _check_end(where, expected, data_len)
        return SafetensorsHeader(path, 8 + n, size, tensors, meta)
    expected = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < expected:
            raise CheckpointError(f"{where}: tensor {info.name!r} overlaps the previous tensor's data")
        if info.begin > expected:
            raise CheckpointError(f"{where}: gap in the data before tensor {info.name!r}")
        expected = info.end
    _check_end(where, expected, data_len)
    return SafetensorsHeader(path, 8 + n, size, tensors, meta)


def _check_end(where: str, expected: int, data_len: int) -> None:
    if expected > data_len:
        raise CheckpointError(
            f"{where}: truncated (tensor data needs {expected} bytes, file holds {data_len})")
    if expected < data_len:
        raise CheckpointError(f"{where}: {data_len - expected} unexplained bytes after the last tensor")


def torch_dtype(dtype: str) -> Any:
    """safetensors dtype string → torch dtype (E8M0 read as raw uint8 bytes)."""
    import torch

    table = {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
        "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
        "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "F8_E8M0": torch.uint8, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    }
    return table[dtype]


def safetensors_dtype(dtype: Any) -> str:
    """torch dtype → safetensors dtype string."""
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
        torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
        torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    }
    return table[dtype]


def read_tensor(header: SafetensorsHeader, name: str) -> Any:
    """Read one tensor's bytes (only those) into a fresh CPU torch tensor."""
    import torch

    info = header.tensors[name]
    buf = bytearray(info.nbytes)
    try:
        with open(header.path, "rb") as f:
            f.seek(header.data_start + info.begin)
            got = f.readinto(buf)
    except OSError as exc:
        raise CheckpointError(f"{header.path}: cannot read tensor {name!r} ({exc.strerror or exc})") from None
    if got != info.nbytes:
        raise CheckpointError(f"{header.path}: truncated while reading tensor {name!r}")
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    return torch.frombuffer(buf, dtype=torch_dtype(info.dtype)).reshape(info.shape)
