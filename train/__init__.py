"""`python -m train` from a checkout: the trainer installed as
`keras_lars.train` (console script `keras-lars-train`). This directory is not
installed, so no top-level `train` module reaches site-packages."""
