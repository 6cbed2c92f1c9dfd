"""Partitioned variables by hand: the slice-key prefix's escaping, extents read from an entry, and a tensor
assembled from its slices (paired with their sorted keys), with the errors of a corrupted index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raredet.errors import CheckpointError
from raredet.protos import tensor_bundle_pb2
from raredet.tfcheckpoint.slices import assemble, extents, slice_key_prefix

INDEX = Path("ckpt.index")


def _entry(shape, slices):
    entry = tensor_bundle_pb2.BundleEntryProto()
    entry.shape.dim.extend(tensor_bundle_pb2.TensorShapeProto.Dim(size=d) for d in shape)
    for piece in slices:
        spec = entry.slices.add()
        for start, length in piece:
            extent = spec.extent.add(start=start)
            if length != -1:
                extent.length = length
    return entry


def test_slice_key_prefix_escapes_0x00_and_0xff_then_terminates():
    # b"\x00" (the number 0), the name with 00 -> 00 ff and ff -> ff 00, then 00 01
    assert slice_key_prefix("w") == "\x00w\x00\x01"
    raw = slice_key_prefix("a\x00b").encode("utf-8", "surrogateescape")
    assert raw == b"\x00a\x00\xffb\x00\x01"


def test_extents_length_minus_one_for_a_whole_dimension():
    entry = _entry([4, 3], [[(0, 2), (0, -1)], [(2, 2), (0, -1)], []])
    assert extents(entry) == [((0, 2), (0, -1)), ((2, 2), (0, -1)), ((0, -1), (0, -1))]


def test_a_tensor_assembled_from_two_row_slices():
    # rows 0-1 and 2-3 of a 4 x 3 tensor; keys sort as the extents do, so key "k1" is rows 0-1
    entry = _entry([4, 3], [[(2, 2), (0, -1)], [(0, 2), (0, -1)]])
    parts = {"k1": np.arange(6.0).reshape(2, 3), "k2": 10 + np.arange(6.0).reshape(2, 3)}
    full = assemble(INDEX, "w", entry, np.dtype(np.float64), (4, 3), ["k2", "k1"], parts.__getitem__)
    np.testing.assert_array_equal(full, np.concatenate([parts["k1"], parts["k2"]]))


def test_a_corrupted_index_is_a_checkpoint_error_naming_the_key():
    entry = _entry([4, 3], [[(0, 2), (0, -1)], [(2, 2), (0, -1)]])
    with pytest.raises(CheckpointError, match=r"ckpt\.index: key 'w': 2 slices listed, 1 stored"):
        assemble(INDEX, "w", entry, np.dtype(np.float64), (4, 3), ["k1"], None)
    rows = {"k1": np.zeros((2, 3)), "k2": np.zeros((1, 3))}
    with pytest.raises(CheckpointError, match=r"a slice of shape \[1, 3\] is stored for the extent"):
        assemble(INDEX, "w", entry, np.dtype(np.float64), (4, 3), ["k1", "k2"], rows.__getitem__)
    outside = _entry([4, 3], [[(3, 2), (0, -1)]])
    with pytest.raises(CheckpointError,
                       match=r"slice extent \[\(3, 2\), \(0, -1\)\] lies outside its shape \[4, 3\]"):
        assemble(INDEX, "w", outside, np.dtype(np.float64), (4, 3), ["k1"], rows.__getitem__)
    half = _entry([4, 3], [[(0, 2), (0, -1)]])
    with pytest.raises(CheckpointError, match=r"its slices hold 6 of its 12 values"):
        assemble(INDEX, "w", half, np.dtype(np.float64), (4, 3), ["k1"], rows.__getitem__)
