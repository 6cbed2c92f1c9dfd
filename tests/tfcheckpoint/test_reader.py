"""raredet.tfcheckpoint reads what TensorFlow 2.15.1 wrote exactly as TensorFlow reads it back.

Expected values: tests/fixtures/tf_checkpoints/expected.json, written by TensorFlow itself
(tf.train.list_variables, tf.train.load_checkpoint, TF's own object-graph traversal).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from raredet.errors import CheckpointError
from raredet.tfcheckpoint import TensorInfo, is_tf_checkpoint, open_checkpoint, resolve_prefix

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf_checkpoints"
NAMES = ["keras", "dtypes", "sharded", "tf1"]
GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# tf.DType.name -> the DataType enum name (tensorflow/core/framework/types.proto)
TF_NAMES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "bfloat16": "DT_BFLOAT16",
            "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
            "uint8": "DT_UINT8", "bool": "DT_BOOL", "string": "DT_STRING"}


def _as_expected(value: np.ndarray) -> list:
    if value.dtype == object:
        return [base64.b64encode(v).decode("ascii") for v in value.reshape(-1)]
    return value.astype(np.float64 if value.dtype.kind == "f" else value.dtype).reshape(-1).tolist()


def _readable(name: str, expected: dict) -> dict:
    return {k: v for k, v in expected[name]["entries"].items() if k != GRAPH_KEY}


@pytest.mark.parametrize("name", NAMES)
def test_keys_are_tensorflows(name, expected):
    ckpt = open_checkpoint(FIXTURES / expected[name]["prefix"])
    assert ckpt.keys() == sorted(k for k in expected[name]["entries"] if k != GRAPH_KEY)
    assert ckpt.prefix == FIXTURES / expected[name]["prefix"]


@pytest.mark.parametrize("name", NAMES)
def test_values_dtypes_and_shapes_equal_tensorflows(name, expected):
    ckpt = open_checkpoint(FIXTURES / expected[name]["prefix"])
    for key, want in _readable(name, expected).items():
        info = ckpt.info(key)
        value = ckpt.tensor(key)
        assert info.shape == tuple(want["shape"]) == value.shape, key
        assert info.tf_dtype == TF_NAMES[want["dtype"]], key
        assert _as_expected(value) == want["values"], key


@pytest.mark.parametrize("name", NAMES)
def test_object_paths_and_full_names_equal_tensorflows(name, expected):
    ckpt = open_checkpoint(FIXTURES / expected[name]["prefix"])
    for key, want in _readable(name, expected).items():
        info = ckpt.info(key)
        assert (info.object_path, info.full_name) == (want["object_path"], want["full_name"]), key
    names = {k: v["full_name"] for k, v in expected[name]["entries"].items() if v["full_name"] is not None}
    assert ckpt.full_names() == names
    assert (ckpt.object_graph is None) == (name in ("sharded", "tf1"))


def test_every_dtype_comes_back_as_numpy_says(expected):
    ckpt = open_checkpoint(FIXTURES / "dtypes" / "ckpt-1")
    dtypes = {key.split("/")[1]: ckpt.info(key).dtype for key in ckpt.keys()}
    assert dtypes == {"bf16": np.float32, "child": np.float32, "empty": np.float32, "f16": np.float16,
                      "f32": np.float32, "f64": np.float64, "flag": np.bool_, "i16": np.int16,
                      "i32": np.int32, "i64": np.int64, "i8": np.int8, "scalar": np.float32, "text": "string",
                      "u8": np.uint8, "word": "string"}
    text = ckpt.tensor("module/text/.ATTRIBUTES/VARIABLE_VALUE")
    assert text.dtype == object and text.tolist() == [b"", b"raredet", "\u00e9t\u00e9".encode(), b"x" * 300]
    assert ckpt.tensor("module/word/.ATTRIBUTES/VARIABLE_VALUE")[()] == b"scalar string"
    bf16 = ckpt.info("module/bf16/.ATTRIBUTES/VARIABLE_VALUE")
    assert (bf16.tf_dtype, bf16.size) == ("DT_BFLOAT16", 8)  # 2 bytes an element on disk, float32 returned


def test_tensors_are_read_only_views_of_the_mapped_file():
    ckpt = open_checkpoint(FIXTURES / "keras")
    key = "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    kernel = ckpt.tensor(key)
    assert not kernel.flags.writeable
    base = kernel
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)  # a view: the bytes are not copied into memory
    info = ckpt.info(key)
    assert isinstance(info, TensorInfo) and info.size == 3 * 3 * 3 * 4 * 4
    assert info.offset + info.size <= (FIXTURES / "keras" / "ckpt-1.data-00000-of-00001").stat().st_size


def test_variables_and_slots_of_a_keras_checkpoint(expected):
    ckpt = open_checkpoint(FIXTURES / "keras")
    entries = expected["keras"]["entries"]
    slot_keys = {k for k in entries if "/.OPTIMIZER_SLOT/" in k}
    assert ckpt.variables() == {v["object_path"]: k for k, v in entries.items()
                                if k != GRAPH_KEY and k not in slot_keys}
    assert "save_counter" in ckpt.variables() and "optimizer/iter" in ckpt.variables()
    assert set(ckpt.slots().values()) == slot_keys and len(slot_keys) == 12
    kernel = "model/layer_with_weights-0/kernel"
    assert ckpt.slots()[(kernel, "m")] == f"{kernel}/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"
    assert {name for _, name in ckpt.slots()} == {"m", "v"}


def test_sharded_checkpoint_reads_both_data_files(expected):
    assert expected["sharded"]["data_files"] == ["model.ckpt.data-00000-of-00002",
                                                 "model.ckpt.data-00001-of-00002"]
    ckpt = open_checkpoint(FIXTURES / "sharded" / "model.ckpt")
    assert sorted({ckpt.info(k).shard for k in ckpt.keys()}) == [0, 1]
    assert ckpt.variables() == {k: k for k in expected["sharded"]["entries"]}  # name-based: key = name


def test_name_based_checkpoint_assembles_partitioned_variables(expected):
    ckpt = open_checkpoint(FIXTURES / "tf1" / "model.ckpt")
    assert ckpt.object_graph is None and ckpt.full_names() == {}
    assert ckpt.info("plain").object_path is None and ckpt.info("plain").full_name is None
    assert ckpt.keys() == ["plain", "split", "split_columns"]  # not the slices' own keys
    for key, shape in (("split", (150, 2)), ("split_columns", (2, 9))):
        value = ckpt.tensor(key)
        assert value.shape == shape and ckpt.info(key).size == 0  # the bytes are the slices'
        assert value.reshape(-1).tolist() == expected["tf1"]["entries"][key]["values"]
        assert len(np.unique(value)) == value.size  # every slice has its own values: order matters


def test_object_graph_is_tensorflows_with_its_cycle():
    ckpt = open_checkpoint(FIXTURES / "dtypes")
    graph = ckpt.object_graph
    children = {(i, c.local_name): c.node_id for i, node in enumerate(graph.nodes) for c in node.children}
    module = children[(0, "module")]
    assert children[(children[(module, "child")], "parent")] == module  # TF wrote the cycle; it reads


def test_prefix_forms_and_folders(tmp_path):
    keras = FIXTURES / "keras" / "ckpt-1"
    for form in (keras, f"{keras}.index", f"{keras}.data-00000-of-00001", FIXTURES / "keras"):
        assert resolve_prefix(form) == keras and is_tf_checkpoint(form)
    assert resolve_prefix(FIXTURES / "dtypes") == FIXTURES / "dtypes" / "ckpt-1"  # no state file: one index
    assert not is_tf_checkpoint(tmp_path) and not is_tf_checkpoint(tmp_path / "ckpt-1")
    (tmp_path / "model.pt").write_bytes(b"not tf")
    assert not is_tf_checkpoint(tmp_path / "model.pt")


def test_state_file_written_on_another_machine_is_followed_by_file_name(tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(FIXTURES / "keras", folder)
    for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        shutil.copy(folder / name, folder / name.replace("ckpt-1", "ckpt-0"))
    (folder / "checkpoint").write_text('model_checkpoint_path: "/home/builder/train/ckpt-0"\n'
                                       'all_model_checkpoint_paths: "/home/builder/train/ckpt-0"\n')
    assert resolve_prefix(folder) == folder / "ckpt-0"
    (folder / "checkpoint").unlink()  # no state file, two prefixes: the newest index
    os.utime(folder / "ckpt-1.index", (2_000_000_000, 2_000_000_000))
    assert resolve_prefix(folder) == folder / "ckpt-1"


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint there") as err:
        open_checkpoint(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(err.value) and "\n" not in str(err.value)
    ckpt = open_checkpoint(FIXTURES / "keras")
    with pytest.raises(CheckpointError, match=r"ckpt-1\.index: no key 'conv/kernel'"):
        ckpt.tensor("conv/kernel")
