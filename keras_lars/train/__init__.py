"""The MLPerf-style ResNet trainer for LARS, CLARS and SGD: `keras-lars-train
--help` (or `python -m train --help` from a checkout). In Python:
`keras_lars.train.runner.run(keras_lars.train.config.TrainConfig(...))`."""
