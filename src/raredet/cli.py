"""Command-line front end: argparse only; every verb calls one function of `raredet.commands`.

Each verb has an `_add_<verb>` function that declares its arguments and sets `func`, a callable that
takes the parsed namespace and returns an exit code. Imports of heavy modules happen inside `func`, so
`raredet --help` stays fast. Errors of type `RaredetError` print as one clear message with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from raredet.errors import RaredetError, user_message

AddVerb = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


# ---- verbs (one block each; keep them thin) -------------------------------------------------------


def _add_evaluate_detections(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate-detections", help="COCO/VOC metrics, per-class table, plots and report "
                       "for any detector's COCO-format results")
    p.add_argument("--groundtruth", required=True, help="COCO ground-truth JSON")
    p.add_argument("--detections", required=True, help="COCO results JSON (list of detections)")
    p.add_argument("--out", default="eval", help="output directory (default: ./eval)")
    p.add_argument("--min_score_threshold", type=float, default=0.5,
                   help="score at which precision/recall/TP/FP are counted (default 0.5)")
    p.add_argument("--metrics_set", action="append", choices=["coco_detection_metrics",
                   "pascal_voc_detection_metrics"], help="repeatable (default coco_detection_metrics)")
    p.add_argument("--image_dir", help="folder with the images' file_name, to draw examples in report.html")
    p.add_argument("--operating_point", metavar="RULE", help="per-class thresholds by max_f1 (default), "
                   "target_precision=P or target_recall=R")
    p.add_argument("--operating_points_from", metavar="FILE", help="grade the thresholds of another "
                   "evaluation's operating_points.json on these detections instead of choosing new ones")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.evaluate_detections import evaluate_detections_from_files

        evaluate_detections_from_files(a.groundtruth, a.detections, out_dir=a.out,
                                       metrics_set=a.metrics_set or [],
                                       min_score_threshold=a.min_score_threshold, image_dir=a.image_dir,
                                       operating_point=a.operating_point,
                                       operating_points_from=a.operating_points_from)
        return 0

    p.set_defaults(func=run)


def _add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("compare", help="per-class tables of several runs side by side, rare classes first")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs with eval/per_class.json; the first is "
                   "the baseline the deltas are taken against")
    p.add_argument("--out", default="compare", help="where compare.{md,html,png} go (default: ./compare)")
    p.add_argument("--precision", type=float, default=None,
                   help="compare each class's recall at this precision (IoU 0.5; default: the runs' common "
                        "target_precision rule, else 0.9)")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.compare import compare

        print(compare(a.runs, a.out, a.precision), end="")
        return 0

    p.set_defaults(func=run)


def _add_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="check a pipeline.config (summary or error) or show it with defaults")

    def usage(_: argparse.Namespace) -> int:  # `raredet config` without check/show
        p.print_help()
        return 2

    p.set_defaults(func=usage)
    verbs = p.add_subparsers(dest="config_verb", metavar="{check,show}")
    c = verbs.add_parser("check", help="validate; print model, classes, losses, class weights, inputs")
    c.add_argument("path", metavar="PATH", help="pipeline.config")
    c.add_argument("--check_paths", action="store_true", help="also fail on input paths that do not exist")
    s = verbs.add_parser("show", help="print the effective config, every default written out")
    s.add_argument("path", metavar="PATH", help="pipeline.config")
    s.add_argument("--resolve_weights", action="store_true",
                   help="also print the class-weight table that training would use")

    def run_check(a: argparse.Namespace) -> int:
        from raredet.commands.config import check

        print(check(a.path, check_paths=a.check_paths))
        return 0

    def run_show(a: argparse.Namespace) -> int:
        from raredet.commands.config import show

        print(show(a.path, resolve_weights=a.resolve_weights), end="")
        return 0

    c.set_defaults(func=run_check)
    s.set_defaults(func=run_show)


def _add_stats(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="per-class box/image counts, imbalance, automatic class weights, "
                       "repeat factors and a bar chart for the training input of a pipeline.config")
    p.add_argument("--pipeline_config_path", required=True, help="pipeline.config")
    p.add_argument("--out", help="directory for stats.json, stats.txt and class_counts.png")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.stats import stats_for_config

        print(stats_for_config(a.pipeline_config_path, a.out))
        return 0

    p.set_defaults(func=run)


def _add_synth(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("synth", help="write the synthetic rare-defects dataset with a ready pipeline.config")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--images", type=int, default=1000, help="images in train + val (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--ratios", default="100:20:3", help="box ratio scratch:dent:crack (default 100:20:3)")
    p.add_argument("--image_size", type=int, default=128, help="square image side in pixels (default 128)")
    p.add_argument("--num_shards", type=int, default=2, help="TFRecord shards per split (default 2)")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.synth import synth

        print(synth(a.out, a.images, a.seed, a.ratios, a.image_size, a.num_shards))
        return 0

    p.set_defaults(func=run)


def _add_init(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="from your VOC folder, COCO JSON or TFRecords and a TF2 zoo model name: "
                       "a working pipeline.config, label map, train/val/test TFRecords and class statistics")
    p.add_argument("data", help="a Pascal VOC folder (Annotations/, JPEGImages/), a COCO JSON file, or "
                   "TFRecords (a file, glob or folder; with --label_map)")
    p.add_argument("--model", required=True, help="a TF2 zoo model, e.g. ssd_mobilenet_v2_fpnlite_320x320")
    p.add_argument("--out", required=True, help="folder to write into (must be empty unless --overwrite)")
    p.add_argument("--images", help="COCO: the folder file_name is relative to (default: beside the JSON)")
    p.add_argument("--label_map", help="label_map.pbtxt: class names and order (required for TFRecords; "
                   "VOC/COCO: boxes of other classes are dropped and reported)")
    p.add_argument("--batch_size", type=int, help="training batch (default 8 on a CPU, 32 with CUDA)")
    p.add_argument("--num_steps", type=int, help="training steps (default: the zoo config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.init import run_init

        print(run_init(a.data, a.model, a.out, images=a.images, label_map=a.label_map,
                       batch_size=a.batch_size, num_steps=a.num_steps, seed=a.seed, overwrite=a.overwrite))
        return 0

    p.set_defaults(func=run)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train the model of a pipeline.config; resumes from the newest "
                       "checkpoint in --model_dir (flags as model_main_tf2.py; works under torchrun)")
    p.add_argument("--pipeline_config_path", required=True, help="pipeline.config")
    p.add_argument("--model_dir", required=True, help="checkpoints, train/ and eval/ logs go here")
    p.add_argument("--num_train_steps", type=int, help="overrides train_config.num_steps")
    p.add_argument("--checkpoint_every_n", type=int, help="overrides train_config.checkpoint_every_n")
    p.add_argument("--sample_1_of_n_eval_examples", type=int, help="evaluate on every n-th eval example")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--eval_every_n_steps", type=int, default=0,
                   help="validation loss and metrics on eval_input_reader every N steps (0: never)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="autocast precision; default auto: bf16 on CUDA; on the CPU fp32, or bf16 where "
                        "train_config.use_bfloat16 asks for it and the CPU runs bf16 natively (AVX-512, AMX)")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory order; default: on (~25 %% fewer CPU-seconds per step on CPU; "
                        "x1.2-2.4 images/s on an H200; docs/benchmarks.md)")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.train import train_from_config

        result = train_from_config(
            a.pipeline_config_path, a.model_dir, num_train_steps=a.num_train_steps,
            checkpoint_every_n=a.checkpoint_every_n, seed=a.seed, device=a.device,
            sample_1_of_n_eval_examples=a.sample_1_of_n_eval_examples,
            eval_every_n_steps=a.eval_every_n_steps, precision=a.precision,
            channels_last=a.channels_last,
        )
        return 130 if result.interrupted else 0  # stopped by a signal: checkpoint written, not finished

    p.set_defaults(func=run)


MODEL_DIR_HELP = ("the training run (its newest ckpt-<step>.pt is used), or a model the TF OD API "
                  "trained: an extracted TF2 zoo model folder (pipeline.config + checkpoint/) or a TF "
                  "model_dir (with --pipeline_config_path)")
LABEL_MAP_HELP = "a label_map.pbtxt naming the classes (default: the checkpoint's, else the config's)"


def _add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="evaluate checkpoints on eval_input_reader: COCO/VOC metrics, per-class "
                       "table, plots, report.html (flags as model_main_tf2.py's evaluation mode)")
    p.add_argument("--pipeline_config_path", required=True, help="pipeline.config")
    p.add_argument("--checkpoint_dir", required=True, help="the training run's model_dir (ckpt-<step>.pt), "
                   "or a TF OD API model: an extracted TF2 zoo model folder or a TF model_dir (ckpt-N.index)")
    p.add_argument("--checkpoint", help="evaluate this checkpoint file or TF checkpoint prefix (default: "
                   "the newest)")
    p.add_argument("--wait", action="store_true", help="keep evaluating each new checkpoint as it appears")
    p.add_argument("--eval_timeout", type=float, default=3600.0,
                   help="with --wait: stop after this many seconds without a new checkpoint (default 3600)")
    p.add_argument("--out", help="output directory (default: CHECKPOINT_DIR/eval)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--sample_1_of_n_eval_examples", type=int, help="evaluate on every n-th eval example")
    p.add_argument("--operating_point", metavar="RULE", help="how each class's threshold is chosen: max_f1, "
                   "target_precision=P or target_recall=R (replaces eval_config.operating_points' rules)")
    p.add_argument("--review_precision", type=float, metavar="Q", help="add a review band: a lower "
                   "threshold at the highest recall with precision >= Q")
    p.add_argument("--operating_points_from", metavar="FILE", help="grade the thresholds of another "
                   "evaluation's operating_points.json (e.g. chosen on val) on these images instead of "
                   "choosing new ones")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.evaluate import eval_from_config

        eval_from_config(a.pipeline_config_path, a.checkpoint_dir, checkpoint=a.checkpoint, wait=a.wait,
                         eval_timeout=a.eval_timeout, out_dir=a.out, device=a.device,
                         sample_1_of_n_eval_examples=a.sample_1_of_n_eval_examples,
                         operating_point=a.operating_point, review_precision=a.review_precision,
                         operating_points_from=a.operating_points_from)
        return 0

    p.set_defaults(func=run)


def _add_predict(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", help="detect objects in image files with a trained model: COCO results "
                       "JSON and drawn images")
    p.add_argument("--model_dir", required=True, help=MODEL_DIR_HELP)
    p.add_argument("--images", required=True, nargs="+", metavar="PATH",
                   help="image files, folders of images, or glob patterns (quote them)")
    p.add_argument("--out", required=True, help="output directory: detections.json, images.json, drawn/")
    p.add_argument("--min_score", type=float, default=None, help="keep detections scoring at least this "
                   "(default 0.5)")
    p.add_argument("--operating_points", metavar="FILE", help="operating_points.json of `raredet eval`: keep "
                   "each class's detections above its own threshold; mark the review band")
    p.add_argument("--pipeline_config_path", help="default: the config saved in the checkpoint (a TF model "
                   "folder's pipeline.config)")
    p.add_argument("--label_map", help=LABEL_MAP_HELP)

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.predict import predict

        print(predict(a.model_dir, a.images, a.out, min_score=a.min_score,
                      pipeline_config_path=a.pipeline_config_path,
                      operating_points=a.operating_points, label_map_path=a.label_map).summary())
        return 0

    p.set_defaults(func=run)


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="write a trained model with its post-processing as TorchScript or ONNX")
    p.add_argument("--model_dir", required=True, help=MODEL_DIR_HELP)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"), help="output format")
    p.add_argument("--out", required=True, help="output file (e.g. model.pt or model.onnx)")
    p.add_argument("--pipeline_config_path", help="default: the config saved in the checkpoint (a TF model "
                   "folder's pipeline.config)")
    p.add_argument("--operating_points", metavar="FILE", help="operating_points.json of `raredet eval`: "
                   "put each class's threshold into the exported graph")
    p.add_argument("--label_map", help=LABEL_MAP_HELP)

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.export import export_model

        print(export_model(a.model_dir, a.format, a.out, pipeline_config_path=a.pipeline_config_path,
                           operating_points=a.operating_points, label_map_path=a.label_map))
        return 0

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the main job in minutes: synthetic rare defects, a baseline and a "
                       "class-weighted run, per-class comparison")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out; a rerun starts "
                   "fresh)")
    p.add_argument("--quick", action="store_true", help="a tiny version in about a minute (smoke test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and of both runs (default 0)")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.demo import run_demo

        run_demo(a.out, quick=a.quick, seed=a.seed)
        return 0

    p.set_defaults(func=run)


def _add_inspect_checkpoint(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("inspect-checkpoint", help="list a TensorFlow checkpoint's tensors: key, dtype, "
                       "shape, object path and variable name (as TF's inspect_checkpoint tool, without TF)")
    p.add_argument("prefix", metavar="PREFIX", help="checkpoint prefix (e.g. checkpoint/ckpt-0), its "
                   ".index file, or a folder with a `checkpoint` state file")
    p.add_argument("--tensor_name", metavar="KEY", help="print this tensor's values (a key, an object path "
                   "or a variable's full name)")
    p.add_argument("--all_tensors", action="store_true", help="print every tensor's values")

    def run(a: argparse.Namespace) -> int:
        from raredet.commands.inspect_checkpoint import inspect_checkpoint

        print(inspect_checkpoint(a.prefix, tensor_name=a.tensor_name, all_tensors=a.all_tensors), end="")
        return 0

    p.set_defaults(func=run)


# ---- end of verbs ----------------------------------------------------------------------------------

VERBS: list[AddVerb] = [
    _add_config, _add_evaluate_detections, _add_compare, _add_eval, _add_stats, _add_synth, _add_init,
    _add_train, _add_predict, _add_export, _add_demo, _add_inspect_checkpoint,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raredet",
        description="Train and evaluate object detectors on imbalanced data, configured by pipeline.config.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.verb is None else 2
    try:
        return int(args.func(args) or 0)
    except RaredetError as err:
        print(f"raredet {args.verb}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raredet {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
