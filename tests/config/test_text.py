"""Parsing a pipeline.config's text: misspelt fields and enum values named by file, line and column with
the nearest valid name; syntax errors, invalid escapes and a missing file as clear ConfigErrors."""

import warnings

import pytest
from tests.helpers.configs import write_variant

from raredet import config as cfg
from raredet.errors import ConfigError


def line_col(text, needle):
    """1-based line and column of the first `needle` in `text` (an independent reference)."""
    before = text[: text.index(needle)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def test_misspelt_field_names_file_line_column_and_nearest(tmp_path):
    path = write_variant(tmp_path, "num_classes: 3", "num_clases: 3")
    line, col = line_col(path.read_text(), "num_clases")
    with pytest.raises(ConfigError) as info:
        cfg.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}:{col}: ")
    assert "did you mean 'num_classes'" in msg


def test_misspelt_enum_value_suggests_nearest(tmp_path):
    path = write_variant(tmp_path, "loss_type: CLASSIFICATION", "loss_type: CLASIFICATION")
    with pytest.raises(ConfigError, match=r"CLASIFICATION.*did you mean CLASSIFICATION"):
        cfg.load(path)


def test_unknown_field_with_nothing_close_lists_valid_fields(tmp_path):
    path = write_variant(tmp_path, "num_classes: 3", "num_classes: 3 zzzzqqq: 1")
    with pytest.raises(ConfigError, match=r"valid fields here: .*num_classes"):
        cfg.load(path)


def test_syntax_error_names_line(tmp_path):
    path = write_variant(tmp_path, "eval_config {", "eval_config {{")
    line, _ = line_col(path.read_text(), "eval_config {{")
    with pytest.raises(ConfigError, match=rf"{path.name}:{line}:\d+: "):
        cfg.load(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load(tmp_path / "nope.config")


def test_invalid_escape_in_string_is_an_error_not_a_python_warning(tmp_path):
    path = write_variant(tmp_path, 'image_dir: "data/images"', 'image_dir: "C:\\data\\images"')
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(ConfigError, match=r"invalid escape sequence '\\d'; write a backslash as \\\\"):
            cfg.load(path)
