"""`raredet init DATA --model NAME --out DIR`: from a labelled dataset and a TF2 zoo model name, a working
pipeline.config, label_map.pbtxt, TFRecords and the class statistics.

The config is the zoo's own text, edited the way a TF OD API user edits it (so the TF OD API trains it
too): ``num_classes``, the label map and input paths (absolute: the TF OD API reads them from its working
directory), the training ``batch_size`` for this machine with every learning rate of the schedule scaled
linearly to it (``lr * batch / zoo batch``, Goyal et al. 2017: the zoo's rates are set for batches of 64
to 512, and at batch 8 the unscaled 0.08 of ssd_mobilenet_v2_fpnlite makes the TF OD API's losses NaN),
``num_steps`` (with the schedule's step counts scaled by the same factor), ``fine_tune_checkpoint``
commented out with where a zoo checkpoint goes, and the imbalance levers that the measured imbalance
calls for as commented options (raredet fields, which the TF OD API would reject), as far as they act on
the model (a CenterNet's heatmap loss has no per-class alpha: it gets repeat factors, and class weights on
its center pixels as the alternative).

init writes boxes from every source, and instance masks by copying TFRecords that carry them: the
instance-mask models (DeepMAC, Mask R-CNN) are taken from such TFRecords only (every record's masks
checked first), and the keypoint models (``*_kpts_*``) not at all; what is refused is refused before
anything is written, with what the model needs and the zoo's box-only model to use instead.

The data are checked and converted by :mod:`raredet.data.convert` (every inconsistency reported with its
file and handled by a stated rule); the statistics are `raredet stats`' (:func:`compute_stats`,
:func:`stats_summary`, :func:`write_stats`) on the written training split.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raredet import zoo
from raredet.commands.stats import format_stats, stats_summary, write_stats
from raredet.config.label_map import LabelMap
from raredet.data import convert
from raredet.data.stats import DatasetStats, compute_stats
from raredet.data.tfrecord import TFRecordFile, TFRecordReader, expand_input_paths, write_tfrecord
from raredet.errors import ConfigError, DataError
from raredet.fileio import atomic_write_json, atomic_write_text
from raredet.protos import example_pb2

CPU_BATCH = 8
GPU_BATCH = 32
TFRECORD_SUFFIXES = (".tfrecord", ".record", ".tfrecords")
LEARNING_RATE = re.compile(
    r"(\b(?:learning_rate_base|warmup_learning_rate|initial_learning_rate|learning_rate)\s*:\s*)"
    r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
STEP_COUNT = re.compile(r"(\b(?:total_steps|warmup_steps|step)\s*:\s*)(\d+)")
KEYPOINT_TASK = re.compile(r"^\s*keypoint_estimation_task\s*:?\s*{", re.M)
ALLOWED_MASKED_IDS = re.compile(r"^([ \t]*)allowed_masked_classes_ids\s*:\s*\[[^\]]*\][^\n]*", re.M)
SUPER_CATEGORIES = re.compile(r"^([ \t]*)super_categories\s*:?\s*{[^}]*}[^\n]*", re.M)
INSTANCE_MASKS = re.compile(r"^\s*(?:deepmac_mask_estimation\s*:?\s*{|load_instance_masks\s*:\s*true)", re.M)
# The imbalance study's best configuration (docs/imbalance.md; `RAREDET_STRATEGY` in commands/demo.py):
# images of rare classes repeated (threshold 1.0), focal alpha 0.75 on the rarest class's column and 0.5
# on the middle one's, at box ratios 3 : 20 : 100. Applied here by each class's share of the most
# frequent class's boxes (our extrapolation of those two points).
RARE_SHARE, MIDDLE_SHARE = 0.1, 0.5
RARE_ALPHA, MIDDLE_ALPHA = 0.75, 0.5
BALANCED_RATIO = 3.0  # most/least boxes below this: no lever recommended


@dataclass
class Dataset:
    """What init writes the config for: class names, TFRecord path per split, split sizes, the source."""

    names: list[str]
    splits: dict[str, Path]
    sizes: dict[str, int]
    kind: str
    split_rule: str


# ---- the verb ----------------------------------------------------------------------------------------


def run_init(data: str | Path, model: str, out: str | Path, *, images: str | Path | None = None,
             label_map: str | Path | None = None, batch_size: int | None = None,
             num_steps: int | None = None, seed: int = 0, overwrite: bool = False) -> str:
    """``raredet init``: write DIR/pipeline.config (+ pipeline.test.config), label_map.pbtxt, the
    TFRecords, stats/ and data_report.{txt,json}; returns the printable summary."""
    zoo_path = zoo_config(model)
    text = zoo_path.read_text(encoding="utf-8")
    mask_type = check_mask_records(model, zoo_path, Path(data)) if INSTANCE_MASKS.search(text) else None
    # Absolute: the config's paths must not depend on the folder init ran in (raredet reads a relative
    # path from the config's folder, the TF OD API from its working directory; absolute suits both).
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: the output folder is not empty; give an empty or new --out, or add "
                          "--overwrite to replace what init writes there")
    out.mkdir(parents=True, exist_ok=True)
    issues = convert.DataIssues()
    dataset = convert_dataset(Path(data), out, issues, images=images, label_map=label_map, seed=seed)
    labels = LabelMap.from_names(dataset.names)
    labels.save(out / "label_map.pbtxt")
    split_stats = {s: compute_stats(TFRecordReader([p], labels), labels) for s, p in dataset.splits.items()}
    summary = stats_summary(split_stats["train"])
    write_stats(summary, out / "stats")
    batch = batch_size or default_batch()
    edited = edit_zoo_config(text, num_classes=len(dataset.names), batch_size=batch, num_steps=num_steps,
                             label_map=out / "label_map.pbtxt", train=dataset.splits["train"],
                             evaluate=dataset.splits["val"])
    if mask_type is not None:
        edited = set_mask_type(edited, mask_type)
    levers = recommend_levers(summary, meta_architecture(text))
    header = config_header(zoo_path, Path(data), dataset, text, edited, batch, split_stats, levers,
                           mask_type)
    config_text = insert_lever_comments(header + edited, levers)
    config_path = atomic_write_text(out / "pipeline.config", config_text)
    if "test" in dataset.splits:
        test_text = replace_eval_input(config_text, dataset.splits["test"])
        atomic_write_text(out / "pipeline.test.config", "# The same config evaluating on test.tfrecord "
                          "(score the val-chosen thresholds there with raredet eval --operating_points_from)"
                          "\n" + test_text)
    check_written(config_path)
    report = {"source": str(data), "kind": dataset.kind, "split_rule": dataset.split_rule,
              "issues": issues.to_json()}
    atomic_write_json(out / "data_report.json", report)
    atomic_write_text(out / "data_report.txt", issues.report(examples=10**9) + "\n")
    return init_summary(out, dataset, issues, format_stats(summary), levers, batch)


def zoo_config(model: str) -> Path:
    """The zoo config of `model`; refuses unknown names and the keypoint models (``*_kpts_*``), whose
    data and keypoint settings init cannot write, with the zoo's box-only model to use instead. (The
    instance-mask models are checked against the data: :func:`check_mask_records`.)"""
    try:
        path = zoo.config_path(model)
    except ValueError as err:
        raise ConfigError(f"--model: {err}") from err
    text = path.read_text(encoding="utf-8")
    if KEYPOINT_TASK.search(text):
        raise ConfigError(
            f"--model {model}: {path.name} trains keypoints: it needs keypoint annotations in the records "
            "(image/object/keypoint/x, y, visibility; the input readers' num_keypoints) and a label map "
            "whose keypoint class lists its keypoints (keypoints { id label }), and its keypoint task's "
            "per-keypoint settings (keypoint_std_dev, flip permutation, edges) are set for COCO's 17 person "
            "keypoints. raredet init writes no keypoints and no keypoint label map; for boxes use --model "
            f"{_box_only_instead(path)}, or edit the keypoint config by hand (docs/migrating.md)")
    return path


def _box_only_instead(path: Path) -> str:
    """The zoo's box-only model nearest to the keypoint or mask model of `path` (same extractor and
    resolution where the zoo has one)."""
    name = zoo.model_name(path.stem)
    names = zoo.model_names()
    if name.startswith("mask_rcnn"):
        return "faster_rcnn_resnet101_v1_1024x1024 (Faster R-CNN at the same resolution)"
    size = "1024x1024" if "1024x1024" in name else "512x512"
    if "hourglass104" in name or name.startswith("center_net_deepmac"):
        return f"centernet_hourglass104_{size} (CenterNet, the same Hourglass-104)"
    box_only = name.replace("_kpts", "")
    if box_only in names:
        return box_only
    return "centernet_resnet101_v1_fpn_512x512 (CenterNet, ResNet-101 v2)"


def check_mask_records(model: str, zoo_path: Path, data: Path) -> str:
    """For an instance-mask model (DeepMAC, Mask R-CNN): the ``mask_type`` of the TFRecords `data`, whose
    every record must carry one mask per box in ``image/object/mask`` (init copies TFRecords as they are;
    it writes no masks from VOC, which has none, or from COCO's ``segmentation``). Refuses other data
    and a record without its masks, before anything is written."""
    voc_or_coco = (data.is_dir() and (data / "Annotations").is_dir()) or (
        data.is_file() and data.suffix.lower() == ".json")
    records = [] if voc_or_coco else _tfrecord_files(data)
    if not records:
        raise ConfigError(
            f"--model {model}: {zoo_path.name} trains instance masks: it needs a mask per box in the "
            "records (image/object/mask). raredet init writes masks only by copying TFRecords that carry "
            f"them; {data} is not such TFRecords (a VOC folder has no masks, and init does not convert a "
            "COCO JSON's 'segmentation'). Give TFRecords with image/object/mask (one PNG per box, as the "
            "TF OD API's create_coco_tf_record.py --include_masks writes them) and --label_map, or for "
            f"boxes use --model {_box_only_instead(zoo_path)}")
    kinds: dict[str, str] = {}
    for path in records:
        for local, payload in enumerate(_payloads(path)):
            kind = _record_mask_kind(payload, f"{path}, record {local}", model)
            if kind is not None:
                kinds.setdefault(kind, f"{path}, record {local}")
    if len(kinds) > 1:
        raise DataError(f"{kinds['bytes_list']} stores PNG masks and {kinds['float_list']} numerical masks "
                        "(float lists); one mask_type reads a data set: write every record's masks alike")
    return "NUMERICAL_MASKS" if "float_list" in kinds else "PNG_MASKS"


def _payloads(path: Path) -> Iterator[bytes]:
    """The records of `path`, one at a time; b"" for one that cannot be read (the conversion reports it)."""
    file = TFRecordFile(path)
    for local in range(len(file)):
        try:
            yield file.read(local)
        except DataError:
            yield b""


def _record_mask_kind(payload: bytes, where: str, model: str) -> str | None:
    """'bytes_list' (PNG) or 'float_list' (numerical) for a record whose boxes each have a mask; None for
    a record without boxes or one that does not parse (the conversion reports it); DataError otherwise."""
    example = example_pb2.Example()
    try:
        example.ParseFromString(payload)
    except Exception:  # protobuf's DecodeError: reported as unreadable_record by the conversion
        return None
    features = example.features.feature
    boxes = len(features["image/object/bbox/xmin"].float_list.value) if "image/object/bbox/xmin" in \
        features else 0
    if boxes == 0:
        return None
    mask = features["image/object/mask"] if "image/object/mask" in features else example_pb2.Feature()
    kind = mask.WhichOneof("kind")
    count = len(getattr(mask, kind).value) if kind else 0
    if (kind == "bytes_list" and count == boxes) or (kind == "float_list" and count > 0):
        return kind  # a float list's N*H*W values are checked against the size by the reader
    raise DataError(f"{where}: {boxes} boxes and {count} masks in 'image/object/mask'; --model {model} "
                    "trains instance masks and needs one per box (a PNG each, or N*H*W floats)")


def default_batch() -> int:
    """8 on a CPU, 32 when CUDA is available (pass --batch_size to choose)."""
    import torch

    return GPU_BATCH if torch.cuda.is_available() else CPU_BATCH


# ---- the data ----------------------------------------------------------------------------------------


def convert_dataset(data: Path, out: Path, issues: convert.DataIssues, *, images: str | Path | None,
                    label_map: str | Path | None, seed: int) -> Dataset:
    """Check ``data`` (VOC folder, COCO JSON or TFRecords) and write its splits as TFRecords in ``out``."""
    given = LabelMap.load(label_map) if label_map is not None else None
    if data.is_dir() and (data / "Annotations").is_dir():
        return _from_voc(data, out, issues, given, seed)
    if data.is_file() and data.suffix.lower() == ".json":
        return _from_coco(data, out, issues, given, Path(images) if images else None, seed)
    records = _tfrecord_files(data)
    if records:
        if given is None:
            raise ConfigError(f"{data}: TFRecords need their label map; add --label_map label_map.pbtxt")
        return _from_tfrecords(records, out, issues, given, seed)
    raise DataError(f"{data}: not a Pascal VOC folder (Annotations/ + JPEGImages/), a COCO JSON file or "
                    f"TFRecords ({', '.join(TFRECORD_SUFFIXES)}); give one of those")


def _from_voc(root: Path, out: Path, issues: convert.DataIssues, given: LabelMap | None,
              seed: int) -> Dataset:
    if not (root / "JPEGImages").is_dir():
        raise DataError(f"{root}: has Annotations/ but no JPEGImages/ folder; a VOC folder needs both")
    own = convert.voc_splits(root)
    if own is None:
        annotated = convert.voc_annotations(root, issues)
        if not annotated:
            raise DataError(f"{root / 'Annotations'}: no readable .xml annotation files")
        return _split_and_write(annotated, out, issues, given, seed, "voc")
    per_split = {s: convert.voc_annotations(root, issues, s) for s in own}
    everything = [a for s in own for a in per_split[s]]
    checked = convert.check_images(everything, given.names if given else None, issues)
    names = given.names if given else sorted({n for im in checked for n in im.names})
    by_id = {im.source_id: im for im in checked}
    splits, sizes = {}, {}
    for s in own:  # an image listed in two splits is in the first only (reported as duplicate_image)
        chosen = [by_id.pop(a.source_id) for a in per_split[s] if a.source_id in by_id]
        splits[s] = convert.write_images(out / f"{s}.tfrecord", chosen, names)
        sizes[s] = len(chosen)
    return Dataset(names, splits, sizes, "voc", f"the folder's own ImageSets/Main lists: {', '.join(own)}")


def _from_coco(path: Path, out: Path, issues: convert.DataIssues, given: LabelMap | None,
               image_dir: Path | None, seed: int) -> Dataset:
    annotated = convert.coco_annotations(path, image_dir, issues)
    if not annotated:
        raise DataError(f"{path}: 'images' is empty")
    return _split_and_write(annotated, out, issues, given, seed, "coco")


def _split_and_write(annotated: list[convert.Annotated], out: Path, issues: convert.DataIssues,
                     given: LabelMap | None, seed: int, kind: str) -> Dataset:
    checked = convert.check_images(annotated, given.names if given else None, issues)
    if not checked:
        raise DataError(f"{annotated[0].where}: no image could be read (see the problems listed: "
                        f"{issues.counts()})")
    names = given.names if given else sorted({n for im in checked for n in im.names})
    if not names:
        raise DataError(f"{annotated[0].where}: no image has a box; nothing to train on")
    split = convert.stratified_split(convert.image_class_indices(checked, names), len(names), seed)
    splits, sizes = {}, {}
    for i, s in enumerate(convert.SPLIT_NAMES):
        chosen = [im for im, k in zip(checked, split, strict=True) if k == i]
        splits[s] = convert.write_images(out / f"{s}.tfrecord", chosen, names)
        sizes[s] = len(chosen)
    return Dataset(names, splits, sizes, kind, split_rule(seed))


def split_rule(seed: int) -> str:
    train, val, test = convert.SPLIT_PERCENT
    return (f"split {train}/{val}/{test} % train/val/test, stratified by each image's rarest class (the "
            f"class in it with fewest boxes in the whole set; images without boxes their own stratum), numpy "
            f"default_rng({seed}) shuffle per stratum, round half up")


def _tfrecord_files(data: Path) -> list[Path]:
    if data.is_dir():
        return sorted(p for p in data.iterdir() if p.suffix.lower() in TFRECORD_SUFFIXES)
    if any(c in str(data) for c in "*?[") or data.suffix.lower() in TFRECORD_SUFFIXES:
        try:
            return expand_input_paths([str(data)])
        except DataError:
            return []
    return []


def _from_tfrecords(files: list[Path], out: Path, issues: convert.DataIssues, labels: LabelMap,
                    seed: int) -> Dataset:
    own = {s: [f for f in files if f.name.lower().startswith(prefixes)]
           for s, prefixes in (("train", ("train",)), ("val", ("val", "eval")), ("test", ("test",)))}
    if own["train"] and own["val"]:  # already split: each split's readable records copied into out
        splits, sizes = {}, {}
        for s, chosen in own.items():
            if chosen:
                merged = out / f"{s}.tfrecord"
                payloads, _ = convert.tfrecord_payloads(chosen, TFRecordReader(chosen, labels), issues)
                splits[s] = write_tfrecord(merged, payloads)
                sizes[s] = len(payloads)
        return Dataset(labels.names, splits, sizes, "tfrecord",
                       "the files' own split by name (train*, val*/eval*, test*)")
    payloads, classes = convert.tfrecord_payloads(files, TFRecordReader(files, labels), issues)
    if not payloads:
        raise DataError(f"{files[0]}: no record could be read ({issues.counts()})")
    split = convert.stratified_split(classes, labels.num_classes, seed)
    splits, sizes = {}, {}
    for i, s in enumerate(convert.SPLIT_NAMES):
        records = [p for p, k in zip(payloads, split, strict=True) if k == i]
        splits[s] = write_tfrecord(out / f"{s}.tfrecord", records)
        sizes[s] = len(records)
    return Dataset(labels.names, splits, sizes, "tfrecord", split_rule(seed))


# ---- the config text ---------------------------------------------------------------------------------


def _block(text: str, name: str) -> tuple[int, int]:
    """[start, end) of the top-level block `name` (`name {` or `name: {` at column 0, to its `}` line)."""
    match = re.search(rf"^{name}\s*:?\s*{{", text, re.M)
    if match is None:
        raise ConfigError(f"zoo config has no top-level {name} block")
    end = re.compile(r"^}", re.M).search(text, match.end())
    return match.start(), end.end() if end else len(text)


def _sub_in_block(text: str, name: str, pattern: str, repl: Any, count: int = 0) -> str:
    start, end = _block(text, name)
    return text[:start] + re.sub(pattern, repl, text[start:end], count=count, flags=re.M) + text[end:]


def _number(text: str, name: str, field: str) -> int:
    start, end = _block(text, name)
    found = re.search(rf"\b{field}\s*:\s*(\d+)", text[start:end])
    if found is None:
        raise ConfigError(f"zoo config: {name}.{field} is not set")
    return int(found.group(1))


def edit_zoo_config(text: str, *, num_classes: int, batch_size: int, num_steps: int | None,
                    label_map: Path, train: Path, evaluate: Path) -> str:
    """The zoo config `text` with what a TF OD API user edits (see the module docstring)."""
    zoo_batch = _number(text, "train_config", "batch_size")
    zoo_steps = _number(text, "train_config", "num_steps")
    text = re.sub(r"(\bnum_classes\s*:\s*)\d+", rf"\g<1>{num_classes}", text)
    text = _sub_in_block(text, "train_config", r"(\bbatch_size\s*:\s*)\d+", rf"\g<1>{batch_size}", count=1)
    scale = batch_size / zoo_batch
    text = _sub_in_block(text, "train_config", LEARNING_RATE.pattern,
                         lambda m: f"{m.group(1)}{_float(float(m.group(2)) * scale)}")
    if num_steps is not None:
        factor = num_steps / zoo_steps
        text = _sub_in_block(text, "train_config", r"(\bnum_steps\s*:\s*)\d+", rf"\g<1>{num_steps}")
        text = _sub_in_block(text, "train_config", STEP_COUNT.pattern,
                             lambda m: f"{m.group(1)}{max(0, round(int(m.group(2)) * factor))}")
        text = _increasing_boundaries(text)
    text = _sub_in_block(text, "train_config", r"^(\s*)use_bfloat16\s*:\s*true.*$",
                         r"\g<1>use_bfloat16: false  # raredet init: bfloat16 is for TPUs")
    text = re.sub(r"^(\s*)(fine_tune_checkpoint(?:_type)?\s*:.*)$", r"\g<1># \g<2>", text, flags=re.M)
    lines = _checkpoint_lines(text)
    text = _sub_in_block(text, "train_config", r"^(\s*)# fine_tune_checkpoint:",
                         lambda m: "".join(f"{m.group(1)}# {line}\n" for line in lines)
                         + f"{m.group(1)}# fine_tune_checkpoint:", count=1)
    text = _comment_out(text, ALLOWED_MASKED_IDS, [
        "raredet init: the zoo's COCO class ids (masks trained for those classes only), commented out:",
        "every class gets masks. To train masks of some classes only, list their label_map.pbtxt ids."])
    text = _comment_out(text, SUPER_CATEGORIES, [
        "raredet init: COCO's super-categories (groups of COCO class names), commented out; group your",
        "own classes' display names this way to have them reported together."], first_only=True)
    text = re.sub(r'(\blabel_map_path\s*:\s*)"[^"]*"', rf'\g<1>"{label_map}"', text)
    text = _sub_in_block(text, "train_input_reader", r'(\binput_path\s*:\s*)"[^"]*"', rf'\g<1>"{train}"')
    return _sub_in_block(text, "eval_input_reader", r'(\binput_path\s*:\s*)"[^"]*"', rf'\g<1>"{evaluate}"')


def _increasing_boundaries(text: str) -> str:
    """A manual schedule's `step` boundaries kept positive and strictly increasing after scaling (both
    the TF OD API and raredet refuse others): each at least 1 and at least the previous one + 1."""
    start, end = _block(text, "train_config")
    previous = 0

    def bump(match: re.Match[str]) -> str:
        nonlocal previous
        previous = max(int(match.group(2)), previous + 1)
        return f"{match.group(1)}{previous}"

    return text[:start] + re.sub(r"(\bstep\s*:\s*)(\d+)", bump, text[start:end]) + text[end:]


def _checkpoint_lines(text: str) -> list[str]:
    """The comment on the commented-out fine_tune_checkpoint: what to download and which type to set."""
    lines = [
        "raredet init: no checkpoint is set, so training starts from random weights. To fine-tune,",
        "download the zoo's tarball of this model (TF2 Detection Model Zoo), and uncomment with:",
        '  fine_tune_checkpoint: "<the unpacked tarball>/checkpoint/ckpt-0"',
    ]
    if meta_architecture(text) != "center_net":
        return lines + [
            '  fine_tune_checkpoint_type: "detection"   (the whole detector, COCO weights)',
            'or, as the zoo config below does, an ImageNet classification checkpoint of the backbone with',
            '  fine_tune_checkpoint_type: "classification". raredet and the TF OD API both load either.',
        ]
    lines += [
        '  fine_tune_checkpoint_type: "detection"   (a CenterNet restores its feature extractor only, not',
        "  the heads, so your classes start fresh; docs/center_net.md \"TF checkpoints\")",
    ]
    if re.search(r'\btype\s*:\s*"hourglass', text):
        return lines + ['An hourglass has no classification backbone: "classification" is not available for '
                        "it (in the TF OD API as in raredet).", "raredet and the TF OD API both load it."]
    return lines + [
        'or, as the zoo config below does, an ImageNet classification checkpoint of the ResNet with',
        '  fine_tune_checkpoint_type: "classification". raredet and the TF OD API both load either.',
    ]


def meta_architecture(text: str) -> str:
    """The zoo config's meta-architecture: 'ssd', 'faster_rcnn' or 'center_net'."""
    start, end = _block(text, "model")
    found = re.search(r"^\s*(ssd|faster_rcnn|center_net)\s*:?\s*{", text[start:end], re.M)
    if found is None:
        raise ConfigError("zoo config: model { } holds none of ssd, faster_rcnn, center_net")
    return found.group(1)


def _comment_out(text: str, pattern: re.Pattern[str], note: list[str], first_only: bool = False) -> str:
    """Every match of `pattern` (whole lines) commented out, `note` above the first (or each) match."""
    pieces, last = [], 0
    for k, match in enumerate(pattern.finditer(text)):
        pad = match.group(1)
        lines = [] if first_only and k else [f"{pad}# {line}" for line in note]
        lines += [f"{pad}# {line[len(pad):] if line.startswith(pad) else line.lstrip()}"
                  for line in match.group(0).split("\n")]
        pieces += [text[last:match.start()], "\n".join(lines)]
        last = match.end()
    return "".join(pieces) + text[last:]


def set_mask_type(text: str, mask_type: str) -> str:
    """The input readers' mask_type set to how the records store their masks (the zoo's PNG_MASKS)."""
    if mask_type == "PNG_MASKS":
        return text
    return re.sub(r"^(\s*)mask_type\s*:\s*PNG_MASKS\b.*$",
                  rf"\g<1>mask_type: {mask_type}  # raredet init: the records store masks as float lists",
                  text, flags=re.M)


def _float(value: float) -> str:
    """Shortest text of `value` to 12 significant digits (no float noise like 0.005000000000000001)."""
    return repr(float(f"{value:.12g}"))


def replace_eval_input(text: str, path: Path) -> str:
    return _sub_in_block(text, "eval_input_reader", r'(\binput_path\s*:\s*)"[^"]*"', rf'\g<1>"{path}"')


# ---- imbalance levers --------------------------------------------------------------------------------


@dataclass
class Levers:
    """The recommendation for the measured imbalance: why, and the config text to uncomment."""

    reason: str
    repeat_factor_threshold: float | None
    class_alpha: dict[str, float]
    alternative: str
    class_weights: str = ""  # the alternative's class-weights block for the model, commented
    class_weights_note: str = ""  # what those weights act on, and where that is documented


@dataclass
class NoAlpha:
    """A meta-architecture whose classification loss has no per-class focal alpha: what stands in."""

    name: str  # "a CenterNet"
    why: str  # why the alpha does not apply
    field: str  # its class-weights field, directly in model.<meta>
    acts_on: str  # what the weights multiply
    doc: str


NO_ALPHA = {
    "center_net": NoAlpha("a CenterNet", "CenterNet's heatmap loss does not have (its alpha is the focusing "
                          "exponent)", "class_weights", "the heatmap's center pixels", "docs/center_net.md"),
    "faster_rcnn": NoAlpha("a Faster R-CNN", "its second stage's softmax loss does not have",
                           "second_stage_class_weights", "the second stage's proposals of each class",
                           "docs/faster_rcnn.md"),
}


def recommend_levers(summary: dict[str, Any], meta: str = "ssd") -> Levers:
    """The imbalance study's best configuration (docs/imbalance.md, docs/class_weighting.md "When to use
    which") for the training split's box counts in `summary` (stats_summary), as far as it acts on the
    meta-architecture `meta`: a CenterNet's heatmap loss and a Faster R-CNN's second-stage softmax have
    no per-class alpha (a CenterNet's `alpha` is the focusing exponent), so they get repeat factors, and
    class weights (on a CenterNet's center pixels, on a Faster R-CNN's second-stage proposals) as the
    alternative (docs/center_net.md "Class weights on a heatmap", docs/faster_rcnn.md)."""
    boxes = {r["name"]: r["boxes"] for r in summary["classes"]}
    most = max(boxes.values())
    ratio = summary["imbalance_ratio"]
    if ratio is not None and ratio < BALANCED_RATIO:
        return Levers(f"imbalance ratio {ratio:.1f} (most/least boxes) is below {BALANCED_RATIO:g}: no "
                      "imbalance lever is recommended; choose per-class thresholds at evaluation "
                      "(eval_config { operating_points { target_precision: 0.9 } })", None, {}, "")
    alpha = {n: RARE_ALPHA if b <= RARE_SHARE * most else MIDDLE_ALPHA
             for n, b in sorted(boxes.items()) if b <= MIDDLE_SHARE * most}
    ratio_text = "inf (a class has no training box)" if ratio is None else f"{ratio:.1f}"
    if meta in NO_ALPHA:
        arch = NO_ALPHA[meta]
        block = f"{arch.field} {{ auto {{ scheme: SQRT_INVERSE_FREQUENCY }} }}"
        return Levers(
            f"imbalance ratio {ratio_text} (most/least boxes): for {arch.name}, repeat factors at threshold "
            f"1.0: raredet's documented best configuration (docs/imbalance.md) less its per-class focal "
            f"alpha, which {arch.why}",
            1.0, {},
            f"if the common classes may give a little for more of the rare ones: repeat factors 1.0 plus "
            f"{block} in model.{meta} (weights on {arch.acts_on}, {arch.doc}; the imbalance study measured "
            f"this pair on SSD, not on {arch.name.split(' ', 1)[1]})",
            block, f"class weights on {arch.acts_on} ({arch.doc})",
        )
    return Levers(
        f"imbalance ratio {ratio_text} (most/least boxes): raredet's documented best configuration "
        f"(docs/imbalance.md): repeat factors at threshold 1.0, focal alpha {RARE_ALPHA} on classes with "
        f"at most {RARE_SHARE:.0%} of the most frequent class's boxes and {MIDDLE_ALPHA} up to "
        f"{MIDDLE_SHARE:.0%}",
        1.0, alpha,
        "if the common classes may give a little for more of the rare ones: repeat factors 1.0 plus "
        "class_weights { auto { scheme: SQRT_INVERSE_FREQUENCY } } in model.ssd.loss instead of class_alpha",
    )


def insert_lever_comments(text: str, levers: Levers) -> str:
    """The levers as commented lines where they go: train_input_reader and the focal loss."""
    if levers.repeat_factor_threshold is None:
        return text
    note = "  # raredet (uncomment to use; the TF OD API rejects this field): rare classes' images repeated\n"
    rfs = f"  # repeat_factor_sampling {{ threshold: {levers.repeat_factor_threshold} }}\n"
    start, _ = _block(text, "train_input_reader")
    line_end = text.index("\n", start) + 1
    text = text[:line_end] + note + rfs + text[line_end:]
    if levers.class_weights:
        text = _insert_class_weights(text, levers.class_weights, levers.class_weights_note)
    focal = re.search(r"^(\s*)weighted_sigmoid_focal\s*:?\s*{[^}]*?\balpha\s*:[^\n]*\n", text, re.M)
    if focal is None or not levers.class_alpha:
        return text
    pad = focal.group(1) + "  "
    lines = [f"{pad}# raredet (uncomment to use): per-class focal alpha, the imbalance study's best\n"]
    lines += [f'{pad}# class_alpha {{ name: "{n}" value: {a:g} }}\n' for n, a in levers.class_alpha.items()]
    return text[:focal.end()] + "".join(lines) + text[focal.end():]


def _insert_class_weights(text: str, block: str, note: str) -> str:
    """`block` commented after the model's num_classes line, and a note at CenterNet's heatmap loss that
    its alpha is no class balance."""
    start, end = _block(text, "model")
    line = re.compile(r"^(\s*)num_classes\s*:[^\n]*\n", re.M).search(text, start, end)
    if line is None:
        raise ConfigError("zoo config: model has no num_classes")
    pad = line.group(1)
    lines = [
        "raredet (uncomment for the alternative, with the repeat factors; the TF OD API rejects this",
        f"field): {note}",
        block,
    ]
    text = text[:line.end()] + "".join(f"{pad}# {x}\n" for x in lines) + text[line.end():]
    focal = re.search(r"^(\s*)penalty_reduced_logistic_focal_loss\s*:?\s*{[^\n]*\n", text, re.M)
    if focal is None:
        return text
    pad = focal.group(1) + "  "
    note = (f"{pad}# raredet: alpha here is the focusing exponent, no class balance (no class_alpha);\n"
            f"{pad}# the class_weights above are CenterNet's per-class lever\n")
    return text[:focal.end()] + note + text[focal.end():]


# ---- reports -----------------------------------------------------------------------------------------


def config_header(zoo_path: Path, data: Path, dataset: Dataset, zoo_text: str, edited: str, batch: int,
                  split_stats: dict[str, DatasetStats], levers: Levers, mask_type: str | None = None) -> str:
    zoo_batch = _number(zoo_text, "train_config", "batch_size")
    rates = [(m.group(1).split(":")[0].strip(), m.group(2)) for m in LEARNING_RATE.finditer(
        zoo_text[slice(*_block(zoo_text, "train_config"))])]
    new_rates = [m.group(2) for m in LEARNING_RATE.finditer(edited[slice(*_block(edited, "train_config"))])]
    steps = _number(edited, "train_config", "num_steps")
    epochs = steps * batch / max(dataset.sizes["train"], 1)
    train = split_stats["train"]
    lines = [
        f"raredet init from {data} ({dataset.kind}): the TF2 zoo's {zoo_path.name} (verbatim, Apache-2.0),",
        "edited as a TF OD API user edits it:",
        f"  num_classes -> {len(dataset.names)}; label_map_path and input_path -> the files beside this",
        f"  config; train batch_size {zoo_batch} -> {batch}; learning rates scaled linearly to the batch,",
        f"  rate * {batch}/{zoo_batch}:",
        *[f"    {name} {old} -> {new}" for (name, old), new in zip(rates, new_rates, strict=True)],
        f"  num_steps {steps} (~{epochs:.0f} epochs of the {dataset.sizes['train']} training images)",
        "  fine_tune_checkpoint: commented out (see there)",
        *([f"  instance masks: the records' image/object/mask, mask_type {mask_type}; the zoo's COCO-only "
           "allowed_masked_classes_ids and super_categories (where set) commented out"] if mask_type else []),
        f"Splits: {dataset.split_rule}:",
        *[f"  {s}: {dataset.sizes[s]} images, {split_stats[s].num_boxes} boxes" for s in dataset.splits],
        "Training boxes (images) per class: " + ", ".join(
            f"{n} {int(b)} ({int(i)})" for n, b, i in zip(dataset.names, train.box_counts, train.image_counts,
                                                          strict=True)),
        f"Imbalance levers: {levers.reason}.",
    ]
    if levers.alternative:
        lines.append(f"  Alternative: {levers.alternative}.")
    wrapped = [w for line in lines for w in textwrap.wrap(
        line, 106, subsequent_indent=" " * (len(line) - len(line.lstrip()) + 2))]
    return "".join(f"# {line}\n" for line in wrapped)


def check_written(path: Path) -> None:
    """The written config must pass `raredet config check`; an error there is init's fault."""
    from raredet.commands.config import check

    try:
        check(path, check_paths=True)
    except ConfigError as err:
        raise ConfigError(f"{path}: raredet init wrote a config that `raredet config check` refuses "
                          f"(please report it): {err}") from err


def init_summary(out: Path, dataset: Dataset, issues: convert.DataIssues, stats_text: str, levers: Levers,
                 batch: int) -> str:
    written = [out / "pipeline.config", out / "label_map.pbtxt", *dataset.splits.values(), out / "stats",
               out / "data_report.txt"]
    sizes = ", ".join(f"{s} {n}" for s, n in dataset.sizes.items())
    return "\n".join([
        f"wrote: {', '.join(str(p) for p in written)}",
        f"splits: {sizes} images ({dataset.split_rule})",
        "",
        "data problems, per kind (count, rule):",
        issues.report(),
        "",
        "training split statistics:",
        stats_text,
        "",
        f"imbalance levers: {levers.reason} (commented in pipeline.config)",
        f"batch size {batch}; learning rates scaled to it (see the config's first lines)",
        "",
        "next:",
        f"  raredet config check {out / 'pipeline.config'}",
        f"  raredet train --pipeline_config_path {out / 'pipeline.config'} --model_dir {out / 'run'}",
        f"  raredet eval  --pipeline_config_path {out / 'pipeline.config'} --checkpoint_dir {out / 'run'}",
    ])
