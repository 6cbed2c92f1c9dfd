"""`raredet inspect-checkpoint`, run in-process: TF's listing format, values, errors with exit code 2."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tests.helpers import tf_checkpoints

from raredet.cli import main
from raredet.commands import inspect_checkpoint
from raredet.protos import tensor_bundle_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf_checkpoints"
KERNEL = "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def expected() -> dict:
    return tf_checkpoints.expected_values()


@pytest.fixture
def tools() -> SimpleNamespace:
    return tf_checkpoints.tools()


def _run(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(["inspect-checkpoint", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_lists_one_line_per_tensor_as_tensorflow_names_it(capsys, expected):
    code, lines, _ = _run(capsys, str(FIXTURES / "keras"))
    entries = {k: v for k, v in expected["keras"]["entries"].items() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert code == 0 and len(lines) == len(entries)
    assert [line.split(" ", 1)[0] for line in lines] == sorted(entries)
    kernel = next(line for line in lines if line.startswith(KERNEL + " "))
    assert kernel == (f"{KERNEL} (DT_FLOAT) [3,3,3,4]  object=model/layer_with_weights-0/kernel  "
                      "name=conv/kernel")
    counter = "save_counter/.ATTRIBUTES/VARIABLE_VALUE (DT_INT64) []  object=save_counter  name=save_counter"
    assert counter in lines


def test_name_based_listing_has_no_object_columns_and_shows_partitioned_variables(capsys):
    code, lines, _ = _run(capsys, str(FIXTURES / "tf1" / "model.ckpt.index"))
    assert code == 0
    assert lines == ["plain (DT_FLOAT) [2]", "split (DT_FLOAT) [150,2]", "split_columns (DT_FLOAT) [2,9]"]


def test_tensor_name_prints_tensorflows_values(capsys, expected):
    want = expected["keras"]["entries"]["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"]["values"]
    code, lines, _ = _run(capsys, str(FIXTURES / "keras"), "--tensor_name", "optimizer/iter")  # object path
    assert code == 0 and lines[0].startswith("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE (DT_INT64) []")
    assert lines[1:] == [str(want[0])]
    code, lines, _ = _run(capsys, str(FIXTURES / "keras"), "--tensor_name", "logits/bias")  # full name
    bias = "model/layer_with_weights-2/bias/.ATTRIBUTES/VARIABLE_VALUE"
    values = expected["keras"]["entries"][bias]["values"]
    printed = [float(v) for v in lines[1].strip("[]").split(",")]
    assert printed == pytest.approx(values, abs=1e-6)


def test_values_are_truncated(capsys):
    text = "module/text/.ATTRIBUTES/VARIABLE_VALUE"
    code, lines, _ = _run(capsys, str(FIXTURES / "dtypes"), "--tensor_name", text)
    assert code == 0 and "...(300 bytes)" in lines[-1] and len(lines[-1]) < 100
    big = SimpleNamespace(tensor=lambda key: np.arange(4000.0).reshape(40, 100))
    printed = inspect_checkpoint._values(big, "big")
    assert printed.count("\n") == 6 and "..." in printed and "3.999e+03" in printed  # 3 rows each end


def test_all_tensors_prints_every_value(capsys, expected):
    code, lines, _ = _run(capsys, str(FIXTURES / "sharded" / "model.ckpt"), "--all_tensors")
    assert code == 0 and lines[0] == "tower_0/bias (DT_FLOAT) [2]"
    printed = [float(v) for v in lines[1].strip("[]").split(",")]
    assert printed == pytest.approx(expected["sharded"]["entries"]["tower_0/bias"]["values"], abs=1e-6)
    assert sum(line.endswith("]") and "(DT_FLOAT)" in line for line in lines) == 4


def test_errors_exit_2_with_one_line(capsys, tmp_path, tools):
    code, lines, err = _run(capsys, str(tmp_path / "missing"))
    assert code == 2 and lines == [] and err.count("\n") == 1 and "missing" in err
    prefix = tools.forge(tools.copy("keras", tmp_path / "forged"),
                         tools.edit_entry(KERNEL, dtype=tensor_bundle_pb2.DT_VARIANT))
    code, lines, _ = _run(capsys, str(prefix))
    assert code == 0 and f"{KERNEL} (DT_VARIANT) [3,3,3,4]  object=model/layer_with_weights-0/kernel  " \
        "name=conv/kernel" in lines  # listed even though it cannot be read
    code, _, err = _run(capsys, str(prefix), "--tensor_name", KERNEL)
    assert code == 2 and err.count("\n") == 1 and f"key '{KERNEL}'" in err and "DT_VARIANT" in err
