"""Truncated, corrupted and forged checkpoints: a one-line CheckpointError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from raredet.errors import CheckpointError
from raredet.protos import tensor_bundle_pb2
from raredet.protos.trackable_object_graph_pb2 import TrackableObjectGraph
from raredet.tfcheckpoint import open_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf_checkpoints"
KERNEL = "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
TEXT = "module/text/.ATTRIBUTES/VARIABLE_VALUE"
GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
DATA = "ckpt-1.data-00000-of-00001"


def _error(call, *words: str) -> str:
    """Run `call`; it must raise a one-line CheckpointError containing every word."""
    with pytest.raises(CheckpointError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def _read_all(prefix) -> None:
    ckpt = open_checkpoint(prefix)
    for key in ckpt.keys():
        ckpt.tensor(key)


@pytest.mark.parametrize("keep", [0, 20, 47, 200, -1])
def test_truncated_index(tmp_path, tools, keep):
    prefix = tools.copy("keras", tmp_path)
    index = tmp_path / "ckpt-1.index"
    data = index.read_bytes()
    index.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    _error(lambda: open_checkpoint(prefix), str(index))


def test_truncated_data_file_names_the_file_and_a_key_beyond_it(tmp_path, tools):
    prefix = tools.copy("keras", tmp_path)
    data = tmp_path / DATA
    data.write_bytes(data.read_bytes()[:1000])
    _error(lambda: open_checkpoint(prefix), str(data), "key '", "beyond the file's 1000 bytes")


def test_flipped_byte_in_a_tensor_fails_its_crc_on_read(tmp_path, tools):
    prefix = tools.copy("keras", tmp_path)
    info = open_checkpoint(prefix).info(KERNEL)
    data = tmp_path / DATA
    raw = bytearray(data.read_bytes())
    raw[info.offset + 5] ^= 0x10
    data.write_bytes(bytes(raw))
    ckpt = open_checkpoint(prefix)  # the index is intact: opening works, that tensor does not
    _error(lambda: ckpt.tensor(KERNEL), str(data), f"key {KERNEL!r}", "CRC32C")
    assert ckpt.tensor(KERNEL.replace("kernel", "bias")).shape == (4,)  # the others still read


def test_flipped_byte_in_a_string_tensor(tmp_path, tools):
    prefix = tools.copy("dtypes", tmp_path)
    info = open_checkpoint(prefix).info(TEXT)
    data = tmp_path / DATA
    raw = bytearray(data.read_bytes())
    raw[info.offset + info.size - 1] ^= 0x01  # the last byte of the 300-byte element
    data.write_bytes(bytes(raw))
    _error(lambda: open_checkpoint(prefix).tensor(TEXT), str(data), f"key {TEXT!r}", "CRC32C")


def test_flipped_byte_in_the_index(tmp_path, tools):
    prefix = tools.copy("keras", tmp_path)
    index = tmp_path / "ckpt-1.index"
    raw = bytearray(index.read_bytes())
    raw[100] ^= 0x04
    index.write_bytes(bytes(raw))
    _error(lambda: open_checkpoint(prefix), str(index), "CRC32C")


def test_forger_reproduces_tensorflows_entries(tmp_path, tools, expected):
    # The test helpers' table writer, checked once: TF's entries re-encoded read back the same.
    prefix = tools.forge(tools.copy("keras", tmp_path), lambda entries: None)
    assert open_checkpoint(prefix).keys() == sorted(k for k in expected["keras"]["entries"] if k != GRAPH_KEY)
    assert open_checkpoint(prefix).tensor(KERNEL).sum() == pytest.approx(
        sum(expected["keras"]["entries"][KERNEL]["values"]), rel=1e-6)


def test_index_of_many_blocks_with_shared_prefixes(tmp_path, tools, expected):
    # TF puts up to 256 KiB of entries in a block, so only indexes of thousands of keys have several;
    # the same entries laid out in blocks of 3 with a restart point every 2 keys read the same.
    prefix = tools.copy("keras", tmp_path)
    index = tmp_path / "ckpt-1.index"
    index.write_bytes(tools.write_table(tools.read_entries(index), per_block=3, restart_interval=2))
    ckpt = open_checkpoint(prefix)
    assert ckpt.keys() == sorted(k for k in expected["keras"]["entries"] if k != GRAPH_KEY)
    assert ckpt.info(KERNEL).full_name == "conv/kernel"


@pytest.mark.parametrize(("fields", "words"), [
    ({"shape": [3, 3, 3, 5]}, ["needs 540 bytes, the entry says 432"]),
    ({"shape": [2**40, 2**40, 2**40]}, ["needs", "the entry says 432"]),  # no allocation from a forged shape
    ({"shape": [-1, 4]}, ["not a concrete shape"]),
    ({"dtype": 99}, ["dtype DataType 99"]),
    ({"dtype": tensor_bundle_pb2.DT_VARIANT}, ["dtype DT_VARIANT"]),
    ({"dtype": tensor_bundle_pb2.DT_DOUBLE}, ["needs 864 bytes, the entry says 432"]),
])
def test_forged_entry_refused_by_info_and_tensor(tmp_path, tools, fields, words):
    prefix = tools.forge(tools.copy("keras", tmp_path), tools.edit_entry(KERNEL, **fields))
    ckpt = open_checkpoint(prefix)
    for call in (lambda: ckpt.info(KERNEL), lambda: ckpt.tensor(KERNEL)):
        _error(call, str(tmp_path / "ckpt-1.index"), f"key {KERNEL!r}", *words)
    assert ckpt.stored_layout(KERNEL)[0]  # still listed, for inspect-checkpoint


@pytest.mark.parametrize(("fields", "words"), [
    ({"offset": 5086}, ["bytes 5086..5518 lie beyond the file's 5086 bytes"]),
    ({"offset": -8}, ["bytes -8..424"]),
    ({"size": 10**12}, ["lie beyond the file's 5086 bytes"]),
    ({"shard_id": 3}, ["shard 3 does not exist"]),
])
def test_forged_location_refused_at_open(tmp_path, tools, fields, words):
    prefix = tools.forge(tools.copy("keras", tmp_path), tools.edit_entry(KERNEL, **fields))
    _error(lambda: open_checkpoint(prefix), "ckpt-1.", f"key {KERNEL!r}", *words)


def test_forged_string_count_refused(tmp_path, tools):
    prefix = tools.forge(tools.copy("dtypes", tmp_path), tools.edit_entry(TEXT, shape=[10**12]))
    _error(lambda: open_checkpoint(prefix).tensor(TEXT), f"key {TEXT!r}", "cannot fit in 321 bytes")


def test_forged_string_lengths_refused(tmp_path, tools):
    prefix = tools.forge(tools.copy("dtypes", tmp_path), tools.edit_entry(TEXT, shape=[3]))  # 4 stored
    _error(lambda: open_checkpoint(prefix).tensor(TEXT), DATA, f"key {TEXT!r}", "do not add up")


def test_forged_partitioned_variables(tmp_path, tools):
    prefix = tools.forge(tools.copy("tf1", tmp_path), tools.edit_entry("split", shape=[2**40, 2**40]))
    _error(lambda: open_checkpoint(prefix).tensor("split"), "model.ckpt.index", "key 'split'",
           "needs 4835703278458516698824704 bytes, its 3 slices hold 1200")  # nothing allocated
    prefix = tools.forge(tools.copy("tf1", tmp_path / "lost"),
                         lambda entries: entries.pop(next(k for k in entries if k.startswith(b"\0split\0"))))
    _error(lambda: open_checkpoint(prefix).tensor("split"), "key 'split'", "its 2 slices hold 800")
    prefix = tools.forge(tools.copy("tf1", tmp_path / "shape"), tools.edit_entry("split", shape=[1, 300]))
    _error(lambda: open_checkpoint(prefix).tensor("split"), "key 'split'", "lies outside its shape [1, 300]")


def _header(**fields):
    def edit(entries):
        header = tensor_bundle_pb2.BundleHeaderProto.FromString(entries[b""])
        for name, value in fields.items():
            setattr(header, name, value)
        entries[b""] = header.SerializeToString()
    return edit


@pytest.mark.parametrize(("edit", "words"), [
    (_header(num_shards=3), ["3 data shards, but only 1"]),
    (_header(num_shards=2**31 - 1), ["2147483647 data shards, but only 1"]),
    (_header(num_shards=0), ["0 data shards"]),
    (_header(endianness=1), ["big-endian"]),
    (lambda entries: entries.pop(b""), ["no header entry"]),
    (lambda entries: entries.__setitem__(b"", b"\xff\xff\xff"), ["BundleHeaderProto does not parse"]),
])
def test_forged_header(tmp_path, tools, edit, words):
    prefix = tools.forge(tools.copy("keras", tmp_path), edit)
    _error(lambda: open_checkpoint(prefix), str(tmp_path / "ckpt-1.index"), "key ''", *words)


def test_missing_data_shard(tmp_path, tools):
    prefix = tools.copy("sharded", tmp_path)
    (tmp_path / "model.ckpt.data-00001-of-00002").unlink()
    _error(lambda: open_checkpoint(prefix), "model.ckpt.index", "key ''", "1 model.ckpt.data-* files")


def _with_graph(tools, prefix, graph_bytes: bytes, crc_delta: int = 0):
    """Store `graph_bytes` as the object graph: appended to the data file, its entry pointed at it."""
    data = prefix.with_name(DATA)
    stored, crc = tools.string_tensor([graph_bytes])
    offset = data.stat().st_size
    data.write_bytes(data.read_bytes() + stored)
    edit = tools.edit_entry(GRAPH_KEY, offset=offset, size=len(stored), crc32c=(crc + crc_delta) % 2**32)
    return tools.forge(prefix, edit)


def _graph(name: str):
    return TrackableObjectGraph.FromString(
        open_checkpoint(FIXTURES / name).tensor(GRAPH_KEY)[()])


def test_dangling_child_in_the_object_graph(tmp_path, tools):
    graph = _graph("keras")
    graph.nodes[1].children.add(node_id=len(graph.nodes) + 7, local_name="ghost")
    prefix = _with_graph(tools, tools.copy("keras", tmp_path), graph.SerializeToString())
    _error(lambda: open_checkpoint(prefix), f"key {GRAPH_KEY!r}", "child 'ghost' points to node",
           "ckpt-1.index")


def test_dangling_slot_variable_in_the_object_graph(tmp_path, tools):
    graph = _graph("keras")
    optimizer = next(n for n in graph.nodes if n.slot_variables)
    optimizer.slot_variables[0].slot_variable_node_id = -3
    prefix = _with_graph(tools, tools.copy("keras", tmp_path), graph.SerializeToString())
    _error(lambda: open_checkpoint(prefix), f"key {GRAPH_KEY!r}", "points to node -3")


def test_object_graph_cycles_terminate_with_tensorflows_paths(tmp_path, tools, expected):
    # Cycles are legal (TF writes them: see the dtypes fixture); a forged graph full of them still reads
    # with the paths of the breadth-first walk, and never loops.
    graph = _graph("keras")
    for node_id, node in enumerate(graph.nodes):
        node.children.add(node_id=node_id, local_name="self")
        node.children.add(node_id=0, local_name="root")
    prefix = _with_graph(tools, tools.copy("keras", tmp_path), graph.SerializeToString())
    ckpt = open_checkpoint(prefix)
    assert ckpt.info(KERNEL).object_path == expected["keras"]["entries"][KERNEL]["object_path"]


def test_garbage_object_graph(tmp_path, tools):
    prefix = _with_graph(tools, tools.copy("keras", tmp_path), b"\x0a\xff\xff\xff\x0f")
    _error(lambda: open_checkpoint(prefix), f"key {GRAPH_KEY!r}", "does not parse")


def test_object_graph_with_a_wrong_crc(tmp_path, tools):
    prefix = _with_graph(tools, tools.copy("keras", tmp_path), _graph("keras").SerializeToString(), 1)
    _error(lambda: open_checkpoint(prefix), DATA, f"key {GRAPH_KEY!r}", "CRC32C")
