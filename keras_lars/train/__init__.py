"""The MLPerf-style ResNet trainer for LARS, CLARS and SGD: `keras-lars-train
--help` (or `python -m train --help` from a checkout). In Python:
`keras_lars.train.runner.run(keras_lars.train.config.TrainConfig(...))`.

`loop/` is the outer loop (a controller, a trainer, an evaluator and the
actions between loops); the modules here are the parts it drives, which
`runner.py` builds: flags (`config`, `cli`), input (`data`,
`input_pipeline`, `preprocessing`), `models`, the device loop (`steps`),
`optimizers`, `checkpoints`, `preemption`, `guard`, `mlperf_log`,
`records`, `distribution`, `errors`."""
