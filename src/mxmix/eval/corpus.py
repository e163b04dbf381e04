"""Evaluation text: the embedded default corpus, user text files, and the token windows cut from them.

Default text: CPython's own ``pydoc_data.topics`` (the language reference topics, ~466 KB of English
prose and code, PSF licence). It ships with every CPython, so the default needs no setup step and
nothing is ever downloaded at run time. ``--text FILE`` takes any UTF-8 files instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from mxmix.errors import MxmixError

DEFAULT_CORPUS_NAME = "pydoc_data.topics (CPython stdlib)"
MAX_TEXT_BYTES = 512 * 1024 * 1024


def default_text() -> str:
    """The embedded corpus: every pydoc topic, in sorted topic order, separated by blank lines."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Python builds
        raise MxmixError("the default corpus (pydoc_data.topics) is missing from this Python; "
                         "pass --text FILE") from None
    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def read_texts(paths: Sequence[str | os.PathLike[str]]) -> str:
    """Concatenate UTF-8 text files (blank line between them), with one-line errors."""
    parts = []
    for p in paths:
        path = Path(p)
        try:
            if path.stat().st_size > MAX_TEXT_BYTES:
                raise MxmixError(f"{path}: larger than {MAX_TEXT_BYTES // 2**20} MiB; pass a smaller text file")
            parts.append(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MxmixError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise MxmixError(f"{path}: is a directory, not a text file") from None
        except UnicodeDecodeError:
            raise MxmixError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise MxmixError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text = "\n\n".join(parts)
    if not text.strip():
        raise MxmixError("the evaluation text is empty")
    return text


def load_text(paths: Sequence[str | os.PathLike[str]] | None) -> tuple[str, str]:
    """(text, description): the given files, or the embedded default when none."""
    if paths:
        return read_texts(paths), ", ".join(str(p) for p in paths)
    return default_text(), DEFAULT_CORPUS_NAME


def token_windows(ids: Sequence[int], ctx: int, windows: int | None = None) -> list[list[int]]:
    """Cut consecutive, non-overlapping ``ctx``-token chunks (llama.cpp's chunking) and pick ``windows``.

    When fewer windows are asked for than the text holds, they are spread evenly over the whole text
    (chunk i·total/windows), so a short run still samples all of it rather than its first topics.
    """
    if ctx < 4:
        raise MxmixError(f"--ctx {ctx} is too small (at least 4 tokens: half the window is context)")
    total = len(ids) // ctx
    if total < 1:
        raise MxmixError(f"the text has only {len(ids)} tokens, fewer than one {ctx}-token window; "
                         "pass more text or a smaller --ctx")
    if windows is not None and windows < 1:
        raise MxmixError(f"--windows must be at least 1 (got {windows})")
    n = total if windows is None else min(windows, total)
    picks = [(i * total) // n for i in range(n)]
    return [list(ids[c * ctx:(c + 1) * ctx]) for c in picks]


def windows_digest(windows: Sequence[Sequence[int]]) -> str:
    """A stable hash of the exact token windows (part of the reference-logits cache key)."""
    h = hashlib.sha256()
    for w in windows:
        h.update(len(w).to_bytes(4, "little"))
        h.update(b"".join(int(t).to_bytes(4, "little", signed=True) for t in w))
    return h.hexdigest()
