"""The generated protos are current, import cleanly, and tf.train.Example is wire-compatible."""

import importlib
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from raredet.protos import example_pb2, generate

PROTO_DIR = Path(generate.__file__).parent
MODULES = sorted(p.stem for p in PROTO_DIR.glob("*_pb2.py"))


def test_every_proto_has_committed_generated_code():
    stems = {p.stem for p in PROTO_DIR.glob("*.proto")}
    assert stems, "no .proto files found"
    assert {m.removesuffix("_pb2") for m in MODULES} == stems


_VERSION_LINE = re.compile(rb"# Protobuf Python Version: (\S+)")
_VERSION_CHECK = re.compile(rb"ValidateProtobufRuntimeVersion\([^)]*\)")


def _without_versions(code: bytes) -> bytes:
    return _VERSION_CHECK.sub(b"", _VERSION_LINE.sub(b"", code))


def test_generated_code_is_current(tmp_path):
    """Regenerate into a temporary folder; every file must match the committed one byte for byte.

    When the installed protoc is another version than the one that wrote the committed files, only the
    version stamps may differ (the schema must still match exactly).
    """
    pytest.importorskip("grpc_tools")
    fresh = generate.generate(tmp_path)
    assert sorted(p.name for p in fresh) == sorted(p.name for p in PROTO_DIR.glob("*_pb2.py*"))
    committed = {p.name: (PROTO_DIR / p.name).read_bytes() for p in fresh}
    new = {p.name: p.read_bytes() for p in fresh}
    same_protoc = _VERSION_LINE.search(new["pipeline_pb2.py"]).group(1) == \
        _VERSION_LINE.search(committed["pipeline_pb2.py"]).group(1)
    if same_protoc:
        stale = [name for name in new if new[name] != committed[name]]
    else:
        stale = [name for name in new if _without_versions(new[name]) != _without_versions(committed[name])]
    assert not stale, f"stale generated protos {stale}: run `make protos` and commit"


@pytest.mark.slow
def test_generated_modules_import_without_warnings():
    # A fresh interpreter, so modules already imported by other tests do not hide a warning.
    code = "import importlib\n" + "".join(f"importlib.import_module('raredet.protos.{m}')\n" for m in MODULES)
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in MODULES:
            importlib.import_module(f"raredet.protos.{name}")


def test_example_bytes_match_tensorflow_wire_format():
    ex = example_pb2.Example()
    ex.features.feature["a"].int64_list.value.extend([1, 2])
    # Written out by hand from TensorFlow's field numbers (tag = field << 3 | wire type 2):
    # Example.features(1) { Features.feature(1) map entry { key(1) "a", value(2) Feature {
    #   int64_list(3) { value(1) packed [1, 2] } } } }
    int64_list = b"\x0a\x02\x01\x02"
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list
    entry = b"\x0a\x01a" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    assert ex.SerializeToString() == b"\x0a" + bytes([len(features)]) + features


def test_example_float_and_bytes_lists_parse_from_hand_written_bytes():
    floats = struct.pack("<2f", 0.5, -1.0)
    float_list = b"\x0a" + bytes([len(floats)]) + floats  # FloatList.value(1), packed
    feature_f = b"\x12" + bytes([len(float_list)]) + float_list  # Feature.float_list(2)
    bytes_list = b"\x0a\x03abc\x0a\x00"  # BytesList.value(1) twice: b"abc", b""
    feature_b = b"\x0a" + bytes([len(bytes_list)]) + bytes_list  # Feature.bytes_list(1)

    def entry(key: bytes, feature: bytes) -> bytes:
        body = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(feature)]) + feature
        return b"\x0a" + bytes([len(body)]) + body

    features = entry(b"x", feature_f) + entry(b"y", feature_b)
    ex = example_pb2.Example.FromString(b"\x0a" + bytes([len(features)]) + features)
    assert list(ex.features.feature["x"].float_list.value) == [0.5, -1.0]
    assert list(ex.features.feature["y"].bytes_list.value) == [b"abc", b""]
    assert ex.features.feature["y"].WhichOneof("kind") == "bytes_list"
