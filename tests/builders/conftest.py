"""Fixtures shared by the tests of raredet.builders."""

from __future__ import annotations

import pytest
from tests.helpers import tiny_pipeline as tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny synthetic dataset (tests/helpers/tiny_pipeline.py), once per test module."""
    out = tmp_path_factory.mktemp("tiny")
    tiny.make_data(out)
    return out
