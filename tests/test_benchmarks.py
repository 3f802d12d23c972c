"""The benchmark scripts: benchmarks/accelerator.py --tiny on this CPU (the
script that measures SGD, LARS and CLARS on a GPU runs end to end, checks
its numerics and writes its figures; the GPU numbers themselves are in the
README), and what benchmarks/trainer_vs_fit.py counts of `fit`."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_accelerator_benchmark_tiny_runs_on_jax_without_tensorflow(tmp_path):
    out = tmp_path / "accelerator.json"
    # TensorFlow made unimportable, as on the GPU machines (JAX, no TensorFlow).
    script = (
        "import runpy, sys\n"
        "class NoTensorFlow:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow':\n"
        "            raise ImportError('no TensorFlow here: ' + name)\n"
        "sys.meta_path.insert(0, NoTensorFlow())\n"
        "sys.argv = ['benchmarks/accelerator.py'] + sys.argv[1:]\n"
        "runpy.run_path('benchmarks/accelerator.py', run_name='__main__')\n"
    )
    cmd = [sys.executable, "-c", script, "--tiny", "--rounds", "1", "--steps", "1", "--json", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["numerics"]["ok"], results["numerics"]
    figures = results["batches"]["8"]
    for name in ("sgd", "lars", "clars", "clars_sub"):
        assert figures[name]["finite"] and figures[name]["images_per_second"] > 0
    assert set(figures["ratios"]) == {"lars_over_sgd", "clars_over_lars", "clars_sub_over_lars"}
    assert "ratios: LARS/SGD" in result.stdout and "numerics" in result.stdout


def test_accelerator_benchmark_refuses_another_backend():
    result = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--tiny"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert result.returncode != 0 and "runs on Keras's JAX backend" in result.stderr


def test_trainer_vs_fit_counts_the_steps_fit_runs():
    """benchmarks/trainer_vs_fit.py times `fit` per `train_function` call and
    counts its optimizer steps: with 29 steps per epoch and executions of 10,
    Keras runs 10, 10, 10 (the third reaches into the next epoch's data) and
    then 10, 10, 8 where the data ends. Counting 29 in fit's second epoch
    (and timing only that epoch, so fit's epoch boundary went untimed) made
    the trainer / fit ratio read 0.92 where it is about 1."""
    import importlib.util

    import keras
    import numpy as np
    import tensorflow as tf

    path = os.path.join(ROOT, "benchmarks", "trainer_vs_fit.py")
    spec = importlib.util.spec_from_file_location("trainer_vs_fit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = np.random.default_rng(0).standard_normal((58 * 4, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=10)
    times = module._ExecutionTimes()
    model.fit(data, epochs=2, steps_per_epoch=29, callbacks=[times], verbose=0)
    assert times.steps == [10, 10, 10, 10, 10, 8]
    assert len(times.seconds) == 6 and all(s > 0 for s in times.seconds)
