"""One error type for everything a user can get wrong, so the CLI can print it as one line."""

from __future__ import annotations


class MxmixError(Exception):
    """A user-facing failure: bad input, unreadable file, refused operation.

    The CLI prints ``mxmix: error: <message>`` and exits with ``exit_code``; it never shows a
    traceback for these.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CheckpointError(MxmixError):
    """A checkpoint that cannot be read safely (malformed, truncated, lying, escaping its directory)."""
