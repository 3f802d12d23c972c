"""The trainer's entry point, `keras-lars-train` (and `python -m train` from
a checkout): checks that TensorFlow is installed (`pip install
'keras-lars[train]'`), imports it without its C++ start-up logging, then runs
`keras_lars.train.cli.main`.

A top-level module, not part of `keras_lars`: importing `keras_lars` imports
Keras, and with it TensorFlow, before anything inside the package could hold
the logging back.

TensorFlow 2.21 writes its start-up lines (oneDNN, CUDA drivers, CPU
features, a failed cuInit on a machine without a GPU) from C++ before its
logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not hold them back.
Unless the user set TF_CPP_MIN_LOG_LEVEL (then they see what they asked
for), standard error is held in a file while TensorFlow loads and finds its
devices, and written out only if that fails; TF_CPP_MIN_LOG_LEVEL is then
set to 1, which holds back TensorFlow's later INFO lines but not its
warnings and errors.
"""

import contextlib
import importlib.util
import os
import sys
import tempfile

#: The line printed when TensorFlow is missing (after "PROG: error: ").
MISSING = "the trainer needs TensorFlow and TensorFlow Datasets: pip install 'keras-lars[train]'"


def tensorflow_installed():
    """Whether `import tensorflow` can work (a bool), without importing it."""
    return importlib.util.find_spec("tensorflow") is not None


@contextlib.contextmanager
def _stderr_held():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow():
    """Imports TensorFlow (and Keras on it) and lists its devices, quietly
    unless TF_CPP_MIN_LOG_LEVEL is set. Returns the `tensorflow` module.

    Raises:
        ModuleNotFoundError: when TensorFlow is not installed.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:  # TensorFlow's later C++ INFO lines (e.g. tf.data's buffer sizes); warnings and errors stay
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    with _stderr_held() if quiet else contextlib.nullcontext():
        import keras  # noqa: F401 (Keras on TensorFlow loads it here, under the same hold)
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


def main(argv=None, prog="keras-lars-train"):
    """Runs the trainer's command line (see `keras_lars.train.cli`);
    without TensorFlow, one line naming the extra to install, exit status 2."""
    if not tensorflow_installed():
        print(f"{prog}: error: {MISSING}", file=sys.stderr)
        sys.exit(2)
    import_tensorflow()
    from keras_lars.train.cli import main as train_main

    train_main(argv, prog=prog)

