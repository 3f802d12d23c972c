"""The trainer end to end on real Fashion-MNIST, its data path and its models."""

import csv
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_lars
from keras_lars.train.config import TrainConfig, parse_args
from keras_lars.train.loop.clock import WALL_PARTS
from keras_lars.train.loop.controller import loop_lengths
from keras_lars.train.data import DEBIAN_FASHION_MNIST_DIR
from keras_lars.train.errors import DataError, UsageError
from keras_lars.train.input_pipeline import InputPipeline
from keras_lars.train.models import build_model, cifar_resnet, resnet50_v15
from keras_lars.train.runner import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    count, rows, cols = np.frombuffer(data[4:16], ">u4")
    return np.frombuffer(data[16:], np.uint8).reshape(count, rows, cols)


def test_fashion_mnist_prepared_by_the_real_builder(fashion_mnist_dir):
    builder = tfds.builder("fashion_mnist", data_dir=fashion_mnist_dir)
    assert builder.is_prepared()
    assert type(builder).__name__ == "FashionMNIST"
    assert builder.info.splits["train"].num_examples == 60_000
    assert builder.info.splits["test"].num_examples == 10_000
    # Every test image, in order, equals the Debian IDX file parsed independently.
    expected = _idx_images(os.path.join(DEBIAN_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    got = np.stack([ex["image"][..., 0] for ex in tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False))])
    assert got.shape == expected.shape
    # TFDS may write examples in a shuffled order: compare as multisets of images.
    key = lambda a: sorted(x.tobytes() for x in a)  # noqa: E731
    assert key(got) == key(expected)


def test_processes_preparing_one_data_dir_at_once_both_get_it(fashion_mnist_preparers):
    # conftest.py prepares the tests' data dir in two processes at once (as an
    # experiment's pool, or the workers of a multi-worker run on one host):
    # one prepares it, the other waits for it; both read the prepared splits.
    assert len(fashion_mnist_preparers) == 2
    for process in fashion_mnist_preparers:
        assert process["returncode"] == 0, process["stderr"]
        assert process["stdout"].split()[-2:] == ["60000", "10000"]


def test_eval_keeps_every_example_and_train_batches_are_full(fashion_mnist_dir):
    pipeline = InputPipeline("fashion_mnist", 3000, data_dir=fashion_mnist_dir)
    assert pipeline.info.eval_examples == 10_000 and pipeline.info.input_shape == (28, 28, 1)
    context = tf.distribute.InputContext()
    assert pipeline.eval_steps == 4
    # The dataset repeats (one iterator serves every eval): each run of
    # eval_steps batches is the whole split once, the last batch padded with weight 0.
    passes = list(pipeline.eval_dataset_fn()(context).take(2 * pipeline.eval_steps))
    for one in (passes[:4], passes[4:]):
        assert float(sum(np.sum(w) for _, _, w in one)) == 10_000
        assert float(np.sum(one[-1][2])) == 10_000 - 3 * 3000
    for a, b in zip(passes[:4], passes[4:]):
        assert all(np.array_equal(u, v) for u, v in zip(a, b))
    x, y = next(iter(pipeline.train_dataset_fn(0)(context)))
    assert x.shape == (3000, 28, 28, 1) and y.shape == (3000,)
    assert abs(float(np.mean(x))) < 0.1 and abs(float(np.std(x)) - 1.0) < 0.1


@pytest.mark.slow
def test_trainer_end_to_end(fashion_mnist_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "--dataset", "fashion_mnist", "--data-dir", fashion_mnist_dir,
           "--output-dir", str(out), "--model", "resnet8", "--global-batch-size", "512", "--epochs", "2",
           "--steps-per-epoch", "20", "--lars-opt-base-learning-rate", "6",
           "--lars-opt-learning-rate-warmup-epochs", "0.5", "--label-smoothing", "0", "--eval-every-epochs", "1"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "CI": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["optimizer"] == "lars" and summary["config"]["global_batch_size"] == 512
    assert summary["steps_per_epoch"] == 20 and summary["dataset"]["eval_examples"] == 10_000
    assert [e["epoch"] for e in summary["evals"]] == [1, 2]
    assert all(e["examples"] == 10_000 for e in summary["evals"])
    # 40 LARS steps on real images (measured: test top-1 0.27 then 0.35, train
    # loss 2.02 -> 1.54); an optimizer that did not train would stay at 10% and ~2.3.
    losses = summary["train_loss_by_epoch"]
    assert summary["final_top1"] > 0.25, summary["evals"]
    assert losses["2"] < losses["1"] - 0.3, losses
    assert summary["best_top1"] >= summary["final_top1"]
    assert summary["train_images_per_second"] > 0 and summary["input_images_per_second"] > 0
    # The wall time by part adds up to the run's, with at most 5% unattributed.
    wall = summary["wall_time"]
    assert list(wall) == ["setup", *WALL_PARTS, "other"]
    assert sum(wall.values()) == pytest.approx(summary["wall_seconds"])
    assert all(wall[part] >= 0 for part in wall if part != "other"), wall
    assert min(wall["steps"], wall["first_loop_steps"], wall["first_loop_compile"], wall["evals"]) > 0, wall
    assert abs(wall["other"]) < 0.05 * summary["wall_seconds"], wall
    # Learning rate at the end of each epoch against the schedule's formula
    # (warmup 10 steps, decay over 40 - 10 + 1 = 31 steps, end LR 1e-4).
    lr_at = lambda t: (6 - 1e-4) * (1 - min(t - 10, 31) / 31) ** 2 + 1e-4  # noqa: E731
    assert list(summary["learning_rate_by_epoch"].values()) == pytest.approx([lr_at(20), lr_at(40)], rel=1e-4)
    events = [f for _, _, files in os.walk(out / "tensorboard") for f in files if "tfevents" in f]
    assert events
    assert "eval top-1" in result.stdout


def _cli_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_rejects_bad_values(capsys):
    assert _cli_error(capsys, "--lars-opt-learning-rate-warmup-epochs", "20", "--epochs", "8") == (
        "keras-lars-train: error: --lars-opt-learning-rate-warmup-epochs must be a float in [0, --epochs=8]. "
        "Received: 20.0")
    # A default that does not fit the run: the error says so and names the flag.
    assert _cli_error(capsys, "--epochs", "1") == (
        "keras-lars-train: error: --lars-opt-learning-rate-warmup-epochs defaults to 5 for --global-batch-size "
        "4096 (the MLPerf reference's), more than --epochs 1: pass --lars-opt-learning-rate-warmup-epochs with a "
        "value in [0, 1], or more --epochs.")
    assert "--model: Unknown model 'resnet21'. Accepted: 'resnet50'" in _cli_error(capsys, "--model", "resnet21")
    assert _cli_error(capsys, "--eta", "inf").endswith("--eta must be a finite float > 0. Received: inf")
    assert _cli_error(capsys, "--lars-opt-base-learning-rate", "nan").endswith("Received: nan")
    assert "--steps-per-loop must be an int >= 0" in _cli_error(capsys, "--steps-per-loop", "-1")
    assert "invalid choice: 'adam'" in _cli_error(capsys, "--optimizer", "adam")
    assert _cli_error(capsys, "--optimizer", "sgd", "--layer-statistics-every", "5").endswith(
        "--layer-statistics-every must be 0 with --optimizer sgd (layer statistics are LARS's and CLARS's). "
        "Received: 5")
    # CLARS needs no warmup, so its default fits one epoch.
    assert parse_args(["--epochs", "1", "--optimizer", "clars"]).lars_opt_learning_rate_warmup_epochs == 0


def test_target_accuracy_is_mlperfs_on_imagenet_only():
    assert TrainConfig().target_accuracy == 0.759
    assert TrainConfig(dataset="fashion_mnist", model="resnet8").target_accuracy is None
    assert TrainConfig(dataset="fashion_mnist", model="resnet8", target_accuracy=0.9).target_accuracy == 0.9


def test_loop_lengths_end_at_epochs_and_checkpoints():
    assert loop_lengths(0, 10, 4) == [4, 4, 2]
    assert loop_lengths(0, 10, 1) == [1] * 10
    # Checkpoints every 3 steps cut the loops; a resumed run cuts the same way.
    assert loop_lengths(0, 10, 4, 3) == [3, 3, 3, 1]
    assert loop_lengths(6, 10, 4, 3) == [3, 1]
    assert loop_lengths(7, 10, 100, 3) == [2, 1]
    assert loop_lengths(5, 5, 4) == []
    assert loop_lengths(0, 10, 4, 3, 5) == [3, 2, 1, 3, 1]  # checkpoints and layer statistics
    assert loop_lengths(0, 10, 4, 0, 5) == [4, 1, 4, 1]


def _small_config(data_dir, out, **overrides):
    flags = dict(dataset="fashion_mnist", model="resnet8", data_dir=data_dir, output_dir=str(out),
                 global_batch_size=256, epochs=1, steps_per_epoch=2, lars_opt_learning_rate_warmup_epochs=0,
                 input_benchmark_steps=0, label_smoothing=0)
    return TrainConfig(**{**flags, **overrides})


def test_flags_that_do_not_fit_the_data_or_machine(fashion_mnist_dir, tmp_path):
    with pytest.raises(UsageError, match=r"^--global-batch-size 70000 is larger than fashion_mnist's 60000 training "
                                         r"examples: use at most 60000\.$"):
        run(_small_config(fashion_mnist_dir, tmp_path / "a", global_batch_size=70_000, steps_per_epoch=0))
    with pytest.raises(UsageError, match=r"^--steps-per-epoch 300 is more than the 234 steps of --global-batch-size "
                                         r"256 in fashion_mnist's 60000 training examples"):
        run(_small_config(fashion_mnist_dir, tmp_path / "b", steps_per_epoch=300))
    with pytest.raises(UsageError, match=r"^--dataset 'fashon_mnist' is not a TFDS dataset: did you mean "
                                         r"fashion_mnist\b"):
        run(_small_config(fashion_mnist_dir, tmp_path / "c", dataset="fashon_mnist"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UsageError, match=rf"^--output-dir {blocker}/run is not writable \(Not a directory\)"):
        run(_small_config(fashion_mnist_dir, blocker / "run"))


def test_cli_usage_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "train", "--dataset", "fashon_mnist", "--model", "resnet8",
                             "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "python -m train: error: --dataset 'fashon_mnist' is not a TFDS dataset")


def test_corrupted_dataset_is_named_and_checkpoints_untouched(fashion_mnist_dir, tmp_path):
    data_dir = tmp_path / "tfds"
    shutil.copytree(fashion_mnist_dir, data_dir)
    out = tmp_path / "run"
    run(_small_config(str(data_dir), out))
    saved = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    (record_file,) = (data_dir / "fashion_mnist").glob("*/fashion_mnist-train.tfrecord-*")
    data = bytearray(record_file.read_bytes())
    for i in range(500_000, 500_016):  # a few bytes inside one record
        data[i] ^= 0xFF
    record_file.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        run(_small_config(str(data_dir), out, epochs=2))
    message = str(error.value)
    assert "\n" not in message
    assert re.match(rf"fashion_mnist's prepared train split is corrupted: {re.escape(str(record_file))} \(corrupted "
                    r"record at \d+\)\. ", message), message
    assert f"Delete {record_file.parent} and run again to prepare it anew" in message
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == saved


def test_installed_trainer_lives_under_keras_lars(tmp_path):
    # Outside the checkout: the console script runs, and no top-level `train` was installed.
    script = os.path.join(os.path.dirname(sys.executable), "keras-lars-train")
    result = subprocess.run([script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("usage: keras-lars-train")
    assert "--steps-per-loop" in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('train'))"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "None"


def test_cli_flags_map_to_config():
    config = parse_args(["--global-batch-size", "4096", "--optimizer", "sgd", "--eta", "0.002"])
    assert config == TrainConfig(global_batch_size=4096, optimizer="sgd", eta=0.002)


def test_resnet50_v15_matches_mlperf():
    model = resnet50_v15()
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == 25_557_032
    assert len(model.trainable_variables) == 161
    # v1.5: the stride-2 sits on the 3x3 conv of a stage's first block.
    assert model.get_layer("stage2_block1_conv1").strides == (1, 1)
    assert model.get_layer("stage2_block1_conv2").strides == (2, 2)
    assert all(not layer.use_bias for layer in model.layers if layer.__class__.__name__ == "Conv2D")
    assert all(layer.momentum == 0.9 and layer.epsilon == 1e-5
               for layer in model.layers if layer.__class__.__name__ == "BatchNormalization")


# Counted by hand from He et al. (2016), Sec. 4.2 (option-A shortcuts); the
# paper gives 0.27M for ResNet-20 and 0.85M for ResNet-56.
@pytest.mark.parametrize("depth,params", [(8, 75_290), (20, 269_722), (56, 853_018)])
def test_cifar_resnets(depth, params):
    model = cifar_resnet(depth, num_classes=10, input_shape=(32, 32, 3))
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == params
    assert build_model(f"resnet{depth}", 10, (28, 28, 1)).name == f"resnet{depth}"


def test_unknown_model_name():
    with pytest.raises(ValueError, match="'resnet21'.*resnet50"):
        build_model("resnet21", 10, (28, 28, 1))


def test_trainer_with_clars(fashion_mnist_dir, tmp_path):
    config = parse_args(["--dataset", "fashion_mnist", "--model", "resnet8", "--data-dir", fashion_mnist_dir,
                         "--output-dir", str(tmp_path), "--optimizer", "clars", "--global-batch-size", "512",
                         "--epochs", "2", "--steps-per-epoch", "10", "--lars-opt-base-learning-rate", "6",
                         "--label-smoothing", "0", "--input-benchmark-steps", "0",
                         "--layer-statistics-every", "4", "--steps-per-loop", "3"])
    assert config.eta == 0.01 and config.lars_opt_learning_rate_warmup_epochs == 0.0  # CLARS: no warmup
    summary = run(config)
    _check_layer_statistics(tmp_path, config)
    losses = summary["train_loss_by_epoch"]
    # 20 CLARS steps from step 0 at LR 6 with no warmup (measured: train loss
    # 2.27 -> 2.18): it trains, slowly at first, as the per-example norms
    # shrink the early steps; no update would stay at ~2.30.
    assert losses[2] < losses[1] - 0.05, losses
    assert summary["evals"][-1]["examples"] == 10_000


def _check_layer_statistics(out, config):
    """The trainer's statistics file: every 4th step (loops of 3 cut there),
    CLARS's trust ratio and local LR consistent with Eq. 5 and the schedule,
    TensorBoard events, and the plot command's PNGs."""
    with open(out / "layer_statistics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) for r in rows}) == [4, 8, 12, 16, 20]
    schedule = keras_lars.schedules.WarmupPolynomialDecay(6.0, 0, 20, end_learning_rate=1e-4)
    adapted = [r for r in rows if r["adapted"] == "1"]
    assert len(adapted) == 5 * 8  # ResNet-8: 7 convolution kernels and the classifier's
    for r in adapted:
        w, n_k, ratio = float(r["weight_norm"]), float(r["mean_per_example_norm"]), float(r["trust_ratio"])
        assert ratio == pytest.approx(0.01 * w / (n_k + 1e-4 * w), rel=1e-5)
        lr = float(schedule(int(r["step"]) - 1))  # the LR of the step's update
        assert float(r["local_learning_rate"]) == pytest.approx(lr * ratio, rel=1e-5)
        assert float(r["gradient_variance_factor"]) > 1 and 0 < float(r["gradient_variance_ratio"]) <= 1
    assert os.listdir(out / "tensorboard" / "layer_statistics")
    result = subprocess.run([sys.executable, "-m", "keras_lars.plots", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(os.listdir(out / "plots"))
    assert names == ["gradient_variance.png", "local_learning_rate.png", "norms_step_4.png"]
    assert all((out / "plots" / n).stat().st_size > 20_000 for n in names)
