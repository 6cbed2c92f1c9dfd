"""The TF2 model zoo: which of its 40 configs train (the table in README.md and docs/migrating.md, kept
true here), the TF OD API's regularised variable set and step-0 regularization loss, anchor counts, and
the new extractors training from the CLI.

The configs are verbatim copies of the TF OD API's `configs/tf2` (src/raredet/zoo/configs,
provenance in its README.md).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from tests.helpers import tiny_pipeline as tiny
from tests.helpers.zoo import small_copy

from raredet import builders, cli
from raredet import config as cfg
from raredet.commands.config import check as config_check
from raredet.engine import optim
from raredet.errors import ConfigError
from raredet.zoo import CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent
ZOO = CONFIG_DIR
ZOO_CONFIGS = sorted(ZOO.glob("*.config"))
TABLE = re.compile(r"<!-- zoo-table:start -->(.*?)<!-- zoo-table:end -->", re.S)
TRAINS_LIST = re.compile(r"<!-- zoo-trains:start -->(.*?)<!-- zoo-trains:end -->", re.S)


def _load_zoo(name: str) -> cfg.LoadedConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cfg.ConfigWarning)
        return cfg.load(ZOO / name)


def _status(path: Path) -> str:
    """What `raredet config check` makes of a zoo config, in the table's words."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):  # shapes only: the full-size models are big
            warnings.simplefilter("ignore", cfg.ConfigWarning)
            config_check(path)
        return "trains"
    except ConfigError as err:
        text = str(err)
        other = re.search(r"model\.(\w+): '\w+' is the TF OD API's", text)
        if other:
            return f"refused: {other.group(1)} meta-architecture"
        extractor = re.search(r"feature_extractor\.type: unknown '([^']+)'", text)
        if extractor:
            return f"refused: feature extractor {extractor.group(1)}"
        return f"refused: {text}"  # unexpected: will not match any table row, and shows the message


def _table_rows(doc: Path) -> dict[str, str]:
    found = TABLE.search(doc.read_text(encoding="utf-8"))
    assert found, f"{doc} has no <!-- zoo-table:start --> ... <!-- zoo-table:end --> block"
    rows = {}
    for line in found.group(1).splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].endswith(".config"):
            rows[cells[0]] = cells[2]
    return rows


def test_the_fixtures_are_the_40_zoo_configs():
    assert len(ZOO_CONFIGS) == 40
    readme = (ZOO / "README.md").read_text(encoding="utf-8")
    assert all(f"| {p.name} |" in readme for p in ZOO_CONFIGS)


@pytest.fixture(scope="module")
def statuses() -> dict[str, str]:
    return {p.name: _status(p) for p in ZOO_CONFIGS}


def test_migrating_table_says_what_config_check_does(statuses):
    assert _table_rows(ROOT / "docs" / "migrating.md") == statuses


def test_readme_lists_exactly_the_configs_that_train(statuses):
    found = TRAINS_LIST.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert found, "README.md has no <!-- zoo-trains:start --> ... <!-- zoo-trains:end --> block"
    listed = set(re.findall(r"`([\w.-]+\.config)`", found.group(1)))
    assert listed == {name for name, status in statuses.items() if status == "trains"}


def test_every_refusal_names_what_raredet_supports(tmp_path):
    # A TF OD API SSD extractor raredet does not build, in an otherwise unchanged zoo config.
    other = tmp_path / "ssd_inception_v2.config"
    text = (ZOO / "ssd_resnet50_v1_fpn_640x640_coco17_tpu-8.config").read_text(encoding="utf-8")
    other.write_text(text.replace("ssd_resnet50_v1_fpn_keras", "ssd_inception_v2_keras"), encoding="utf-8")
    experimental = tmp_path / "experimental.config"
    experimental.write_text('model { experimental_model { name: "x" } }', encoding="utf-8")
    for path, named in (
        (experimental, "model.experimental_model"),
        (other, "'ssd_inception_v2_keras'"),
    ):
        with pytest.raises(ConfigError) as err:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", cfg.ConfigWarning)
                config_check(path)
        message = str(err.value)
        assert named in message
        assert "ssd_resnet152_v1_fpn" in message and "ssd_mobilenet_v1_fpn" in message
        assert "ssd_efficientnet-b0_bifpn" in message


# ---- anchors --------------------------------------------------------------------------------------


def _tf_anchor_count(size: int) -> int:
    # TF OD API multiscale grid: levels 3..7, ceil(size / 2^level)^2 cells, 3 ratios x 2 scales each.
    return sum(math.ceil(size / 2**level) ** 2 * 6 for level in range(3, 8))


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("ssd_resnet152_v1_fpn_640x640_coco17_tpu-8.config", 640, 51150),  # 6 * (6400+1600+400+100+25)
        ("ssd_resnet152_v1_fpn_1024x1024_coco17_tpu-8.config", 1024, 130944),  # 6 * 21824
        ("ssd_mobilenet_v1_fpn_640x640_coco17_tpu-8.config", 640, 51150),
    ],
)
def test_anchor_counts_equal_the_tf_od_apis(name, size, expected):
    assert _tf_anchor_count(size) == expected
    with torch.device("meta"):
        model, _ = builders.build_model(_load_zoo(name).pipeline.model.ssd)
        out = model.eval()(torch.zeros(1, 3, size, size))
    assert out["anchors"].shape == (expected, 4) and out["cls_logits"].shape == (1, expected, 90)


# ---- the regularised set and the step-0 regularization loss ------------------------------------------

# MobileNetV1 pointwise widths (Howard et al. 2017, table 1) and the zoo's FPN / predictor settings.
V1_WIDTHS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


def _mobilenet_v1_fpn_regularised() -> tuple[set[str], int]:
    """The TF OD API's regularised kernels of ssd_mobilenet_v1_fpn_640x640 (90 classes) in raredet's
    names, and their element count, written out by hand."""
    names = {"feature_extractor.backbone.stem.0.weight"}
    count = 3 * 32 * 3 * 3
    for i, (c_in, c_out) in enumerate(zip(V1_WIDTHS[:-1], V1_WIDTHS[1:], strict=True)):
        # override_base_feature_extractor_hyperparams: depthwise and pointwise kernels both.
        names |= {
            f"feature_extractor.backbone.blocks.{i}.depthwise.0.weight",
            f"feature_extractor.backbone.blocks.{i}.pointwise.0.weight",
        }
        count += c_in * 9 + c_in * c_out
    fpn = "feature_extractor.fpn"
    names |= {f"{fpn}.projections.{i}.weight" for i in range(3)}  # 1x1 from 256, 512, 1024 channels
    count += (256 + 512 + 1024) * 256
    names |= {f"{fpn}.smoothing.{i}.0.weight" for i in range(2)} | {
        f"{fpn}.extra.{i}.0.weight" for i in range(2)
    }
    count += 4 * 256 * 256 * 9
    for tower in ("box_tower", "class_tower"):  # 4 layers each, not shared
        names |= {f"box_predictor.{tower}.convs.{i}.weight" for i in range(4)}
        count += 4 * 256 * 256 * 9
    names |= {"box_predictor.box_head.weight", "box_predictor.class_head.weight"}
    count += 256 * 6 * 4 * 9 + 256 * 6 * 90 * 9  # 6 anchors per cell, 4 box codes, 90 classes
    return names, count


def test_mobilenet_v1_fpn_regularised_set_and_step0_loss():
    torch.manual_seed(0)
    model, l2 = builders.build_model(
        _load_zoo("ssd_mobilenet_v1_fpn_640x640_coco17_tpu-8.config").pipeline.model.ssd
    )
    names, count = _mobilenet_v1_fpn_regularised()
    assert set(l2) == names and set(l2.values()) == {4e-5}
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in names) == count
    # Every regularised kernel is drawn from random_normal(0, 0.01): E[sum w^2] = count * 0.01^2, and
    # the loss is 0.5 * weight * sum w^2 (Keras l2(weight / 2), as the TF OD API builds it).
    expected = 0.5 * 4e-5 * count * 0.01**2
    # The figure training logs as Loss/regularization_loss, from the optimizer's weight-decay groups.
    optimizer = torch.optim.SGD(optim.weight_decay_groups(params, l2), lr=0.0)
    assert optim.regularization_loss(optimizer) == pytest.approx(expected, rel=0.01)
    # With count ~ 1.2e7 samples the relative spread of the sum is ~sqrt(2 / count) = 4e-4.
    assert count > 1e7


def test_fpnlite_regularises_what_the_tf_od_api_does():
    torch.manual_seed(0)
    ssd = _load_zoo("ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config").pipeline.model.ssd
    model, l2 = builders.build_model(ssd)
    convs = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    backbone = {n for n in convs if n.startswith("feature_extractor.backbone.")}
    # Backbone under the override: every kernel, depthwise included (the TF OD API remaps to depthwise_*).
    assert backbone <= set(l2) and any(convs[n].groups > 1 for n in backbone)
    # FPN: projections yes; each separable smoothing / extra conv: depthwise (.0) yes, pointwise (.1) no.
    fpn = {n.removeprefix("feature_extractor.fpn.") for n in l2 if n.startswith("feature_extractor.fpn.")}
    assert fpn == {f"projections.{i}.weight" for i in range(3)} | {
        f"{part}.{i}.0.weight" for part, k in (("smoothing", 2), ("extra", 2)) for i in range(k)
    }
    # Shared tower: depthwise yes, pointwise no (apply_conv_hyperparams_pointwise is false); the
    # depthwise heads (Keras SeparableConv2D without remapping) no.
    head = {n.removeprefix("box_predictor.") for n in l2 if n.startswith("box_predictor.")}
    assert head == {f"box_tower.convs.{i}.0.weight" for i in range(4)}
    # The kernels left out keep Keras' glorot_uniform: |w| <= sqrt(6 / (fan_in + fan_out)).
    pointwise = convs["box_predictor.box_tower.convs.0.1.weight"]
    assert pointwise.weight.abs().max() <= math.sqrt(6 / (128 + 128))
    assert pointwise.weight.std() > 3 * 0.01  # not the config's random_normal(0.01)


# MobileNetV2 (Sandler et al. 2018, table 2): (expansion t, output channels c, repeats n) per stage.
V2_STAGES = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]


def _fpnlite_tf_regularised_count() -> int:
    """Elements of the kernels the TF OD API's Keras ssd_mobilenet_v2_fpnlite_320x320 regularises,
    from its layer shapes (TF 2.x source, read by hand):

    - Keras MobileNetV2 at alpha 1 under override_base_feature_extractor_hyperparams: every Conv2D
      kernel and every DepthwiseConv2D kernel (remapped to depthwise_regularizer). Conv1 3x3x3x32;
      per block the 1x1 expand (absent in block 0), the 3x3 depthwise, the 1x1 project; Conv_1 1x1
      320 -> 1280 (the FPN extractor builds its 256-wide FPN-lite conv_defs but never passes them on).
    - KerasFpnTopDownFeatureMaps, depth 128, levels 3..5 from block_5_add (32 ch), block_12_add (96)
      and out_relu (1280): three 1x1 projections (kernel regularised), two 3x3 SeparableConv2D
      smoothings with only the depthwise kernel regularised (create_conv_block's remap); levels 6, 7:
      two more such separable convs.
    - Weight-shared predictor, depth 128, 4 tower layers, share_prediction_tower, use_depthwise: each
      tower layer's depthwise 3x3x128 kernel; the pointwise kernels and the separable heads get none.
    """
    count, c_in = 3 * 3 * 3 * 32, 32
    for t, c_out, n in V2_STAGES:
        for _ in range(n):
            hidden = c_in * t
            count += (c_in * hidden if t != 1 else 0) + 9 * hidden + hidden * c_out
            c_in = c_out
    count += 320 * 1280
    count += (32 + 96 + 1280) * 128 + 4 * 9 * 128  # FPN projections, smoothing + coarse depthwise
    count += 4 * 9 * 128  # shared tower depthwise kernels
    return count


def test_fpnlite_step0_regularization_loss_is_the_tf_od_apis_expected_value():
    count = _fpnlite_tf_regularised_count()
    assert count == 2_379_200
    torch.manual_seed(0)
    ssd = _load_zoo("ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8.config").pipeline.model.ssd
    model, l2 = builders.build_model(ssd)
    params = dict(model.named_parameters())
    assert params["feature_extractor.backbone.features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert sum(params[n].numel() for n in l2) == count and set(l2.values()) == {4e-5}
    # TF: Keras l2(0.5 * 4e-5) on kernels drawn from random_normal(0, 0.01) (not truncated):
    # E[loss] = 0.5 * 4e-5 * 0.01^2 * count = 0.00476, spread ~ sqrt(2 / count) = 1e-3 relative.
    expected = 0.5 * 4e-5 * 0.01**2 * count
    optimizer = torch.optim.SGD(optim.weight_decay_groups(params, l2), lr=0.0)
    assert optim.regularization_loss(optimizer) == pytest.approx(expected, rel=0.01)
    assert expected == pytest.approx(0.00476, abs=1e-5)


def test_ssd_mobilenet_v2_step0_regularization_loss_is_the_tf_od_apis_expected_value():
    """ssd_mobilenet_v2_320x320: its feature extractor's kernels (MobileNetV2 under the override, the
    SSD extra layers) are drawn from truncated_normal(0.03), the per-level 1x1 heads from
    random_normal(0.01); all at L2 weight 4e-5. TF OD API layer shapes, by hand:"""
    backbone = 2_189_760  # as in the FPN-lite count above (Conv_1 320 -> 1280)
    # KerasMultiResolutionFeatureMaps from layer_19 (1280): 1x1 to half depth, 3x3 stride 2 to depth
    # 512, 256, 256, 128 (not depthwise in this config).
    extra = 0
    c_in = 1280
    for depth in (512, 256, 256, 128):
        extra += c_in * (depth // 2) + 9 * (depth // 2) * depth
        c_in = depth
    assert extra == 2_285_568
    # ConvolutionalBoxPredictor, kernel_size 1, no tower: on maps of 576 (layer_15 expansion), 1280,
    # 512, 256, 256, 128 channels with 3, 6, 6, 6, 6, 6 anchors (5 ratios + 1, the lowest layer reduced).
    channel_anchors = 576 * 3 + (1280 + 512 + 256 + 256 + 128) * 6
    box_head = channel_anchors * 4
    tf_class_head = channel_anchors * 91  # add_background_class (default true): 90 + 1 columns
    # truncated_normal(stddev) cuts at 2 stddev: E[w^2] = stddev^2 * (1 - 4 phi(2) / (2 Phi(2) - 1)).
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    big_phi2 = 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    truncated = 0.03**2 * (1 - 4 * phi2 / (2 * big_phi2 - 1))
    assert truncated == pytest.approx(0.03**2 * 0.7737, rel=1e-4)
    tf_expected = 0.5 * 4e-5 * ((backbone + extra) * truncated + (box_head + tf_class_head) * 0.01**2)
    assert tf_expected == pytest.approx(0.0654, abs=1e-4)
    torch.manual_seed(0)
    ssd = _load_zoo("ssd_mobilenet_v2_320x320_coco17_tpu-8.config").pipeline.model.ssd
    model, l2 = builders.build_model(ssd)
    params = dict(model.named_parameters())
    # raredet has no background column: 90 class columns, the one difference in the regularised set.
    assert sum(params[n].numel() for n in l2) == backbone + extra + box_head + channel_anchors * 90
    optimizer = torch.optim.SGD(optim.weight_decay_groups(params, l2), lr=0.0)
    assert optim.regularization_loss(optimizer) == pytest.approx(tf_expected, rel=0.01)


# ---- the new extractors train from the CLI ----------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo_data")
    tiny.make_data(out, images=6)
    return out


def _trains_in_the_table() -> list[str]:
    rows = _table_rows(ROOT / "docs" / "migrating.md")
    return sorted(name for name, status in rows.items() if status == "trains")


# Every config the table says trains (checked against `config check` above) trains two steps here; Mask
# R-CNN needs records with instance masks, which the synthetic data has not: tests/test_mask_rcnn_zoo.py.
# Hourglass-104's bottom is 1x1 at 128 px, where its batch norms overflow the gradient at step 1 (batch
# 2; seen in e557e7d); its configs train where a GPU is lent at their size, here
# tests/test_center_net_zoo.py runs it forward, and DeepMAC's zoo config trains on a small hourglass
# (tests/modeling/test_deepmac.py). The keypoint configs need records with keypoints and a keypoint
# label map: tests/test_center_net_keypoints_zoo.py trains them.
HOURGLASS_104 = ("centernet_hourglass104", "center_net_deepmac")


@pytest.mark.parametrize("name", [n for n in _trains_in_the_table()
                                  if not n.startswith(("mask_rcnn", *HOURGLASS_104)) and "_kpts_" not in n])
@pytest.mark.slow  # end-to-end CLI runs; ResNet-152 takes ~30 s on 2 shared cores
@pytest.mark.filterwarnings("ignore::raredet.config.validate.ConfigWarning")  # the zoo's TPU fields
def test_zoo_config_trains_two_steps_from_the_cli(name, data_dir, tmp_path):
    torch.set_num_threads(1)
    path = small_copy(name, data_dir)
    assert cli.main(["config", "check", str(path)]) == 0
    model_dir = tmp_path / "run"
    args = [
        "train",
        "--pipeline_config_path",
        str(path),
        "--model_dir",
        str(model_dir),
        "--device",
        "cpu",
        "--num_train_steps",
        "2",
    ]
    assert cli.main(args) == 0
    records = [json.loads(x) for x in (model_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["Loss/total_loss"]) for r in records)
    assert math.isfinite(records[0]["Loss/regularization_loss"])
    # Faster R-CNN's ResNet zoo configs regularise nothing (weight 0 in the RPN and fc hyperparams, no
    # decay on the Keras ResNet), nor does CenterNet (no regularizer in its configs, as in the TF OD API);
    # every other config has an L2 term
    if not re.fullmatch(r"faster_rcnn_resnet\d+_v1_\d+x\d+_.*", name) and not name.startswith("centernet"):
        assert records[0]["Loss/regularization_loss"] > 0


def _table_markdown() -> str:
    """The rows of the docs/migrating.md table as they should read now (for updating the docs)."""
    rows = []
    for path in ZOO_CONFIGS:
        text = path.read_text(encoding="utf-8")
        meta = re.search(r"model\s*\{\s*(\w+)", text)
        kind = meta.group(1) if meta else "?"
        if kind == "ssd":
            extractor = re.search(r"type:\s*['\"]([^'\"]+)", text)
            kind = f"ssd, `{extractor.group(1) if extractor else '?'}`"
        rows.append(f"| `{path.name}` | {kind} | {_status(path)} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m tests.test_zoo (repository root): the table rows to paste
    print(_table_markdown())
