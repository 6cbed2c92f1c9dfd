"""The `tiny_ssd` fixture: the modeling tests' small SSD (tests/helpers/ssd.py's tiny_ssd_kwargs), built."""

import pytest
from tests.helpers.ssd import ssd_from_dicts, tiny_ssd_kwargs


@pytest.fixture
def tiny_ssd():
    def make(**kwargs):
        return ssd_from_dicts(**tiny_ssd_kwargs(**kwargs))

    return make
