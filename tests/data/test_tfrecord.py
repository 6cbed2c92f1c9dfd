"""TFRecord framing against the published spec, tf.Example wire format built by hand, bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raredet.data.tfrecord import (
    TFRecordFile,
    TFRecordReader,
    detection_example,
    encode_example,
    expand_input_paths,
    frame_record,
    masked_crc,
    write_tfrecord,
)
from raredet.errors import DataError


def reference_crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), independent of the package."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def reference_masked(data: bytes) -> int:
    crc = reference_crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_reference_crc_matches_published_check_value():
    assert reference_crc32c(b"123456789") == 0xE3069283


def test_record_bytes_match_spec_built_by_hand(tmp_path):
    payload = b"hello"
    length = bytes([5, 0, 0, 0, 0, 0, 0, 0])
    expected = (
        length
        + reference_masked(length).to_bytes(4, "little")
        + payload
        + reference_masked(payload).to_bytes(4, "little")
    )
    assert frame_record(payload) == expected
    assert masked_crc(payload) == reference_masked(payload)
    path = tmp_path / "hand.tfrecord"
    path.write_bytes(expected + expected.replace(b"hello", b"hello"))
    file = TFRecordFile(path)
    assert len(file) == 2 and file.read(1) == b"hello"


def test_roundtrip_random_access(tmp_path):
    records = [bytes([i]) * i for i in range(7)]  # includes an empty record
    path = write_tfrecord(tmp_path / "r.tfrecord", records)
    file = TFRecordFile(path)
    assert len(file) == 7
    assert [file.read(i) for i in (6, 0, 3)] == [records[6], b"", records[3]]
    assert list(file) == records


@pytest.mark.slow  # child processes
def test_encode_example_is_byte_identical_across_processes():
    # The feature map's wire order must not depend on the process (protobuf map order is hashed per
    # process), or `raredet synth` writes different files for the same seed.
    import subprocess
    import sys

    code = (
        "import sys; from raredet.data.tfrecord import encode_example; "
        "sys.stdout.write(encode_example({f'key/{k}': k for k in range(20)}).hex())"
    )
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(2)}
    outputs.add(encode_example({f"key/{k}": k for k in range(20)}).hex())  # and this process
    assert len(outputs) == 1


def test_data_crc_mismatch_names_file_and_record(tmp_path):
    path = write_tfrecord(tmp_path / "c.tfrecord", [b"aaaa", b"bbbb"])
    raw = bytearray(path.read_bytes())
    raw[len(frame_record(b"aaaa")) + 12] ^= 0xFF  # first payload byte of record 1
    path.write_bytes(bytes(raw))
    file = TFRecordFile(path)
    assert file.read(0) == b"aaaa"
    with pytest.raises(DataError, match=r"c\.tfrecord: record 1: data CRC mismatch"):
        file.read(1)


def test_reader_reports_data_crc_mismatch_as_such(tmp_path, label_map, encode_image):
    # A corrupt payload is a CRC error, said once; not "not a tf.train.Example" wrapping it.
    path = _write(tmp_path, encoded=encode_image(10, 20))
    raw = bytearray(path.read_bytes())
    raw[12] ^= 0xFF  # first payload byte of record 0
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as info:
        TFRecordReader([path], label_map).annotations(0)
    message = str(info.value)
    assert "record 0: data CRC mismatch" in message
    assert "not a tf.train.Example" not in message and message.count("bad.tfrecord") == 1


def test_length_crc_mismatch(tmp_path):
    path = write_tfrecord(tmp_path / "l.tfrecord", [b"aaaa"])
    raw = bytearray(path.read_bytes())
    raw[0] = 200
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"l\.tfrecord: record 0 .*length CRC"):
        TFRecordFile(path)


@pytest.mark.parametrize("cut", [3, 10])
def test_truncated_file(tmp_path, cut):
    path = write_tfrecord(tmp_path / "t.tfrecord", [b"a" * 20, b"b" * 20])
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DataError, match=r"t\.tfrecord: record 1 is truncated"):
        TFRecordFile(path)


def test_expand_input_paths_glob_and_shards(tmp_path):
    for s in range(3):
        write_tfrecord(tmp_path / f"train-{s:05d}-of-00003", [b"x"])
    found = expand_input_paths([str(tmp_path / "train-?????-of-00003")])
    assert [p.name for p in found] == [f"train-{s:05d}-of-00003" for s in range(3)]
    (tmp_path / "train-00001-of-00003").unlink()
    with pytest.raises(DataError, match="found 2 of 3 shards"):
        expand_input_paths([str(tmp_path / "train-?????-of-00003")])
    with pytest.raises(DataError, match="matches no file"):
        expand_input_paths([str(tmp_path / "val-*")])


# ---- tf.Example by hand at the wire level --------------------------------------------------------


def varint(n: int) -> bytes:
    out = b""
    n &= 2**64 - 1
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def ld(field: int, payload: bytes) -> bytes:  # a length-delimited field
    return varint((field << 3) | 2) + varint(len(payload)) + payload


def feat_bytes(*values: bytes) -> bytes:
    return ld(1, b"".join(ld(1, v) for v in values))


def feat_floats(*values: float) -> bytes:
    return ld(2, ld(1, struct.pack(f"<{len(values)}f", *values)))


def feat_ints(*values: int) -> bytes:
    return ld(3, ld(1, b"".join(varint(v) for v in values)))


def hand_example(features: dict[str, bytes]) -> bytes:
    entries = b"".join(ld(1, ld(1, k.encode()) + ld(2, v)) for k, v in features.items())
    return ld(1, entries)


def test_reads_hand_encoded_example(tmp_path, label_map, encode_image):
    png = encode_image(40, 80)
    record = hand_example(
        {
            "image/encoded": feat_bytes(png),
            "image/format": feat_bytes(b"png"),
            "image/height": feat_ints(40),
            "image/width": feat_ints(80),
            "image/source_id": feat_bytes(b"img-7"),
            "image/object/bbox/xmin": feat_floats(0.25, 0.0),
            "image/object/bbox/xmax": feat_floats(0.5, 1.0),
            "image/object/bbox/ymin": feat_floats(0.5, 0.0),
            "image/object/bbox/ymax": feat_floats(1.0, 0.25),
            "image/object/class/label": feat_ints(3, 1),
            "image/object/class/weight": feat_floats(0.5, 2.0),
            "image/object/is_crowd": feat_ints(0, 1),
        }
    )
    path = write_tfrecord(tmp_path / "h.tfrecord", [record])
    ex = TFRecordReader([path], label_map).example(0)
    # 0.25 * 80 = 20, 0.5 * 40 = 20, ...
    np.testing.assert_allclose(ex["boxes"], [[20, 20, 40, 40], [0, 0, 80, 10]])
    assert ex["labels"].tolist() == [1, 0]  # id 3 is "dog", index 1
    assert ex["weights"].tolist() == [0.5, 2.0]
    assert ex["is_crowd"].tolist() == [False, True]
    assert ex["difficult"].tolist() == [False, False]
    assert ex["source_id"] == "img-7" and ex["image"].shape == (40, 80, 3)


def _write(tmp_path, **features):
    base = {
        "image/encoded": features.pop("encoded"),
        "image/height": 10,
        "image/width": 20,
        "image/object/bbox/xmin": np.array([0.1], np.float32),
        "image/object/bbox/ymin": np.array([0.2], np.float32),
        "image/object/bbox/xmax": np.array([0.5], np.float32),
        "image/object/bbox/ymax": np.array([0.6], np.float32),
        "image/object/class/label": np.array([1], np.int64),
    }
    base.update(features)
    record = encode_example({k: v for k, v in base.items() if v is not None})
    return write_tfrecord(tmp_path / "bad.tfrecord", [record])


def test_text_preferred_and_missing_weights_default(tmp_path, label_map, encode_image):
    path = _write(tmp_path, encoded=encode_image(10, 20), **{"image/object/class/text": ["dog"]})
    ann = TFRecordReader([path], label_map).annotations(0)
    assert ann["labels"].tolist() == [1] and ann["weights"].tolist() == [1.0]
    np.testing.assert_allclose(ann["boxes"], [[2, 2, 10, 6]], rtol=1e-6)


def test_hair_outside_is_clipped(tmp_path, label_map, encode_image):
    path = _write(
        tmp_path,
        encoded=encode_image(10, 20),
        **{
            "image/object/bbox/xmin": np.array([-0.001], np.float32),
            "image/object/bbox/xmax": np.array([1.0005], np.float32),
        },
    )
    np.testing.assert_allclose(TFRecordReader([path], label_map).annotations(0)["boxes"][0, [0, 2]], [0, 20])


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (
            {"image/object/bbox/xmin": np.array([0.7], np.float32)},
            r"record 0: bbox of object 0 has xmin > xmax",
        ),
        ({"image/object/bbox/xmax": np.array([1.5], np.float32)}, r"record 0: bbox of object 0 .* outside"),
        (
            {"image/object/class/label": np.array([2], np.int64)},
            r"record 0: object 0 has class id 2, .*label map",
        ),
        ({"image/object/class/text": ["cow"]}, r"record 0: object 0 has class 'cow'"),
        (
            {"image/object/weight": np.array([-1.0], np.float32)},
            r"record 0: field 'weight' of object 0 is -1",
        ),
        (
            {"image/object/weight": np.array([np.nan], np.float32)},
            r"record 0: field 'weight' of object 0 is nan",
        ),
        (
            {
                "image/object/weight": np.array([1.0], np.float32),
                "image/object/class/weight": np.array([2.0], np.float32),
            },
            "record 0: fields 'image/object/weight' and 'image/object/class/weight' differ",
        ),
        (
            {"image/object/bbox/ymax": np.array([], np.float32)},
            "record 0: field 'image/object/bbox/ymax' has 0 values",
        ),
    ],
)
def test_bad_annotations(tmp_path, label_map, encode_image, features, message):
    path = _write(tmp_path, encoded=encode_image(10, 20), **features)
    with pytest.raises(DataError, match=r"bad\.tfrecord, " + message):
        TFRecordReader([path], label_map).annotations(0)


def test_undecodable_image(tmp_path, label_map):
    path = _write(tmp_path, encoded=b"\xff\xd8 not really a jpeg")
    reader = TFRecordReader([path], label_map)
    reader.annotations(0)  # annotations never decode the image
    expected = r"bad\.tfrecord, record 0: field 'image/encoded' cannot be decoded"
    with pytest.raises(DataError, match=expected) as info:
        reader.example(0)
    assert "object at 0x" not in str(info.value)  # Pillow's text names an in-memory buffer: noise here


def test_reader_spans_files_and_draft_decoding(tmp_path, label_map, encode_image):
    paths = []
    for f in range(2):
        records = [
            detection_example(
                encoded=encode_image(64, 96, "JPEG", seed=f * 10 + i),
                image_format="jpeg",
                height=64,
                width=96,
                boxes=np.array([[8.0, 16.0, 48.0, 32.0]]),
                class_ids=np.array([1]),
                source_id=f"{f}-{i}",
            )
            for i in range(3)
        ]
        paths.append(write_tfrecord(tmp_path / f"s-{f:05d}-of-00002", records))
    reader = TFRecordReader(paths, label_map)
    assert len(reader) == 6 and reader.annotations(4)["source_id"] == "1-1"
    ex = reader.example(4, draft_size=(16, 24))  # JPEG draft decodes at 1/4 scale here
    assert ex["image"].shape == (16, 24, 3) and ex["original_size"] == (64, 96)
    np.testing.assert_allclose(ex["boxes"], [[2, 4, 12, 8]], rtol=1e-5)
    with pytest.raises(IndexError):
        reader.annotations(6)


def test_file_survives_pickling(tmp_path):
    import pickle

    file = TFRecordFile(write_tfrecord(tmp_path / "p.tfrecord", [b"a", b"bc"]))
    assert file.read(1) == b"bc"  # opens the cached handle
    clone = pickle.loads(pickle.dumps(file))
    assert clone.read(0) == b"a" and file.read(0) == b"a"


def test_unpacked_int64_values_parse(tmp_path, label_map, encode_image):
    """Writers may emit repeated int64s unpacked (one tag per value); the wire format allows both."""
    unpacked_labels = ld(3, b"".join(varint(1 << 3) + varint(v) for v in (1, 3)))
    record = hand_example(
        {
            "image/encoded": feat_bytes(encode_image(10, 10)),
            "image/height": feat_ints(10),
            "image/width": feat_ints(10),
            "image/object/bbox/xmin": feat_floats(0.0, 0.5),
            "image/object/bbox/xmax": feat_floats(0.5, 1.0),
            "image/object/bbox/ymin": feat_floats(0.0, 0.0),
            "image/object/bbox/ymax": feat_floats(1.0, 1.0),
            "image/object/class/label": unpacked_labels,
        }
    )
    reader = TFRecordReader([write_tfrecord(tmp_path / "u.tfrecord", [record])], label_map)
    assert reader.annotations(0)["labels"].tolist() == [0, 1]


def _fuzz_reader(path, label_map):
    reader = TFRecordReader([path], label_map)
    for i in range(len(reader)):
        reader.example(i)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_corrupted_files_give_data_errors(tmp_path, label_map, encode_image, data):
    """Any byte flipped, dropped or appended: a DataError naming the file, or (if harmless) a good read."""
    record = detection_example(
        encoded=encode_image(8, 8),
        image_format="png",
        height=8,
        width=8,
        boxes=np.array([[1.0, 1.0, 4.0, 4.0]]),
        class_ids=np.array([3]),
        weights=np.array([0.5]),
    )
    raw = bytearray(frame_record(record) * 2)
    op = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if op == "flip":
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif op == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=20))
    path = tmp_path / "fuzz.tfrecord"
    path.write_bytes(bytes(raw))
    try:
        _fuzz_reader(path, label_map)
    except DataError as err:
        assert "fuzz.tfrecord" in str(err)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=200))
def test_fuzz_payloads_give_data_errors(tmp_path, label_map, payload):
    """Well-framed garbage payloads: a DataError naming the record, never another exception."""
    path = write_tfrecord(tmp_path / "payload.tfrecord", [payload])
    try:
        _fuzz_reader(path, label_map)
    except DataError as err:
        assert "payload.tfrecord, record 0" in str(err)


_KEYS = [
    "image/height",
    "image/width",
    "image/object/bbox/xmin",
    "image/object/bbox/ymin",
    "image/object/bbox/xmax",
    "image/object/bbox/ymax",
    "image/object/class/label",
    "image/object/class/text",
    "image/object/weight",
    "image/object/class/weight",
    "image/object/is_crowd",
    "image/object/difficult",
    "image/source_id",
]
_VALUE = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=3),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    st.lists(st.binary(max_size=5), max_size=3),
)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(features=st.dictionaries(st.sampled_from(_KEYS), _VALUE))
def test_fuzz_feature_types_and_lengths(tmp_path, label_map, encode_image, features):
    """Wrong list types, lengths and values in the annotation keys: DataError or a valid example."""
    typed = {
        k: (np.asarray(v, np.float32) if v and isinstance(v[0], float) else v) for k, v in features.items()
    }
    typed = {k: (v if len(v) else np.zeros(0, np.int64)) for k, v in typed.items()}
    record = encode_example({"image/encoded": encode_image(8, 8), **typed})
    path = write_tfrecord(tmp_path / "typed.tfrecord", [record])
    try:
        ex = TFRecordReader([path], label_map).example(0)
    except DataError as err:
        assert "typed.tfrecord, record 0" in str(err)
    else:
        assert len(ex["boxes"]) == len(ex["labels"]) == len(ex["weights"])
        assert np.isfinite(ex["boxes"]).all() and (ex["weights"] >= 0).all()
