"""TensorFlow checkpoints (PREFIX.index + PREFIX.data-0000k-of-0000n) read in plain Python and numpy.

    from raredet.tfcheckpoint import open_checkpoint
    ckpt = open_checkpoint("ssd_mobilenet_v2/checkpoint/ckpt-0")   # or the folder, or PREFIX.index
    for path, key in ckpt.variables().items():                      # object path -> checkpoint key
        print(path, ckpt.info(key).shape, ckpt.info(key).full_name)
    kernel = ckpt.tensor(key)                                        # read-only, memory-mapped

`table` reads the index (a LevelDB-format table), `bundle` its header and entries and the tensors'
bytes, `slices` assembles partitioned variables, `object_graph` reads the TF2 object graph that names
each key's object path and variable. Every problem with the files is a `raredet.errors.CheckpointError`
whose one-line message names the file and the key. docs/tf_checkpoints.md describes the format and the
guarantees.
"""

from raredet.tfcheckpoint.bundle import TensorInfo
from raredet.tfcheckpoint.reader import TFCheckpoint, is_tf_checkpoint, open_checkpoint, resolve_prefix

__all__ = ["TFCheckpoint", "TensorInfo", "is_tf_checkpoint", "open_checkpoint", "resolve_prefix"]
