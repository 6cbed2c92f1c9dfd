"""The LevelDB table layer under TF's checkpoint index: varints and CRC masking by hand, and tables written
by an independent writer (tests/helpers/tf_checkpoints.py) read back entry for entry."""

from __future__ import annotations

import pytest
from tests.helpers.tf_checkpoints import write_table

from raredet.tfcheckpoint.table import Malformed, mask_crc, masked_crc32c, read_table, read_varint


def test_varints_by_hand():
    # 300 = 0b1_0010_1100: low 7 bits 0x2C with the continuation bit (0xAC), then 300 >> 7 = 2
    assert read_varint(b"\xac\x02", 0, 2) == (300, 2)
    assert read_varint(b"\x00\x7f", 1, 2) == (127, 2)
    with pytest.raises(Malformed, match="varint at byte 0 is cut off"):
        read_varint(b"\xac\x82", 0, 2)  # the last byte still says "more"
    with pytest.raises(Malformed, match="longer than 2 bytes"):
        read_varint(b"\x80\x80\x01", 0, 3, max_bytes=2)


def test_crc_masking_by_hand():
    # CRC-32C's check value: crc32c(b"123456789") = 0xE3069283 (RFC 3720). Masked: rotate right by 15
    # bits, i.e. 0xE3069283 >> 15 = 0x1C60D, | (0xE3069283 << 17) mod 2**32 = 0x25060000 -> 0x2507C60D;
    # plus 0xA282EAD8 = 0xC78AB0E5.
    assert mask_crc(0xE3069283) == 0xC78AB0E5
    assert masked_crc32c(b"123456789") == 0xC78AB0E5


@pytest.mark.parametrize(("per_block", "restart_interval"), [(1 << 30, 1), (2, 1), (3, 2)])
def test_tables_of_an_independent_writer_read_back_exactly(tmp_path, per_block, restart_interval):
    entries = {b"": b"header", b"a": b"1", b"ab": b"", b"b" * 300: b"x" * 1000, b"c\x00\xff": b"\x00"}
    path = tmp_path / "t.index"
    path.write_bytes(write_table(entries, per_block=per_block, restart_interval=restart_interval))
    assert read_table(path) == entries
