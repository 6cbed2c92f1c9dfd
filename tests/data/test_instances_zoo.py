"""The zoo configs that read masks or keypoints (Mask R-CNN, DeepMAC, CenterNet keypoints): their input
readers and augmentation steps, built from the configs as written (at 64 pixels), give batches whose
masks and keypoints line up with the images. Only the data path is built (no model, no validation of
the model block), so this holds whatever the state of the models."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tests.helpers.zoo import zoo_user_copy

from raredet import config
from raredet.builders.data import build_augmentations, build_reader, build_resizer
from raredet.builders.messages import model_message
from raredet.config import LabelMap
from raredet.data.dataset import DetectionDataset, collate
from raredet.data.tfrecord import encode_example, write_tfrecord
from raredet.protos import pipeline_pb2

CONFIGS = [
    "mask_rcnn_inception_resnet_v2_1024x1024_coco17_gpu-8.config",
    "center_net_deepmac_512x512_voc_only_tpu-32.config",
    "center_net_deepmac_1024x1024_coco_tpu-128.config",
    "centernet_hourglass104_512x512_kpts_coco17_tpu-32.config",
    "centernet_resnet50_v1_fpn_512x512_kpts_coco17_tpu-8.config",
    "centernet_resnet50_v2_512x512_kpts_coco17_tpu-8.config",
]
J = 17


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def _records(rng: np.random.Generator) -> list[bytes]:
    """Two 48 x 40 images, two objects each: a box, its mask (the box filled), 17 keypoints inside it."""
    out = []
    for _ in range(2):
        h, w = 48, 40
        boxes = np.array([[4, 6, 20, 30], [18, 10, 38, 44]], dtype=np.float64)  # x0 y0 x1 y1
        masks = np.zeros((2, h, w), dtype=np.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            masks[k, y0:y1, x0:x1] = 1
        kx = rng.uniform(boxes[:, :1], boxes[:, 2:3], (2, J)) / w
        ky = rng.uniform(boxes[:, 1:2], boxes[:, 3:4], (2, J)) / h
        image = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image, format="PNG")
        out.append(encode_example({
            "image/encoded": image.getvalue(), "image/format": "png", "image/height": h, "image/width": w,
            "image/object/bbox/xmin": boxes[:, 0] / w, "image/object/bbox/ymin": boxes[:, 1] / h,
            "image/object/bbox/xmax": boxes[:, 2] / w, "image/object/bbox/ymax": boxes[:, 3] / h,
            "image/object/class/label": [1, 2], "image/object/mask": [_png(m) for m in masks],
            "image/object/keypoint/x": kx.ravel(), "image/object/keypoint/y": ky.ravel(),
            "image/object/keypoint/visibility": rng.integers(0, 3, 2 * J),
            "image/object/area": [300.0, 500.0],
        }))
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_zoo_data_path_carries_masks_and_keypoints(tmp_path, name) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "label_map.pbtxt").write_text('item { id: 1 name: "person" }\nitem { id: 2 name: "b" }\n'
                                              'item { id: 3 name: "c" }\n')
    write_tfrecord(tmp_path / "train-00000-of-00001.tfrecord", _records(rng))
    path = zoo_user_copy(name, tmp_path, batch=2, size=64, absolute_paths=True)
    msg = config.parse_text(path.read_text(), pipeline_pb2.TrainEvalPipelineConfig(), path)
    reader_msg = msg.train_input_reader
    assert reader_msg.load_instance_masks or reader_msg.num_keypoints  # what the config asks for
    label_map = LabelMap.load(tmp_path / "label_map.pbtxt")
    dataset = DetectionDataset(build_reader(reader_msg, label_map, "train_input_reader"),
                               augmentations=build_augmentations(msg.train_config, reader_msg.num_keypoints),
                               resizer=build_resizer(model_message(msg)), training=True)
    for epoch in range(3):  # flips and crops both ways
        dataset.set_epoch(epoch)
        batch = collate([dataset[0], dataset[1]])
        b, _, h, w = batch["images"].shape
        n = batch["boxes"].shape[1]
        assert ("masks" in batch) == reader_msg.load_instance_masks
        assert ("keypoints" in batch) == (reader_msg.num_keypoints > 0)
        if "masks" in batch:
            masks = batch["masks"].numpy()
            assert masks.shape == (b, n, h, w) and set(np.unique(masks)) <= {0, 1}
            for i in range(b):  # each kept object's mask lies within its box (the mask is the box filled)
                kept = int(batch["num_boxes"][i])
                for box, mask in zip(batch["boxes"][i, :kept].numpy(), masks[i, :kept], strict=True):
                    ys, xs = np.nonzero(mask)
                    if len(ys):
                        assert xs.min() >= np.floor(box[0]) - 1 and xs.max() <= np.ceil(box[2]) + 1
                        assert ys.min() >= np.floor(box[1]) - 1 and ys.max() <= np.ceil(box[3]) + 1
        if "keypoints" in batch:
            kp, vis = batch["keypoints"].numpy(), batch["keypoint_visibilities"].numpy()
            assert kp.shape == (b, n, J, 2) and vis.shape == (b, n, J)
            assert np.isfinite(kp[vis]).all() and np.isnan(kp[~vis]).all()
            inside = kp[vis]
            assert (inside >= 0).all() and (inside[:, 0] <= w).all() and (inside[:, 1] <= h).all()
