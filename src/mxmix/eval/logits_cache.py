"""On-disk cache of the reference's scored distributions, so repeated candidates skip the reference.

Key: the reference checkpoint's identity (config.json bytes and, per safetensors file, its name, size,
mtime and a hash of its header — never the multi-GB payload), the exact token windows, ctx, top-k,
cutoff, dtype and device type, and a format version. Value: one compressed ``.npz`` (numeric arrays
only, read with ``allow_pickle=False``) holding the :class:`~mxmix.eval.stats.BaseRecord` of every window.
A damaged entry is ignored and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mxmix.checkpoint.layout import Checkpoint
from mxmix.eval.stats import BaseRecord
from mxmix.fsutil import atomic_output_file

FORMAT_VERSION = 1
_FIELDS = ("targets", "nll", "argmax", "counts", "index", "logp", "tail")
_PER_TOKEN = ("targets", "nll", "argmax", "counts", "tail")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MXMIX_CACHE") or Path.home() / ".cache" / "mxmix") / "reference-logits"


def checkpoint_identity(path: str | os.PathLike[str]) -> str:
    """A cheap content identity: config + per-shard (name, size, mtime, header hash)."""
    ckpt = Checkpoint.open(path)
    h = hashlib.sha256()
    cfg = ckpt.root / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    for header in sorted(ckpt.headers, key=lambda x: x.path.name):
        st = header.path.stat()
        h.update(f"{header.path.name}|{st.st_size}|{st.st_mtime_ns}|".encode())
        with open(header.path, "rb") as f:
            h.update(f.read(min(header.data_start, 8 + 100 * 1024 * 1024)))
    return h.hexdigest()


def cache_key(reference: str | os.PathLike[str], windows_digest: str, *, ctx: int, topk: int | None,
              cutoff: float, dtype: str, device: str) -> str:
    ident = {"v": FORMAT_VERSION, "ref": checkpoint_identity(reference), "windows": windows_digest, "ctx": ctx,
             "topk": topk or 0, "cutoff": cutoff, "dtype": dtype, "device": device.split(":")[0]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def save_records(path: Path, records: list[BaseRecord], meta: dict[str, Any]) -> None:
    arrays = {f: np.concatenate([getattr(r, f) for r in records]) for f in _FIELDS}
    arrays["window_tokens"] = np.array([len(r) for r in records], dtype=np.int64)
    arrays["window_entries"] = np.array([r.index.size for r in records], dtype=np.int64)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_file(path, force=True) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_records(path: Path) -> list[BaseRecord] | None:
    """The cached records, or None when absent or unreadable (a warning, then a rebuild)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in (*_FIELDS, "window_tokens", "window_entries")}
        out = []
        t0 = e0 = 0
        for nt, ne in zip(data["window_tokens"].tolist(), data["window_entries"].tolist()):
            per = {f: data[f][t0:t0 + nt] for f in _PER_TOKEN}
            rec = BaseRecord(index=data["index"][e0:e0 + ne], logp=data["logp"][e0:e0 + ne], **per)
            if int(rec.counts.sum()) != ne or len(rec.nll) != nt:
                raise ValueError("inconsistent sizes")
            out.append(rec)
            t0, e0 = t0 + nt, e0 + ne
        if t0 != data["targets"].size or e0 != data["index"].size:
            raise ValueError("trailing data")
        return out
    except Exception as exc:  # a damaged cache entry must never break an evaluation
        sys.stderr.write(f"mxmix: warning: ignoring unreadable reference cache {path} ({exc})\n")
        return None
