"""TF-written records for the 40-config new-user run (bench/zoo_new_user.py). Run with the TF OD API's
venv (../shared/research/tfodapi-reference-install.md), never with raredet's:

    PYTHONPATH=<models>/research <tf-venv>/bin/python bench/tf_write_user_records.py OUT_DIR

Writes OUT_DIR/train-00000-of-00001.tfrecord (8 images), OUT_DIR/val-00000-of-00001.tfrecord (4) and
OUT_DIR/label_map.pbtxt, every byte by TensorFlow: `tf.train.Example` built with the TF OD API's
`dataset_util` feature helpers, images JPEG-encoded by `tf.io.encode_jpeg`, instance masks PNG-encoded by
`tf.io.encode_png` (one per object, as the TF OD API's COCO converter writes them), and COCO's 17 person
keypoints (`image/object/keypoint/x|y|visibility`, normalised, zeros with visibility 0 for objects
without keypoints, as that converter writes them). Three classes: the COCO person ("/m/01g317", the
keypoint configs' `keypoint_class_name`) carrying keypoints, and two defect classes. The label map's
person item lists the 17 keypoints, so the same file serves as `keypoint_label_map_path`.

Images are 480x640 (H x W) of noise with a filled ellipse per object (the mask), drawn with numpy from
a fixed seed; nothing is downloaded.
"""

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from object_detection.utils import dataset_util

KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
             "left_knee", "right_knee", "left_ankle", "right_ankle")
CLASSES = ("/m/01g317", "crack", "scratch")
H, W = 480, 640


def example(rng: np.random.Generator, index: int) -> bytes:
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    boxes, labels, masks, kx, ky, kv = [], [], [], [], [], []
    for k in range(int(rng.integers(2, 4))):
        label = 1 if k == 0 else int(rng.integers(2, 4))
        x0, y0 = rng.uniform(0.05, 0.55, 2)
        x1, y1 = x0 + rng.uniform(0.15, 0.4), y0 + rng.uniform(0.15, 0.4)
        cx, cy, rx, ry = (x0 + x1) / 2 * W, (y0 + y1) / 2 * H, (x1 - x0) / 2 * W, (y1 - y0) / 2 * H
        mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)
        image[mask.astype(bool)] = (40 * label, 255 - 60 * label, 120)
        masks.append(tf.io.encode_png(mask[..., None]).numpy())
        boxes.append((x0, y0, x1, y1))
        labels.append(label)
        if label == 1:  # the person: 17 keypoints inside its box, some not labelled (visibility 0)
            kx += list(rng.uniform(x0, x1, 17))
            ky += list(rng.uniform(y0, y1, 17))
            kv += list(rng.choice([0, 1, 2], 17))
        else:
            kx += [0.0] * 17
            ky += [0.0] * 17
            kv += [0] * 17
    b = np.array(boxes)
    features = {
        "image/height": dataset_util.int64_feature(H), "image/width": dataset_util.int64_feature(W),
        "image/filename": dataset_util.bytes_feature(f"{index}.jpg".encode()),
        "image/source_id": dataset_util.bytes_feature(str(index).encode()),
        "image/encoded": dataset_util.bytes_feature(tf.io.encode_jpeg(image, quality=90).numpy()),
        "image/format": dataset_util.bytes_feature(b"jpeg"),
        "image/object/bbox/xmin": dataset_util.float_list_feature(list(b[:, 0])),
        "image/object/bbox/ymin": dataset_util.float_list_feature(list(b[:, 1])),
        "image/object/bbox/xmax": dataset_util.float_list_feature(list(b[:, 2])),
        "image/object/bbox/ymax": dataset_util.float_list_feature(list(b[:, 3])),
        "image/object/class/text": dataset_util.bytes_list_feature([CLASSES[i - 1].encode() for i in labels]),
        "image/object/class/label": dataset_util.int64_list_feature(labels),
        "image/object/is_crowd": dataset_util.int64_list_feature([0] * len(labels)),
        "image/object/mask": dataset_util.bytes_list_feature(masks),
        "image/object/keypoint/x": dataset_util.float_list_feature(kx),
        "image/object/keypoint/y": dataset_util.float_list_feature(ky),
        "image/object/keypoint/visibility": dataset_util.int64_list_feature([int(v) for v in kv]),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        with tf.io.TFRecordWriter(str(out / f"{split}-00000-of-00001.tfrecord")) as writer:
            for i in range(count):
                writer.write(example(rng, i if split == "train" else 100 + i))
    keypoints = " ".join(f'keypoints {{ id: {i} label: "{k}" }}' for i, k in enumerate(KEYPOINTS))
    items = [f'item {{ name: "/m/01g317" id: 1 display_name: "person" {keypoints} }}',
             'item { name: "crack" id: 2 }', 'item { name: "scratch" id: 3 }']
    (out / "label_map.pbtxt").write_text("\n".join(items) + "\n", encoding="utf-8")
    print(out, "train 8, val 4 images")


if __name__ == "__main__":
    main()
