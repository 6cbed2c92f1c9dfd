"""Fixtures for the TF checkpoint tests (their helpers: tests/helpers/tf_checkpoints.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tests.helpers import tf_checkpoints


@pytest.fixture(scope="session")
def expected() -> dict:
    return tf_checkpoints.expected_values()


@pytest.fixture
def tools() -> SimpleNamespace:
    return tf_checkpoints.tools()
