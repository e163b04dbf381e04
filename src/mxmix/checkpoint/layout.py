"""A checkpoint directory as mxmix sees it: config, shards, and where every tensor lives.

Opening reads JSON files and safetensors headers only. Every file name that comes from the
checkpoint (index entries) is confined to the directory; pickle weights are never touched.
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from mxmix.checkpoint.safetensors_header import (
    SafetensorsHeader,
    TensorInfo,
    _gc_paused,
    read_header,
    read_tensor,
)
from mxmix.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
MAX_JSON_BYTES = 64 * 1024 * 1024
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.pth")


class TensorLocation(NamedTuple):
    """Where one tensor lives (a named tuple: 10^5 of these are built per large checkpoint)."""

    name: str
    header: SafetensorsHeader
    info: TensorInfo

    @property
    def shard(self) -> Path:
        return self.header.path


class TensorColumns(NamedTuple):
    """Every tensor of a checkpoint as parallel lists (``Checkpoint.columns``): what bulk scans read."""

    names: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    nbytes: list[int]


_INFO = operator.attrgetter("info")
_DTYPE = operator.attrgetter("dtype")
_SHAPE = operator.attrgetter("shape")
_BEGIN = operator.attrgetter("begin")
_END = operator.attrgetter("end")


def read_json_file(path: Path, what: str | None = None) -> Any:
    """Strict, size-bounded JSON read with a one-line error."""
    what = what or str(path)
    try:
        # O_NONBLOCK + S_ISREG: a FIFO or device planted as config.json must neither hang nor stream forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb", closefd=True) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{what}: not a regular file")
            if st.st_size > MAX_JSON_BYTES:
                raise CheckpointError(f"{what}: {st.st_size} bytes is too large for a JSON file")
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise CheckpointError(f"{what}: too large for a JSON file")
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise CheckpointError(f"{what}: file not found") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{what}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{what}: cannot read ({exc.strerror or exc})") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in strict JSON")


def confined(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refusing absolute names, '..' and symlinks that lead out of ``root``."""
    if not isinstance(relative, str) or not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        raise CheckpointError(f"{what}: file name {relative!r} is not a plain relative name")
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise CheckpointError(f"{what}: file name {relative!r} points outside the checkpoint directory")
    path = root / relative
    real = path.resolve()
    if not any(real == allowed or allowed in real.parents for allowed in _allowed_roots(root)):
        raise CheckpointError(f"{what}: file {relative!r} resolves outside the checkpoint directory")
    return path


def _allowed_roots(root: Path) -> tuple[Path, ...]:
    """Where a checkpoint's files may really live: inside it, and for a Hugging Face hub cache
    snapshot (``…/snapshots/<rev>/`` whose files link to ``…/blobs/``) in that repo's blob store."""
    real_root = root.resolve()
    absolute = root.absolute()
    if absolute.parent.name == "snapshots":
        blobs = absolute.parent.parent / "blobs"
        if blobs.is_dir() and not blobs.is_symlink():
            return real_root, blobs.resolve()
    return (real_root,)


class Checkpoint:
    """Headers-only view of a HF-style checkpoint directory (or a single .safetensors file)."""

    def __init__(self, root: Path, config: dict[str, Any] | None, headers: list[SafetensorsHeader],
                 tensors: dict[str, TensorLocation] | None, index: dict[str, Any] | None) -> None:
        self.root = root
        self.config = config
        self.headers = headers
        # name -> TensorLocation, built on first use (None: from ``headers``, whose names are checked
        # distinct at open): `mxmix inspect` reads the columns instead and never needs 10^5 objects.
        self._tensors = tensors
        self.index = index
        # derived views (Linear modules, module views) computed once per opened checkpoint: inspect and
        # audit on one open share them. A Checkpoint is read-only once opened; callers that edit
        # ``tensors`` or ``config`` must call ``forget_derived()``.
        self._derived: dict[str, Any] = {}

    @property
    def tensors(self) -> dict[str, TensorLocation]:
        if self._tensors is None:
            with _gc_paused(promote=True):   # 2*10^5 small tuples, kept with the checkpoint
                self._tensors = _locations(self.headers)
        return self._tensors

    @tensors.setter
    def tensors(self, value: dict[str, TensorLocation]) -> None:
        self._tensors = value      # (then forget_derived(), as after any edit)

    def derived(self, key: str, build: Any) -> Any:
        """``build()`` computed once per checkpoint under ``key`` (see ``forget_derived``)."""
        try:
            return self._derived[key]
        except KeyError:
            value = self._derived[key] = build()
            return value

    def built(self, key: str) -> Any:
        """What ``derived(key, ...)`` holds already, else None (never builds)."""
        return self._derived.get(key)

    def forget_derived(self) -> None:
        """Drop the cached derived views (after editing ``tensors`` or ``config`` in place)."""
        self._derived.clear()

    @property
    def columns(self) -> TensorColumns:
        """Every tensor as parallel lists in ``tensors`` order (a derived view: see ``forget_derived``)."""
        return self.derived("columns", self._build_columns)

    @property
    def row_of(self) -> dict[str, int]:
        """tensor name -> its row in ``columns`` (a derived view)."""
        return self.derived("row_of", lambda: dict(zip(self.columns.names, range(len(self.columns.names)))))

    def _build_columns(self) -> TensorColumns:
        if self._tensors is None:      # straight from the headers' lists
            names: list[str] = []
            dtypes: list[str] = []
            shapes: list[tuple[int, ...]] = []
            nbytes: list[int] = []
            for h in self.headers:
                c = h.columns
                names += c.names
                dtypes += c.dtypes
                shapes += c.shapes
                nbytes += map(operator.sub, c.ends, c.begins)
            return TensorColumns(names, dtypes, shapes, nbytes)
        infos = list(map(_INFO, self._tensors.values()))   # possibly edited: the dict is the truth
        return TensorColumns(list(self._tensors), list(map(_DTYPE, infos)), list(map(_SHAPE, infos)),
                             list(map(operator.sub, map(_END, infos), map(_BEGIN, infos))))

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, require_config: bool = False) -> Checkpoint:
        root = Path(path)
        if not root.exists():
            raise CheckpointError(f"{root}: no such file or directory")
        if root.is_file():
            if root.suffix != ".safetensors":
                raise CheckpointError(f"{root}: not a checkpoint directory or .safetensors file")
            header = read_header(root)
            return cls(root.parent, None, [header], None, None)
        config = None
        cfg_path = root / "config.json"
        if cfg_path.exists():
            config = read_json_file(cfg_path, f"{root}/config.json")
            if not isinstance(config, dict):
                raise CheckpointError(f"{root}/config.json: not a JSON object")
        elif require_config:
            raise CheckpointError(f"{root}: no config.json")
        index = None
        index_path = root / INDEX_NAME
        if index_path.exists():
            index = read_json_file(index_path, f"{root}/{INDEX_NAME}")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            # JSON object keys are always strings; the values must be file names. Their types are read
            # off the distinct values (a str equals no other JSON value; an unhashable one is refused).
            try:
                files = list(dict.fromkeys(weight_map.values())) if isinstance(weight_map, dict) else None
            except TypeError:
                files = None
            if files is None or not set(map(type, files)) <= {str}:
                raise CheckpointError(f"{root}/{INDEX_NAME}: 'weight_map' must map tensor names to file names")
            if not weight_map:
                raise CheckpointError(f"{root}/{INDEX_NAME}: 'weight_map' lists no tensors")
            paths = _shard_paths(root, files, f"{root}/{INDEX_NAME}")
            # many small acyclic objects, kept with the checkpoint: no point scanning them mid-build,
            # nor in the first young collection after it (promoted)
            with _gc_paused(promote=True):
                headers = [read_header(p) for p in paths]
            # every index entry names the shard that holds it, and no name is in two shards
            if not _index_is_exact(headers, files, weight_map):
                owner = _owners(headers, files)
                # (dict comparisons: C speed for 10^5 names)
                if owner != weight_map and not weight_map.items() <= owner.items():
                    for name, fname in weight_map.items():
                        if owner.get(name) != fname:
                            raise CheckpointError(
                                f"{root}/{INDEX_NAME}: tensor {name!r} is not in shard {fname!r} as the index says")
        else:
            paths = sorted(p for p in root.glob("*.safetensors") if p.is_file())
            if not paths:
                pickles = [n for n in PICKLE_NAMES if (root / n).exists()]
                hint = f" (found {pickles[0]}: mxmix never unpickles; convert it to safetensors first)" if pickles else ""
                raise CheckpointError(f"{root}: no .safetensors weights{hint}")
            for p in paths:
                confined(root, p.name, str(root))
            # many small acyclic objects, kept with the checkpoint: no point scanning them mid-build,
            # nor in the first young collection after it (promoted)
            with _gc_paused(promote=True):
                headers = [read_header(p) for p in paths]
            _owners(headers, range(len(headers)))
        tensors = None   # built on first use (Checkpoint.tensors); the names are known distinct
        return cls(root, config, headers, tensors, index)

    @property
    def quantization_config(self) -> dict[str, Any]:
        qc = (self.config or {}).get("quantization_config") or {}
        return qc if isinstance(qc, dict) else {}

    def read_json(self, name: str) -> Any | None:
        """An optional JSON side file (e.g. ModelOpt's hf_quant_config.json), confined to the directory."""
        path = confined(self.root, name, str(self.root))
        return read_json_file(path, f"{self.root}/{name}") if path.exists() else None

    def read_tensor(self, name: str) -> Any:
        loc = self.tensors[name]
        return read_tensor(loc.header, name)

    @property
    def total_bytes(self) -> int:
        return sum(loc.info.nbytes for loc in self.tensors.values())


def _shard_paths(root: Path, files: list[str], what: str) -> list[Path]:
    """``root / f`` for each index file name, confined to ``root``, existing and a regular file.

    A plain name (no '/') that ``lstat`` shows is a regular file, not a link, is inside ``root``
    without resolving anything: one system call instead of a path walk. Every other name takes the
    full checks, confinement of all before existence, so the first error is the one it always was.
    """
    base = os.fspath(root)
    slow = []
    for f in files:
        if f and "/" not in f and not f.startswith("\\"):
            try:
                if stat.S_ISREG(os.lstat(os.path.join(base, f)).st_mode):
                    continue
            except (OSError, ValueError):
                pass
        slow.append(f)
    for f in slow:
        confined(root, f, what)
    for f in slow:
        p = root / f
        if not p.exists():
            raise CheckpointError(f"{what}: names shard {f!r}, which does not exist")
        if not p.is_file():
            raise CheckpointError(f"{what}: shard {f!r} is not a regular file")
    return [root / f for f in files]


def _index_is_exact(headers: list[SafetensorsHeader], files: list[str], weight_map: dict[str, Any]) -> bool:
    """True when the headers hold exactly the index's tensors, each in the shard the index names
    (then no name is in two shards either: it would name one shard of the two). Counts, in C; False
    leaves the precise checks (and their messages) to ``_owners`` and the comparison after it."""
    total = 0
    get = weight_map.get
    for h, fname in zip(headers, files):
        names = h.columns.names
        if list(map(get, names)).count(fname) != len(names):
            return False
        total += len(names)
    return total == len(weight_map)


def _owners(headers: list[SafetensorsHeader], labels: Any) -> dict[str, Any]:
    """tensor name -> the label of the header holding it; refuses a name held by two headers."""
    owner: dict[str, Any] = {}
    total = 0
    for h, label in zip(headers, labels):
        names = h.columns.names
        owner.update(zip(names, itertools.repeat(label)))
        total += len(names)
    if len(owner) != total:
        _locations(headers)   # raises, naming the tensor and both shards
    return owner


def _locations(headers: list[SafetensorsHeader]) -> dict[str, TensorLocation]:
    out: dict[str, TensorLocation] = {}
    new = tuple.__new__
    for h in headers:
        before = len(out)
        for name, info in h.tensors.items():
            out[name] = new(TensorLocation, (name, h, info))
        if len(out) != before + len(h.tensors):
            name = next(n for n in h.tensors if out[n].header is not h or _first_owner(headers, n) is not h)
            first = _first_owner(headers, name)
            raise CheckpointError(f"tensor {name!r} appears in both {first.path.name} and {h.path.name}")
    return out


def _first_owner(headers: list[SafetensorsHeader], name: str) -> SafetensorsHeader:
    return next(h for h in headers if name in h.tensors)
