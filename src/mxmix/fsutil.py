"""Write outputs so that nothing is lost: a temporary sibling renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mxmix.errors import MxmixError


def refuse_existing(dst: Path, force: bool) -> None:
    """Fail early (before any work) when ``dst`` exists and ``--force`` was not given."""
    if dst.exists() and not force:
        raise MxmixError(f"{dst} already exists; pass --force to overwrite it")


def apply_umask(path: Path, files: bool = False) -> None:
    """Give a path made by ``tempfile`` (mode 0700/0600) the permissions of an ordinary mkdir/open;
    with ``files``, a directory's files too (some writers create them 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        if files:
            for p in path.iterdir():
                if p.is_file() and not p.is_symlink():
                    os.chmod(p, 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _replace(tmp: Path, dst: Path, force: bool) -> None:
    refuse_existing(dst, force)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(tmp, dst)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, dst)


@contextlib.contextmanager
def atomic_output_dir(dst: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``dst``; on success it becomes ``dst``, on failure it vanishes."""
    dst = Path(dst)
    refuse_existing(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        apply_umask(tmp)
        _replace(tmp, dst, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_output_file(dst: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``dst``; it replaces ``dst`` only if the block succeeds."""
    dst = Path(dst)
    refuse_existing(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.tmp-", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            apply_umask(tmp)
        _replace(tmp, dst, force)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
