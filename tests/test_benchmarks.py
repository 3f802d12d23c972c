"""benchmarks/accelerator.py --tiny on this CPU: the script that measures
SGD, LARS and CLARS on a GPU runs end to end, checks its numerics and
writes its figures (the GPU numbers themselves are in the README)."""

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
