"""Fuzz: mutated pipeline configs and label maps raise nothing but ConfigError."""

import re
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raredet import config as cfg
from raredet.commands.config import summary_text
from raredet.errors import ConfigError

pytestmark = pytest.mark.slow  # hypothesis: 250 generated configs and label maps

FIXTURES = Path(__file__).parents[1] / "fixtures" / "configs"
BASE = (FIXTURES / "weighted.config").read_text()
LABEL_MAP = (FIXTURES / "label_map.pbtxt").read_text()
ODD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e40", "99999999999999999999", "-0.5", "0.999", "3", "1.5"]
CHARS = st.sampled_from(list('{}[]:;,"\'#\n\t -.0123456789abz_ée\x00\\'))


@st.composite
def mutation(draw, text: str):
    words = [m.span() for m in re.finditer(r"[a-z_]{3,}", text)]  # spans in the text as it is now
    numbers = [m.span() for m in re.finditer(r"-?\d+(\.\d+)?", text)]
    kinds = ["edit", "delete", "insert"] + ["typo"] * bool(words) + ["number"] * bool(numbers)
    kind = draw(st.sampled_from(kinds)) if text else "insert"
    if kind == "number":
        start, end = draw(st.sampled_from(numbers))
        return text[:start] + draw(st.sampled_from(ODD_NUMBERS)) + text[end:]
    if kind == "typo":
        start, end = draw(st.sampled_from(words))
        pos = draw(st.integers(start, end - 1))
        op = draw(st.sampled_from(["drop", "double", "swap"]))
        word = {"drop": "", "double": text[pos] * 2, "swap": text[pos + 1: pos + 2] + text[pos]}[op]
        return text[:pos] + word + text[pos + (2 if op == "swap" else 1):]
    pos = draw(st.integers(0, max(len(text) - 1, 0)))
    if kind == "delete":
        return text[:pos] + text[pos + draw(st.integers(1, 40)):]
    if kind == "insert":
        return text[:pos] + draw(st.text(CHARS, min_size=1, max_size=5)) + text[pos:]
    return text[:pos] + draw(CHARS) + text[pos + 1:]


@st.composite
def mutated(draw, text: str):
    for _ in range(draw(st.integers(1, 3))):
        text = draw(mutation(text))
    return text


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated(BASE), check_paths=st.booleans())
def test_mutated_configs_raise_only_config_error(text, check_paths):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "label_map.pbtxt").write_text(LABEL_MAP)
        path = Path(folder) / "pipeline.config"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", cfg.ConfigWarning)
                loaded = cfg.load(path, check_paths=check_paths)
        except ConfigError as err:
            assert str(path) in str(err) or "label_map" in str(err)
            return
        cfg.effective_config_text(loaded.pipeline)  # a config that loads can also be shown
        summary_text(loaded)


@settings(max_examples=100, deadline=None, database=None)
@given(text=mutated(LABEL_MAP))
def test_mutated_label_maps_raise_only_config_error(text):
    try:
        label_map = cfg.LabelMap.parse(text, "lm.pbtxt")
    except ConfigError as err:
        assert "lm.pbtxt" in str(err)
        return
    assert cfg.LabelMap.parse(label_map.to_pbtxt()) == label_map
