"""The verbs of the `raredet` command, one module each: load the config, build, run.

`config` (`config check`, `config show`), `stats`, `train`, `evaluate` (`eval`), `predict`, `export`,
`demo` and `inspect_checkpoint` (`inspect-checkpoint`); `evaluate_detections` (`evaluate-detections`),
`compare` and `synth`, which need no pipeline.config, are thin too. `trained` is the one loader of a
trained model (and the one EMA-or-raw weights rule) that `eval`, `predict` and `export` share. This floor
sits above `builders`: the library packages (`config`, `data`, `modeling`, `losses`, `engine`,
`evaluation`) never import `builders` or `commands`, and `cli.py` imports nothing else.
"""
