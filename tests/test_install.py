"""What a user installs: the library without TensorFlow on JAX and PyTorch,
the trainer's entry point quiet, and one line naming the extra when
TensorFlow is missing. Runs on every backend; `make test` runs it from the
wheel (KERAS_LARS_FROM_WHEEL=1) next to keras + jax and keras + torch."""

import importlib.util
import os
import subprocess
import sys
import sysconfig

import keras
import pytest

import keras_lars
import keras_lars_train


def _run(code, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          cwd=os.path.dirname(__file__), timeout=300)


@pytest.mark.skipif(os.environ.get("KERAS_LARS_FROM_WHEEL") != "1", reason="run from the wheel by `make test`")
def test_the_wheel_is_what_runs():
    site = sysconfig.get_paths()["purelib"]
    assert keras_lars.__file__.startswith(site), keras_lars.__file__


def _installed(name):
    return importlib.util.find_spec(name) is not None


# From the wheel, only this venv's backend; elsewhere each one installed.
NON_TF_BACKENDS = [b for b in ("jax", "torch") if _installed(b) and (
    os.environ.get("KERAS_LARS_FROM_WHEEL") != "1" or b == keras.backend.backend())]


@pytest.mark.parametrize("backend", NON_TF_BACKENDS)
def test_the_library_on_jax_or_torch_imports_no_tensorflow(backend):
    result = _run(
        "import sys, numpy as np, keras, keras_lars\n"
        "model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
        "model.compile(optimizer=keras_lars.CLARS(0.1), loss='mse')\n"
        "keras_lars.attach_per_example_norms(model)\n"
        "model.fit(np.ones((4, 3), 'float32'), np.ones((4, 2), 'float32'), verbose=0)\n"
        "print(sorted(m for m in ('tensorflow', 'jax', 'torch') if m in sys.modules))\n",
        KERAS_BACKEND=backend,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr([backend])


def test_trainer_without_tensorflow_names_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(keras_lars_train, "tensorflow_installed", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        keras_lars_train.main(["--help"], prog="keras-lars-train")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "keras-lars-train: error: the trainer needs TensorFlow and TensorFlow Datasets: "
        "pip install 'keras-lars[train]'\n"
    )


def test_trainer_help_prints_no_tensorflow_logging():
    if not keras_lars_train.tensorflow_installed():
        result = _run("import keras_lars_train; keras_lars_train.main(['--help'])")
        assert result.returncode == 2 and "pip install 'keras-lars[train]'" in result.stderr
        return
    result = _run("import keras_lars_train; keras_lars_train.main(['--help'], prog='keras-lars-train')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: keras-lars-train")
    assert result.stderr == ""
    # With TF_CPP_MIN_LOG_LEVEL set, TensorFlow's own logging is the user's choice.
    shown = _run("import keras_lars_train; keras_lars_train.main(['--help'])", TF_CPP_MIN_LOG_LEVEL="0")
    assert shown.returncode == 0 and shown.stderr != ""
