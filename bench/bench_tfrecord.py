"""TFRecord reading speed next to JPEG decoding alone, measured in the same run on the same bytes.

Records: 512x512 JPEGs of synthetic metal parts with 5 boxes each, in 2 shards. Figures, records/s:
- ``read_decode``: TFRecordReader.example(i) for every record (CRC check, tf.Example parse, box checks,
  JPEG decode) — what the training dataset pays per image before augmentation;
- ``jpeg_decode_only``: Pillow decoding of the same JPEG bytes, already in memory;
- ``annotations_only``: TFRecordReader.annotations(i) (what `raredet stats` pays; no image decode);
- ``read_decode_draft``: as read_decode with a 128x128 resizer target (JPEG draft mode).
``overhead_ratio`` = jpeg_decode_only / read_decode: 1.0 would mean the framing and parsing are free.

    python -m bench.bench_tfrecord [--quick]   # prints a table, writes bench/results/tfrecord.json
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import median_seconds, save_result
from raredet.config import LabelMap
from raredet.data.example import decode_image
from raredet.data.synth import draw_part
from raredet.data.tfrecord import TFRecordReader, detection_example, write_tfrecord

SIZE = 512


def make_records(directory: Path, num_records: int) -> tuple[list[Path], list[bytes]]:
    rng = np.random.default_rng(0)
    jpegs, records = [], []
    for i in range(num_records):
        image, _ = draw_part(rng, SIZE)
        buffer = io.BytesIO()
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
        xy = rng.uniform(0, SIZE - 60, (5, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 60, (5, 2))], axis=1)
        records.append(
            detection_example(
                encoded=jpegs[-1],
                image_format="jpeg",
                height=SIZE,
                width=SIZE,
                boxes=boxes,
                class_ids=rng.integers(1, 4, 5),
                source_id=str(i),
            )
        )
    half = num_records // 2
    paths = [
        write_tfrecord(directory / f"b-0000{s}-of-00002", chunk)
        for s, chunk in enumerate((records[:half], records[half:]))
    ]
    return paths, jpegs


def run(quick: bool = False) -> dict[str, Any]:
    num_records, repeats = (40, 3) if quick else (400, 5)
    label_map = LabelMap.from_names(["a", "b", "c"])
    with tempfile.TemporaryDirectory() as tmp:
        paths, jpegs = make_records(Path(tmp), num_records)
        reader = TFRecordReader(paths, label_map)
        n = len(reader)
        timings = {
            "read_decode": median_seconds(lambda: [reader.example(i) for i in range(n)], repeats),
            "jpeg_decode_only": median_seconds(lambda: [decode_image(j, "bench") for j in jpegs], repeats),
            "annotations_only": median_seconds(lambda: [reader.annotations(i) for i in range(n)], repeats),
            "read_decode_draft": median_seconds(
                lambda: [reader.example(i, draft_size=(128, 128)) for i in range(n)], repeats
            ),
        }
    per_second = {k: n / v for k, v in timings.items()}
    ratio = per_second["read_decode"] / per_second["jpeg_decode_only"]
    summary = [
        f"{n} records of {SIZE}x{SIZE} JPEG, median of {repeats} runs (records/s):",
        "",
        "| path | records/s |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in per_second.items()],
        "",
        f"read+decode runs at {ratio:.2f}x the speed of JPEG decoding alone "
        "(1.0 = framing and parsing free).",
    ]
    return {
        "num_records": n,
        "image_size": SIZE,
        "repeats": repeats,
        "records_per_second": per_second,
        "read_decode_vs_jpeg_only": ratio,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    result = run(quick=parser.parse_args(argv).quick)
    print("\n".join(result["summary"]))
    print(f"wrote {save_result('tfrecord', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
