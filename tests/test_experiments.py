"""The experiments package: its pieces against independent references, and
the `--quick` suite end to end (results files, plots, caching)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import common, gradient_variance, trust_ratios

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="method must be one of.*'adam'"):
        common.RunSpec(method="adam", batch_size=128, learning_rate=0.1, epochs=1)
    with pytest.raises(ValueError, match="batch_size.*Received: 0"):
        common.RunSpec(method="lars", batch_size=0, learning_rate=0.1, epochs=1)
    with pytest.raises(ValueError, match="learning_rate must be > 0. Received: -1"):
        common.RunSpec(method="lars", batch_size=128, learning_rate=-1, epochs=1)
    with pytest.raises(ValueError, match="model must be one of"):
        common.RunSpec(method="lars", batch_size=128, learning_rate=0.1, epochs=1, model="vgg")


def test_run_ids_differ_in_every_field():
    base = common.RunSpec(method="lars", batch_size=128, learning_rate=0.1, epochs=1)
    ids = {base.run_id()}
    for change in (dict(seed=1), dict(eta=0.01), dict(warmup_epochs=1.0), dict(weight_decay=0.0), dict(nesterov=True)):
        ids.add(common.RunSpec(**{**base.__dict__, **change}).run_id())
    assert len(ids) == 6


def test_sgd_baseline_is_momentum_sgd_with_coupled_weight_decay():
    """The "sgd" method (LARS with no layer adaptation) against NumPy:
    v = m v + lr (g + beta w), w -= v, with beta = 0 for the bias."""
    spec = common.RunSpec(method="sgd", batch_size=8, learning_rate=0.5, epochs=1, weight_decay=0.01, power=0)
    optimizer = common.build_optimizer(spec)
    rng = np.random.default_rng(0)
    kernel = keras.Variable(rng.normal(size=(3, 2)).astype("float32"))
    bias = keras.Variable(rng.normal(size=(2,)).astype("float32"))
    w = [kernel.numpy().astype(np.float64), bias.numpy().astype(np.float64)]
    v = [np.zeros_like(x) for x in w]
    for _ in range(3):
        grads = [rng.normal(size=x.shape).astype("float32") for x in w]
        optimizer.apply(grads, [kernel, bias])
        for i, beta in enumerate((0.01, 0.0)):
            v[i] = 0.9 * v[i] + 0.5 * (grads[i] + beta * w[i])
            w[i] = w[i] - v[i]
    np.testing.assert_allclose(kernel.numpy(), w[0], rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), w[1], rtol=1e-5)


def test_gradient_variance_probe_matches_brute_force():
    """M_k from the probe against per-example gradients taken one example at
    a time with GradientTape, on a small sigmoid net."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(5, activation="sigmoid", name="a"),
        keras.layers.Dense(3, activation="softmax", name="b"),
    ])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 6)).astype("float32")
    y = rng.integers(0, 3, size=12).astype("int32")
    probe = gradient_variance.GradientVarianceProbe(x, y, every_n_steps=1, steps_per_epoch=1, chunk=5)
    probe.set_model(model)
    probe._record()
    measured = probe.records[0]["gradient_variance_factor"]

    loss = keras.losses.SparseCategoricalCrossentropy()
    kernels = [model.get_layer("a").kernel, model.get_layer("b").kernel]
    per_example = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = loss(y[i:i + 1], model(x[i:i + 1]))
        per_example.append([g.numpy().astype(np.float64) for g in tape.gradient(value, kernels)])
    for k in range(2):
        grads = np.stack([p[k] for p in per_example])
        expected = np.mean(np.sum(grads**2, axis=(1, 2))) / np.sum(np.mean(grads, axis=0) ** 2)
        np.testing.assert_allclose(measured[k], expected, rtol=1e-4)
    assert all(m >= 1 for m in measured)  # Jensen


def test_record_steps_are_log_spaced_and_end_at_last():
    assert trust_ratios.record_steps(100) == [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100]
    assert trust_ratios.record_steps(468)[-4:] == [150, 200, 300, 468]
    assert trust_ratios.record_steps(1) == [1]


def _trained_files(out):
    return {p: os.path.getmtime(p) for p in sorted(str(q) for q in out.rglob("runs/*.json"))}


@pytest.mark.slow
def test_quick_suite_end_to_end_and_cached(tmp_path):
    """`python -m experiments --quick`: every claim writes results.json and its
    PNGs; a second invocation trains nothing (the run files are untouched)
    and only redraws the plots."""
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "experiments", "--quick", "--out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    expected = {
        "batch_scaling": ["accuracy_vs_batch.png", "accuracy_vs_lr.png"],
        "warmup": ["top1_per_epoch.png"],
        "longer_training": ["accuracy_vs_epochs.png"],
        "gradient_variance": ["gradient_variance.png"],
        "trust_ratios": ["ratio_iteration_1.png", "ratio_over_training.png"],
    }
    for claim, pngs in expected.items():
        results = json.loads((out / claim / "results.json").read_text())
        assert results
        for png in pngs:
            assert (out / claim / png).read_bytes()[:4] == b"\x89PNG"
    scaling = json.loads((out / "batch_scaling" / "results.json").read_text())
    for method in common.METHODS:
        for entry in scaling["methods"][method].values():
            assert 0 <= entry["best_test_top1"] <= 1
            assert entry["best_c"] in [p["c"] for p in entry["points"]]
    variance = json.loads((out / "gradient_variance" / "results.json").read_text())
    for entry in variance["models"].values():
        assert len(entry["records"]) >= 2 and all(m >= 1 for r in entry["records"] for m in r["gradient_variance_factor"])
    ratios = json.loads((out / "trust_ratios" / "results.json").read_text())
    low, high = ratios["models"]["resnet8"]["kernel_ratio_range_iteration_1"]
    assert 0 < low < high
    trained = _trained_files(out)
    for png in (out / "warmup").glob("*.png"):
        png.unlink()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _trained_files(out) == trained
    assert "top-1" not in second.stdout  # no run trained
    assert (out / "warmup" / "top1_per_epoch.png").exists()
