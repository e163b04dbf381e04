"""Progress bars for long work: on stderr, only when it is a terminal (or when forced)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool | None = None,
             unit: str = "it", **kwargs: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr; ``enabled=None`` shows it only on a TTY."""
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    yield from tqdm(iterable, total=total, desc=desc, disable=disable, unit=unit, file=sys.stderr,
                    dynamic_ncols=True, **kwargs)


def progress_bar(*, total: int | None = None, desc: str = "", enabled: bool | None = None, unit: str = "it",
                 **kwargs: Any) -> Any:
    """A manual tqdm bar (``.update(n)``, ``.close()``), same visibility rule as :func:`progress`."""
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total, desc=desc, disable=disable, unit=unit, file=sys.stderr, dynamic_ncols=True,
                **kwargs)
