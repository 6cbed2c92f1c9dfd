"""`raredet stats`: the summary (scheme weights, repeat factors) by hand, and the CLI on a synthetic set."""

from __future__ import annotations

import json
import math

import pytest
from tests.helpers.stats import BY_HAND_IMAGES, BoxesOnly

from raredet.cli import main
from raredet.commands.stats import stats_summary
from raredet.config import LabelMap
from raredet.data.stats import compute_stats
from raredet.data.synth import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, images=30, seed=3, image_size=64, min_val_boxes=3, num_steps=10)
    return out


def by_hand_stats():
    """3 images: class a has boxes of size 2, 4 and 6 in 2 images; b one box (6) and a crowd region."""
    reader = BoxesOnly(BY_HAND_IMAGES)
    return compute_stats(reader, LabelMap.from_names(["a", "b"]))


def test_stats_summary_by_hand():
    stats = by_hand_stats()
    summary = stats_summary(stats, threshold=0.5)
    a, b = summary["classes"]
    # inverse frequency (1/3, 1) rescaled so 3 a + 1 b = 4 boxes: (2/3, 2)
    assert a["weight_inverse_frequency"] == pytest.approx(2 / 3) and b[
        "weight_inverse_frequency"
    ] == pytest.approx(2)
    k = 4 / (3 / math.sqrt(3) + 1)
    assert b["weight_sqrt_inverse_frequency"] == pytest.approx(k)
    eff = [0.001 / (1 - 0.999**3), 1.0]
    k = 4 / (3 * eff[0] + eff[1])
    assert a["weight_effective_number"] == pytest.approx(k * eff[0])
    # class b is in 1 of 3 images: sqrt(0.5 / (1/3)) = sqrt(1.5); a: 2 of 3 -> sqrt(0.75) -> 1
    assert b["repeat_factor"] == pytest.approx(math.sqrt(1.5)) and a["repeat_factor"] == 1.0
    assert summary["images_per_epoch_with_repeat_factors"] == pytest.approx(2 + math.sqrt(1.5))
    assert a["share"] == 0.75


def test_synth_config_loads_and_stats_cli(synth_dir, tmp_path, capsys):
    from raredet import config

    loaded = config.load(synth_dir / "pipeline.config", check_paths=True)
    assert loaded.pipeline.model.ssd.num_classes == 3
    assert (
        main(["stats", "--pipeline_config_path", str(synth_dir / "pipeline.config"), "--out", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "crack" in out and "imbalance ratio" in out
    saved = json.loads((tmp_path / "stats.json").read_text())
    train = json.loads((synth_dir / "summary.json").read_text())["train"]["boxes"]
    assert {c["name"]: c["boxes"] for c in saved["classes"]} == train
    assert (tmp_path / "class_counts.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_uses_the_configs_effective_number_beta(synth_dir, tmp_path, capsys):
    # A config that sets class_weights.auto.beta must see its own effective-number weights in
    # `raredet stats`, not those of the default beta 0.999.
    text = (synth_dir / "pipeline.config").read_text()
    text = text.replace("localization_weight: 1.0", "localization_weight: 1.0\n"
                        "      class_weights { auto { scheme: EFFECTIVE_NUMBER beta: 0.9 } }")
    assert "beta: 0.9" in text
    (synth_dir / "beta.config").write_text(text)
    config_path = synth_dir / "beta.config"
    assert main(["stats", "--pipeline_config_path", str(config_path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    counts = json.loads((synth_dir / "summary.json").read_text())["train"]["boxes"]
    effective = {c: 0.1 / (1 - 0.9 ** n) for c, n in counts.items()}  # (1 - beta) / (1 - beta^n)
    scale = sum(counts.values()) / sum(counts[c] * effective[c] for c in counts)  # mean over boxes = 1
    rows = json.loads((tmp_path / "stats.json").read_text())["classes"]
    saved = {c["name"]: c["weight_effective_number"] for c in rows}
    assert saved == pytest.approx({c: scale * effective[c] for c in counts}, rel=1e-5)  # beta is a float32
    assert "w_eff: EFFECTIVE_NUMBER (beta 0.9)" in out
    assert "repeat: class repeat factor at threshold 0.001" in out


def test_stats_shows_the_class_weight_table_training_will_use(synth_dir, tmp_path, capsys):
    # Explicit crack 8, the rest INVERSE_FREQUENCY on training box counts n_c, rescaled so that the
    # total weight of the training boxes equals their number (docs/architecture.md, "Class weighting
    # semantics").
    text = (synth_dir / "pipeline.config").read_text().replace(
        "localization_weight: 1.0", "localization_weight: 1.0\n      class_weights { "
        'weight { name: "crack" value: 8.0 } auto { scheme: INVERSE_FREQUENCY } }')
    (synth_dir / "weighted.config").write_text(text)
    assert main(["stats", "--pipeline_config_path", str(synth_dir / "weighted.config"),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    counts = json.loads((synth_dir / "summary.json").read_text())["train"]["boxes"]
    assert counts["scratch"] > 0 and counts["dent"] > 0
    raw = {c: 1 / n for c, n in counts.items() if n > 0}
    scale = sum(counts.values()) / sum(counts[c] * raw[c] for c in raw)
    expected = {c: scale * raw[c] for c in ("scratch", "dent")} | {"crack": 8.0}
    table = json.loads((tmp_path / "stats.json").read_text())["class_weights"]
    saved = {w["name"]: w["weight"] for w in table}
    assert saved == pytest.approx(expected, rel=1e-6)
    assert "class weights training will use (model.ssd.loss.class_weights):" in out
    rows = {line.split()[2]: line.split() for line in out.split("training will use")[1].splitlines()[3:]}
    assert rows["crack"][4:] == ["8", "explicit"]
    assert float(rows["dent"][4]) == pytest.approx(expected["dent"], rel=1e-3)
    assert rows["dent"][5] == "auto:INVERSE_FREQUENCY"
    assert (tmp_path / "stats.txt").read_text() == out  # the file holds the same report


def test_stats_without_class_weights_shows_no_table(synth_dir, tmp_path, capsys):
    assert main(["stats", "--pipeline_config_path", str(synth_dir / "pipeline.config"),
                 "--out", str(tmp_path)]) == 0
    assert "training will use" not in capsys.readouterr().out
    assert "class_weights" not in json.loads((tmp_path / "stats.json").read_text())
