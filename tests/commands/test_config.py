"""`raredet config check` (the one-screen summary) and `raredet config show --resolve_weights` (the table
training would use)."""

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
from tests.helpers.configs import FIXTURES, WEIGHTED, write_variant

from raredet import config as cfg
from raredet.cli import main
from raredet.commands.config import check, summary_text
from raredet.config import LabelMap, LoadedConfig, parse_config
from raredet.data.synth import make_synthetic_dataset
from raredet.errors import ConfigError


def test_summary_has_class_weight_table():
    summary = check(WEIGHTED)
    rows = [line.split() for line in summary.splitlines() if line.strip()[:1].isdigit()]
    assert ["1", "scratch", "1"] in rows
    assert ["2", "dent", "2"] in rows
    assert ["3", "crack", "8"] in rows
    assert "hard example miner: num_hard_examples: 32 iou_threshold: 0.99 loss_type: CLASSIFICATION" \
        in summary
    assert 'class_alpha { name: "crack" value: 0.75 }' in summary
    assert "aspect_ratios: [1, 2, 0.5]" in summary


def test_summary_auto_weights_marks_unpinned_classes(tmp_path):
    path = write_variant(tmp_path, "weight { id: 2 value: 2.0 }", "auto { scheme: EFFECTIVE_NUMBER }")
    summary = check(path)
    assert "auto: EFFECTIVE_NUMBER beta=0.999 count=BOXES" in summary
    rows = [line.split() for line in summary.splitlines() if line.strip()[:1].isdigit()]
    assert ["1", "scratch", "auto"] in rows and ["3", "crack", "8"] in rows


def test_show_resolve_weights_prints_the_effective_number_table(tmp_path, capsys):
    make_synthetic_dataset(tmp_path, images=30, seed=3, image_size=64, min_val_boxes=1)
    config = (tmp_path / "pipeline.config").read_text()
    config = config.replace(
        "classification_weight: 1.0",
        'classification_weight: 1.0\n class_weights { auto { scheme: EFFECTIVE_NUMBER beta: 0.9 } '
        'weight { name: "dent" value: 3.5 } }',
    )
    (tmp_path / "weighted.config").write_text(config)
    assert main(["config", "show", str(tmp_path / "weighted.config"), "--resolve_weights"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[2]: line.split() for line in out.splitlines()[-3:]}
    counts = {name: int(rows[name][3]) for name in ("scratch", "dent", "crack")}
    coco = json.loads((tmp_path / "train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert counts == dict(Counter(names[a["category_id"]] for a in coco["annotations"]))
    # By hand: raw_c = (1 - beta) / (1 - beta^n_c), rescaled so that sum_c n_c w_c = sum_c n_c.
    raw = {c: (1 - 0.9) / (1 - 0.9 ** n) for c, n in counts.items()}
    scale = sum(counts.values()) / sum(counts[c] * raw[c] for c in counts)
    assert math.isclose(float(rows["scratch"][4]), raw["scratch"] * scale, rel_tol=1e-3)
    assert math.isclose(float(rows["crack"][4]), raw["crack"] * scale, rel_tol=1e-3)
    assert rows["dent"][4:] == ["3.5", "explicit"]
    assert rows["crack"][5] == "auto:EFFECTIVE_NUMBER"


FASTER_RCNN_WEIGHTS = """model { faster_rcnn { num_classes: 3
  feature_extractor { type: "faster_rcnn_resnet50_keras" }
  second_stage_class_weights { weight { name: "crack" value: 8.0 } weight { id: 2 value: 2.5 } } } }"""


def test_summary_of_faster_rcnn_weights_names_its_own_field():
    pipeline = parse_config(FASTER_RCNN_WEIGHTS)
    names = LabelMap.from_names(["scratch", "dent", "crack"])  # ids 1, 2, 3
    summary = summary_text(LoadedConfig(pipeline, names, Path("p.config"), FASTER_RCNN_WEIGHTS))
    rows = [line.split() for line in summary.splitlines() if line.strip()[:1].isdigit()]
    assert rows == [["1", "scratch", "1"], ["2", "dent", "2.5"], ["3", "crack", "8"]]
    # A label map without the class named (load refuses it first; the summary names the same field).
    other = LabelMap.from_names(["scratch", "dent", "crak"])
    with pytest.raises(ConfigError, match=r"^model\.faster_rcnn\.second_stage_class_weights\.weight\.name: "
                       r"'crack' is not in the label map"):
        summary_text(LoadedConfig(pipeline, other, Path("p.config"), FASTER_RCNN_WEIGHTS))


def test_cli_check_ok_and_errors(tmp_path, capsys):
    assert main(["config", "check", str(WEIGHTED)]) == 0
    assert "crack" in capsys.readouterr().out
    bad = write_variant(tmp_path, "num_classes: 3", "num_clases: 3")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'num_classes'" in err and str(bad) in err


@pytest.mark.parametrize(("old", "new", "pattern"), [
    ('type: "ssd_resnet18_v1_fpn"', 'type: "ssd_resnet19_v1_fpn"',
     r"feature_extractor\.type: unknown 'ssd_resnet19_v1_fpn'; valid: .*ssd_resnet18_v1_fpn"),
    ("random_horizontal_flip { }", "random_patch_gaussian { }",
     r"'random_patch_gaussian' is not supported; supported: .*random_horizontal_flip"),
    ("localization_loss { weighted_smooth_l1 { } }",
     'localization_loss { custom { name: "nope" module: "no_such_module_xyz" } }',
     r"no_such_module_xyz"),
])
def test_cli_check_fails_on_what_training_would_refuse(tmp_path, capsys, old, new, pattern):
    # These parse and validate, but `raredet train` stops on them while building; `config check` must
    # not call such a config OK.
    path = write_variant(tmp_path, old, new)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_cli_show_prints_parseable_effective_config(capsys):
    assert main(["config", "show", str(WEIGHTED)]) == 0
    out = capsys.readouterr().out
    assert cfg.parse_config(out).model.ssd.loss.hard_example_miner.num_hard_examples == 32
    assert "normalize_loss_by_num_matches: true" in out


@pytest.mark.parametrize(("name", "pattern"), [
    ("bad_typo.config", r"bad_typo\.config:\d+:\d+: .*did you mean 'encode_background_as_zeros'"),
    ("bad_weight.config", r"class_weights\.weight\[1\]\.value: -2\.0 is out of range"),
    ("bad_class_name.config", r"'crak' is not in the label map .*did you mean 'crack'"),
])
def test_cli_bad_fixture_configs_exit_2(capsys, name, pattern):
    assert main(["config", "check", str(FIXTURES / name)]) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err
    assert err.count("\n") == 1  # one line


def test_check_puts_what_building_warns_into_the_summary(tmp_path: Path) -> None:
    import warnings

    from raredet.config import ConfigWarning
    from raredet.zoo import CONFIG_DIR

    # the zoo's 800x1333 Faster R-CNN keeps its batch norms frozen; without its checkpoint: a warning
    text = (CONFIG_DIR / "faster_rcnn_resnet152_v1_800x1333_coco17_gpu-8.config").read_text()
    path = tmp_path / "frozen.config"
    path.write_text(re.sub(r'\n[ \t]*fine_tune_checkpoint(_type)?: [^\n]*', "", text))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # in the summary, not raised as a Python warning
        summary = check(path)
    assert ("\nwarning: model.faster_rcnn.feature_extractor.batch_norm_trainable is false and "
            "train_config.fine_tune_checkpoint is not set") in summary
