"""Config messages -> objects: with config/ and commands/, the only code that reads config messages
(docs/architecture.md, "Where configuration is read").

Every choice point in the config (a protobuf `oneof`) is one plain dict from the oneof's field name to
a constructor; an unset or unsupported choice is a ConfigError that lists the valid keys. Constructors
take keyword arguments named as the proto fields, so a message's set fields pass straight through
(`message_kwargs`); unset fields keep the constructors' defaults, which are the TF OD API's.

One module per concern, as the TF OD API's `builders/`: `messages` (generic message helpers), `optim`,
`data`, `losses` (with class weights), `model` (with calibration), `evaluation`, `training`. The public
names of all of them are re-exported here (`builders.build_model(...)`).
"""

from raredet.builders.data import (
    build_augmentations,
    build_eval_loader,
    build_reader,
    build_resizer,
    build_sampler,
    build_train_data,
    training_stats,
)
from raredet.builders.evaluation import (
    OPERATING_POINTS_WHERE,
    build_operating_point_rules,
    eval_options,
    tf_od_api_config_text,
)
from raredet.builders.losses import (
    BOX_CODERS,
    MATCHERS,
    SIMILARITIES,
    build_box_coder,
    build_class_weights,
    build_faster_rcnn_loss,
    build_loss,
    explicit_class_values,
    resolve_class_weight_table,
)
from raredet.builders.messages import (
    CALIBRATION_WHERE,
    ModelMessage,
    class_weights_field,
    message_kwargs,
    model_message,
    oneof_choice,
    post_processing_field,
    post_processing_of,
)
from raredet.builders.model import (
    build_calibration,
    build_model,
    default_weights_convention,
)
from raredet.builders.optim import LEARNING_RATES, OPTIMIZERS, build_learning_rate, build_optimizer
from raredet.builders.training import (
    build_training,
    check_buildable,
    fine_tune_convention,
    load_fine_tune_checkpoint,
    uses_sync_batch_norm,
)

__all__ = [
    "BOX_CODERS", "CALIBRATION_WHERE", "LEARNING_RATES", "MATCHERS",
    "OPERATING_POINTS_WHERE", "OPTIMIZERS", "SIMILARITIES", "ModelMessage",
    "build_augmentations", "build_box_coder", "build_calibration", "build_class_weights",
    "build_eval_loader", "build_faster_rcnn_loss", "build_learning_rate", "build_loss", "build_model",
    "build_operating_point_rules", "build_optimizer", "build_reader", "build_resizer", "build_sampler",
    "build_train_data", "build_training", "check_buildable", "class_weights_field",
    "default_weights_convention", "eval_options", "explicit_class_values", "fine_tune_convention",
    "load_fine_tune_checkpoint", "message_kwargs", "model_message", "oneof_choice",
    "post_processing_field", "post_processing_of", "resolve_class_weight_table", "tf_od_api_config_text",
    "training_stats", "uses_sync_batch_norm",
]
