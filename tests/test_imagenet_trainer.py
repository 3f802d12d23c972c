"""The MLPerf ImageNet trainer on a tiny ImageNet in the real ILSVRC2012 layout,
prepared by the real TFDS imagenet2012 builder: input pipeline, loss scaling
over replicas, gradient accumulation, distribution, checkpoints, MLPerf log."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_lars
from ports import free_ports
from tiny_imagenet import validation_labels, write_tiny_imagenet
from keras_lars.train import preprocessing
from keras_lars.train.config import TrainConfig
from keras_lars.train.data import get_builder
from keras_lars.train.distribution import check_batch
from keras_lars.train.input_pipeline import InputPipeline, shard_split
from keras_lars.train.steps import Steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL_IMAGES, TRAIN_PER_CLASS = 12, 16
# resnet8 at 32x32 on the tiny set: a few seconds per run.
SMALL_RUN = ["--model", "resnet8", "--image-size", "32", "--global-batch-size", "32",
             "--lars-opt-base-learning-rate", "4", "--lars-opt-learning-rate-warmup-epochs", "1",
             "--input-benchmark-steps", "2"]


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory):
    """(data_dir, manual_dir, synsets): imagenet2012 prepared by the real
    builder from tars written in the real layout."""
    manual_dir = str(tmp_path_factory.mktemp("manual"))
    data_dir = str(tmp_path_factory.mktemp("tfds_imagenet"))
    synsets, _, _ = write_tiny_imagenet(manual_dir, VAL_IMAGES, TRAIN_PER_CLASS)
    get_builder("imagenet2012", data_dir=data_dir, manual_dir=manual_dir)
    return data_dir, manual_dir, synsets


def _train(tmp_dir, data_dir, *flags, env=None, check=True):
    cmd = [sys.executable, "-m", "train", "--data-dir", data_dir, "--output-dir", str(tmp_dir), *flags]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "CI": "1", **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_tiny_imagenet_prepared_by_the_real_builder(tiny_imagenet):
    data_dir, _, synsets = tiny_imagenet
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    assert type(builder).__module__.endswith("imagenet2012_dataset_builder")
    assert builder.info.splits["train"].num_examples == len(synsets) * TRAIN_PER_CLASS
    assert builder.info.splits["validation"].num_examples == VAL_IMAGES
    assert builder.info.features["label"].num_classes == 1000
    names = builder.info.features["label"].names
    val = {ex["file_name"].decode(): names[ex["label"]] for ex in tfds.as_numpy(builder.as_dataset(split="validation"))}
    expected = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": s for i, s in enumerate(validation_labels(VAL_IMAGES))}
    assert val == expected
    # SkipDecoding keeps the JPEG bytes for the fused decode-and-crop.
    raw = next(iter(builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})))
    assert raw["image"].dtype == tf.string and raw["image"].numpy()[:2] == b"\xff\xd8"


def test_missing_tars_give_a_one_line_error(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "ILSVRC2012_img_val.tar").write_bytes(b"")
    result = _train(tmp_path / "out", str(tmp_path / "tfds"), "--manual-dir", str(tmp_path / "manual"), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "lacks ILSVRC2012_img_train.tar" in last and str(tmp_path / "manual") in last


def test_tpu_without_a_tpu_is_a_one_line_error(tmp_path):
    result = _train(tmp_path / "out", str(tmp_path / "tfds"), "--distribution", "tpu", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m train: error: --distribution tpu: no TPU")


def test_imagenet_preprocessing_matches_the_reference():
    # A constant-colour JPEG: every crop, flip and resize gives colour - means.
    colour = np.array([200, 100, 50], np.uint8)
    jpeg = tf.io.encode_jpeg(np.tile(colour, (60, 90, 1)), quality=100)
    decoded = tf.io.decode_jpeg(jpeg).numpy().astype(np.float32)
    expected = decoded[30, 45] - np.array(preprocessing.IMAGENET_CHANNEL_MEANS)
    train = preprocessing.imagenet_train(jpeg, tf.constant([1, 2], tf.int64), 32).numpy()
    assert train.shape == (32, 32, 3)
    np.testing.assert_allclose(train[16, 16], expected, atol=2)
    # The crop window depends only on the seed: same seed, same image.
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8)[None, :, None], (60, 1, 3))
    ramp_jpeg = tf.io.encode_jpeg(ramp, quality=100)
    a, b, c = (preprocessing.imagenet_train(ramp_jpeg, tf.constant(s, tf.int64), 32).numpy()
               for s in ([1, 2], [1, 2], [3, 4]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Eval: shorter side 60 -> round(32 * 256 / 224) = 37, width 90 -> 56, central 32x32.
    image = tf.io.decode_jpeg(ramp_jpeg)
    resized = tf.image.resize(image, (37, 56)).numpy()[2:34, 12:44] - preprocessing.IMAGENET_CHANNEL_MEANS
    np.testing.assert_allclose(preprocessing.imagenet_eval(ramp_jpeg, 32).numpy(), resized, atol=1e-3)


def test_shards_cover_the_split_once():
    for count in (1, 2, 3, 7):
        slices = [shard_split("validation", 50_000, i, count) for i in range(count)]
        assert sum(size for _, size in slices) == 50_000
        assert max(size for _, size in slices) - min(size for _, size in slices) <= 1
    assert shard_split("validation", 50_000, 1, 3) == ("validation[16666:33333]", 16667)


def test_eval_counts_every_image_once_over_replicas(tiny_imagenet, mirrored_strategy):
    data_dir, _, synsets = tiny_imagenet
    pipeline = InputPipeline("imagenet2012", 8, image_size=32, data_dir=data_dir)
    assert pipeline.eval_steps == 2  # 12 images, micro-batch 8: 4 padded
    dataset = mirrored_strategy.distribute_datasets_from_function(pipeline.eval_dataset_fn())
    labels, weights = [], []
    iterator = iter(dataset)  # repeats: one eval is eval_steps steps
    for _ in range(pipeline.eval_steps):
        _, label, weight = next(iterator)
        for replica_label, replica_weight in zip(mirrored_strategy.experimental_local_results(label),
                                                 mirrored_strategy.experimental_local_results(weight)):
            labels += list(replica_label.numpy())
            weights += list(replica_weight.numpy())
    assert len(weights) == 16 and sum(weights) == VAL_IMAGES
    names = tfds.builder("imagenet2012", data_dir=data_dir).info.features["label"].names
    real = sorted(names[x] for x, w in zip(labels, weights) if w == 1)
    assert real == sorted(validation_labels(VAL_IMAGES))


def test_train_epochs_are_deterministic_and_resumable(tiny_imagenet):
    data_dir, _, _ = tiny_imagenet
    pipeline = InputPipeline("imagenet2012", 16, image_size=32, data_dir=data_dir, seed=3)
    context = tf.distribute.InputContext()

    def batches(epoch, skip=0):
        return [(x.numpy(), y.numpy()) for x, y in pipeline.train_dataset_fn(epoch, skip)(context)]

    first, again, resumed, other = batches(1), batches(1), batches(1, skip=3), batches(2)
    assert len(first) == 12  # 192 images / 16
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert len(resumed) == 9
    for (x1, y1), (x2, y2) in zip(first[3:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][1], other[0][1])  # another epoch, another order


def _no_bn_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, use_bias=False)(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))


def _steps_after(strategy, optimizer_cls, batches, accumulation=1, xla=False, micro_batch=16, loss_scale=False):
    """Weights, loss and layer statistics after one optimizer step on
    `batches` (a list of (x, y) micro-batches)."""
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = _no_bn_model()
        optimizer = optimizer_cls(learning_rate=0.5, weight_decay=1e-3, jit_compile=False, layer_statistics=True)
        if loss_scale:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer)
        if optimizer_cls is keras_lars.CLARS:
            keras_lars.attach_per_example_norms(model)
        optimizer.build(model.trainable_variables)
    steps = Steps(model, strategy, micro_batch, 0.1, xla, accumulation)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    dataset = strategy.distribute_datasets_from_function(
        lambda c: tf.data.Dataset.from_tensor_slices((x, y)).batch(c.get_per_replica_batch_size(micro_batch)))
    loss = float(steps.train_loop(iter(dataset), 1)[0])
    statistics = keras_lars.layer_statistics.read(model.optimizer).values
    return [v.numpy() for v in model.trainable_variables], loss, statistics


@pytest.mark.parametrize("optimizer_cls", [keras_lars.LARS, keras_lars.CLARS])
def test_global_batch_loss_scaling_gives_the_single_replica_step(mirrored_strategy, optimizer_cls):
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(16, 8, 8, 3)).astype(np.float32), rng.integers(0, 5, 16).astype(np.int32))
    single, single_loss, single_statistics = _steps_after(tf.distribute.get_strategy(), optimizer_cls, [batch])
    two, two_loss, two_statistics = _steps_after(mirrored_strategy, optimizer_cls, [batch])
    xla, _, xla_statistics = _steps_after(mirrored_strategy, optimizer_cls, [batch], xla=True)
    # Two micro-batches of 8 accumulated: the same step as one batch of 16.
    halves = [(batch[0][:8], batch[1][:8]), (batch[0][8:], batch[1][8:])]
    accumulated, _, accumulated_statistics = _steps_after(mirrored_strategy, optimizer_cls, halves,
                                                          accumulation=2, micro_batch=8)
    # Dynamic loss scaling (as --dtype mixed_float16) divides out exactly.
    scaled, _, scaled_statistics = _steps_after(mirrored_strategy, optimizer_cls, halves, accumulation=2,
                                                micro_batch=8, loss_scale=True)
    # The layer statistics too (CLARS's n_k and M_k over all 16 examples).
    for statistics in (two_statistics, xla_statistics, accumulated_statistics, scaled_statistics):
        for name, values in single_statistics.items():
            np.testing.assert_allclose(statistics[name], values, rtol=1e-5, err_msg=name)
    # An independent reference: the mean label-smoothed loss of the batch.
    keras.utils.set_random_seed(7)
    probs = _no_bn_model()(batch[0])
    expected_loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(tf.one_hot(batch[1], 5), probs)
    assert single_loss == pytest.approx(float(expected_loss), rel=1e-5)
    assert two_loss == pytest.approx(single_loss, rel=1e-5)
    initial = [v.numpy() for v in _no_bn_model().trainable_variables]
    for s, t, x, a, ls, w0 in zip(single, two, xla, accumulated, scaled, initial):
        assert not np.allclose(s, w0)
        np.testing.assert_allclose(ls, s, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(t, s, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(x, s, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a, s, rtol=1e-5, atol=1e-7)


def test_batch_must_split_over_replicas(mirrored_strategy):
    check_batch(32, 2, mirrored_strategy)
    with pytest.raises(ValueError, match="micro-batches of 15 examples, which do not split evenly over 2"):
        check_batch(30, 2, mirrored_strategy)
    with pytest.raises(ValueError, match="--global-batch-size must be a multiple of --gradient-accumulation"):
        TrainConfig(global_batch_size=30, gradient_accumulation_steps=4)


def test_mlperf_defaults_by_global_batch():
    assert (TrainConfig(global_batch_size=4096).lars_opt_base_learning_rate,
            TrainConfig(global_batch_size=4096).lars_opt_learning_rate_warmup_epochs) == (10.0, 5.0)
    assert TrainConfig(global_batch_size=16384).lars_opt_base_learning_rate == 25.0
    big = TrainConfig(global_batch_size=32768, epochs=60)
    assert (big.lars_opt_base_learning_rate, big.lars_opt_learning_rate_warmup_epochs) == (31.2, 25.0)
    # Accumulation: the defaults follow the effective (global) batch.
    assert TrainConfig(global_batch_size=16384, gradient_accumulation_steps=4).lars_opt_base_learning_rate == 25.0
    assert TrainConfig(global_batch_size=4096, lars_opt_base_learning_rate=17).lars_opt_base_learning_rate == 17


@pytest.mark.slow
def test_resnet50_short_run_passes_mlperf_compliance_but_the_target(tiny_imagenet, tmp_path):
    data_dir, _, _ = tiny_imagenet
    out = tmp_path / "run"
    _train(out, data_dir, "--image-size", "32", "--global-batch-size", "32", "--epochs", "2",
           "--steps-per-epoch", "3", "--lars-opt-learning-rate-warmup-epochs", "1", "--eval-every-epochs", "1",
           "--zero-init-residual")
    summary = _summary(out)
    assert summary["trainable_parameters"] == 25_557_032 and summary["config"]["model"] == "resnet50"
    assert [e["examples"] for e in summary["evals"]] == [VAL_IMAGES, VAL_IMAGES]
    assert not summary["target_reached"]
    checker = subprocess.run(
        [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training", "--ruleset", "4.0.0",
         "--log_output", str(tmp_path / "checker.log"), str(out / "mlperf.log")],
        capture_output=True, text=True, timeout=120)
    lines = [line for line in (checker.stdout + checker.stderr).splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert "closed_resnet_lars.yaml" in checker.stdout + checker.stderr
    assert lines == ["WARNING -  Failed checks for eval_accuracy : v['value'] >= 0.7590 and v['value'] < 1.0",
                     "ERROR - FAILED"], checker.stdout + checker.stderr
    log = [json.loads(line[len(":::MLLOG "):]) for line in (out / "mlperf.log").read_text().splitlines()]
    keys = [entry["key"] for entry in log]
    for key in ("init_start", "init_stop", "run_start", "run_stop", "block_start", "block_stop", "eval_start",
                "eval_stop", "eval_accuracy", "global_batch_size", "train_samples", "eval_samples",
                "gradient_accumulation_steps", "opt_name", "lars_opt_base_learning_rate", "lars_opt_end_learning_rate",
                "lars_opt_learning_rate_decay_poly_power", "lars_opt_learning_rate_decay_steps",
                "lars_opt_learning_rate_warmup_epochs", "lars_opt_momentum", "lars_opt_weight_decay", "lars_epsilon"):
        assert key in keys, key
    value = {entry["key"]: entry["value"] for entry in log}
    # 2 epochs x 3 steps, warmup 3 steps: decay over 6 - 3 + 1 = 4 steps.
    assert value["lars_opt_learning_rate_decay_steps"] == 4 and value["train_samples"] == 192
    assert value["lars_opt_base_learning_rate"] == 10.0  # MLPerf default below 16K
    blocks = [e["metadata"] for e in log if e["key"] == "block_start"]
    assert blocks == [{**b, "first_epoch_num": n, "epoch_count": 1} for b, n in zip(blocks, (1, 2))]


@pytest.mark.slow
def test_stops_at_the_target_and_restart_does_nothing_more(tiny_imagenet, tmp_path):
    data_dir, _, _ = tiny_imagenet
    out = tmp_path / "run"
    flags = [*SMALL_RUN, "--epochs", "6", "--eval-every-epochs", "2", "--eval-offset-epochs", "1",
             "--target-accuracy", "0.3"]
    _train(out, data_dir, *flags)
    summary = _summary(out)
    evals = summary["evals"]
    # Evaluated after epochs 1, 3, 5 (offset 1); stopped at the first >= 0.3.
    assert [e["epoch"] for e in evals] == [1, 3, 5][: len(evals)]
    assert summary["target_reached"] and evals[-1]["top1"] >= 0.3
    assert all(e["top1"] < 0.3 for e in evals[:-1])
    assert summary["epochs_done"] == evals[-1]["epoch"] < 6
    assert '"status": "success"' in (out / "mlperf.log").read_text().splitlines()[-1]
    again = _train(out, data_dir, *flags)
    assert "resuming from" in again.stdout and _summary(out)["optimizer_steps"] == summary["optimizer_steps"]


def _final_weights(out):
    reader = tf.train.load_checkpoint(str(out / "checkpoints"))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
    assert len(names) > 20
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tiny_imagenet, tmp_path):
    data_dir, _, _ = tiny_imagenet
    # 6 steps an epoch; the killed run also uses loops of 3 steps (cut at the
    # checkpoints every 4 steps), the uninterrupted one loops of 1.
    flags = ["--model", "resnet20", "--image-size", "48", "--global-batch-size", "32", "--epochs", "3",
             "--lars-opt-base-learning-rate", "4", "--lars-opt-learning-rate-warmup-epochs", "1",
             "--checkpoint-every-steps", "4", "--eval-every-epochs", "3", "--deterministic",
             "--input-benchmark-steps", "0", "--optimizer", "clars", "--gradient-accumulation-steps", "2"]
    _train(tmp_path / "whole", data_dir, *flags, "--steps-per-loop", "1")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train", "--data-dir", data_dir, "--output-dir", str(out), *flags,
           "--steps-per-loop", "3"]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "CI": "1"})
    deadline = time.time() + 300
    # Steps 7-12 are epoch 2: kill as soon as step 8's checkpoint appears.
    while not (out / "checkpoints" / "ckpt-8.index").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    # A save killed before its index update leaves step 6's (epoch 1's end);
    # else step 8, mid-epoch 2.
    assert int(latest.rsplit("-", 1)[1]) in (6, 8)
    tf.train.load_checkpoint(latest)  # loads
    resumed = _train(out, data_dir, *flags, "--steps-per-loop", "3")
    assert "resuming from" in resumed.stdout
    assert _summary(out)["optimizer_steps"] == _summary(tmp_path / "whole")["optimizer_steps"] == 18
    whole, restarted = _final_weights(tmp_path / "whole"), _final_weights(out)
    assert whole.keys() == restarted.keys()
    for name in whole:
        np.testing.assert_array_equal(restarted[name], whole[name], err_msg=name)
    assert _summary(out)["weights_sha256"] == _summary(tmp_path / "whole")["weights_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer_flags", [["--optimizer", "lars"],
                                             ["--optimizer", "clars", "--gradient-accumulation-steps", "2"]])
def test_loops_of_one_and_of_n_steps_end_identical(tiny_imagenet, tmp_path, optimizer_flags):
    data_dir, _, _ = tiny_imagenet
    flags = [*SMALL_RUN, "--epochs", "2", "--eval-every-epochs", "1", "--deterministic",
             "--checkpoint-every-steps", "5", "--layer-statistics-every", "2", *optimizer_flags]
    runs = {}
    for steps_per_loop in (1, 4):  # 4 divides neither the epoch (6 steps) nor the checkpoint interval
        out = tmp_path / f"loop{steps_per_loop}"
        _train(out, data_dir, *flags, "--steps-per-loop", str(steps_per_loop))
        runs[steps_per_loop] = _summary(out)
    one, four = runs[1], runs[4]
    assert one["steps_per_loop"] == 1 and four["steps_per_loop"] == 4
    assert one["optimizer_steps"] == four["optimizer_steps"] == 12
    assert four["weights_sha256"] == one["weights_sha256"]
    assert four["train_loss_by_epoch"] == one["train_loss_by_epoch"]
    assert four["evals"] == one["evals"]
    assert sorted(os.listdir(tmp_path / "loop4" / "checkpoints")) == sorted(
        os.listdir(tmp_path / "loop1" / "checkpoints"))
    statistics = [(tmp_path / f"loop{n}" / "layer_statistics.csv").read_text() for n in (1, 4)]
    assert statistics[0] == statistics[1] and len(statistics[0].splitlines()) == 1 + 6 * 23  # ResNet-8: 23 variables


def _mlperf_entries(out):
    return [json.loads(line[len(":::MLLOG "):]) for line in (out / "mlperf.log").read_text().splitlines()]


def _checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(tiny_imagenet, tmp_path):
    data_dir, _, _ = tiny_imagenet
    out = tmp_path / "run"
    # SGD warming up to LR 1e8: finite for the first steps, then not; loops of 3 steps.
    flags = [*SMALL_RUN, "--optimizer", "sgd", "--epochs", "3", "--lars-opt-base-learning-rate", "1e8",
             "--checkpoint-every-steps", "3", "--steps-per-loop", "3", "--eval-every-epochs", "1"]
    result = _train(out, data_dir, *flags, check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m train: error: training diverged: "), last
    assert "lower --lars-opt-base-learning-rate (now 1e+08)" in last
    summary = _summary(out)
    assert summary["status"] == "DivergenceError" and summary["stop_reason"] in last
    diverged_at = summary["optimizer_steps"]
    assert f"optimizer step {diverged_at}" in last
    run_stop = [e for e in _mlperf_entries(out) if e["key"] == "run_stop"]
    assert run_stop[-1]["metadata"]["status"] == "aborted"
    # Every checkpoint left is finite; the latest is the last step before the divergence was seen.
    checkpoints = sorted((out / "checkpoints").glob("ckpt-*.index"))
    assert checkpoints
    for index in checkpoints:
        for name, value in _checkpoint_values(str(index)[: -len(".index")]).items():
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), (index.name, name)
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    latest_step = int(latest.rsplit("-", 1)[1])
    assert latest_step >= 1 and latest_step < diverged_at and f"({latest})" in last
    # The same command resumes from that checkpoint (and, at this LR, diverges again).
    resumed = _train(out, data_dir, *flags, check=False)
    assert f"resuming from {latest}" in resumed.stdout
    assert resumed.returncode == 3 and _summary(out)["optimizer_steps"] > latest_step


@pytest.mark.slow
def test_skipped_float16_steps_do_not_trip_the_guard(tiny_imagenet, tmp_path):
    data_dir, _, _ = tiny_imagenet
    out = tmp_path / "run"
    # A loss scale of 1e30 overflows every float16 gradient: each step is
    # skipped (weights untouched, the scale halved), which is not divergence.
    _train(out, data_dir, *SMALL_RUN, "--epochs", "1", "--steps-per-epoch", "4", "--steps-per-loop", "2",
           "--dtype", "mixed_float16", "--initial-loss-scale", "1e30")
    summary = _summary(out)
    assert summary["status"] == "completed" and summary["optimizer_steps"] == 4
    state = _checkpoint_values(tf.train.latest_checkpoint(str(out / "checkpoints")))
    assert state["steps_done/.ATTRIBUTES/VARIABLE_VALUE"] == 4
    assert state["optimizer/inner_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 0  # all skipped
    assert state["optimizer/dynamic_scale/.ATTRIBUTES/VARIABLE_VALUE"] == pytest.approx(1e30 / 2**4, rel=1e-6)


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpus(tiny_imagenet, tmp_path):
    data_dir, _, _ = tiny_imagenet
    out = tmp_path / "run"
    _train(out, data_dir, *SMALL_RUN, "--epochs", "2", "--eval-every-epochs", "1", "--distribution", "mirrored",
           "--cpu-devices", "2", "--dtype", "mixed_bfloat16")
    summary = _summary(out)
    assert summary["replicas"] == 2 and summary["strategy"] == "MirroredStrategy"
    assert summary["dtype_policy"] == "mixed_bfloat16"
    assert [e["examples"] for e in summary["evals"]] == [VAL_IMAGES, VAL_IMAGES]
    assert summary["train_loss_by_epoch"]["2"] < summary["train_loss_by_epoch"]["1"]


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_end_identical(tiny_imagenet, tmp_path):
    data_dir, _, _ = tiny_imagenet
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    out = tmp_path / "run"
    flags = [*SMALL_RUN, "--epochs", "2", "--eval-every-epochs", "1", "--distribution", "multi_worker_mirrored",
             "--optimizer", "clars", "--dtype", "mixed_float16"]
    cmd = [sys.executable, "-m", "train", "--data-dir", data_dir, "--output-dir", str(out), *flags]
    processes = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={
            **os.environ, "CI": "1",
            "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    chief, other = _summary(out), _summary(out / "workers" / "1")
    assert chief["replicas"] == 2 and chief["strategy"] == "CollectiveAllReduceStrategy"  # = MultiWorkerMirrored
    assert chief["dtype_policy"] == "mixed_float16"
    assert [e["examples"] for e in chief["evals"]] == [VAL_IMAGES, VAL_IMAGES]
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert chief["evals"] == other["evals"]
    assert (out / "mlperf.log").exists() and not (out / "workers" / "1" / "mlperf.log").exists()
