"""Fixtures for the codec tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def fresh_seed() -> int:
    """A new seed every run (printed on failure via the assertion messages that include it)."""
    return int.from_bytes(os.urandom(4), "little")
