"""The verbs of the `raredet` command, one module each: load the config, build, run.

`config` (`config check`), `stats`, `train`, `evaluate` (`eval`), `predict`, `export` and `demo`;
`trained` is the one loader of a trained model (and the one EMA-or-raw weights rule) that `eval`,
`predict` and `export` share. This floor sits above `builders`: the library packages (`config`, `data`,
`modeling`, `losses`, `engine`, `evaluation`) never import `builders` or `commands`.
`evaluate-detections`, `compare` and `synth` need no pipeline.config and call their library functions
(`evaluation.pipeline`, `evaluation.compare`, `data.synth`) straight from `cli.py`.
"""
