"""Runs one training job as the MLPerf reference does: distributed custom
loop, eval cadence, stop at the target accuracy, checkpoints and resume,
MLPerf log, TensorBoard, JSON summary."""

import dataclasses
import hashlib
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from mlperf_logging.mllog import constants as mlperf

import keras_lars
from train import distribution
from train.checkpoints import Checkpoints
from train.input_pipeline import InputPipeline
from train.mlperf_log import MLPerfLog
from train.models import build_model
from train.steps import Steps


def build_optimizer(config, steps_per_epoch, trainable_variables, xla=False, dtype_policy="float32"):
    """The optimizer and its MLPerf schedule (linear warmup from 0, then
    polynomial decay to the end LR).

    Args:
        config: `TrainConfig`.
        steps_per_epoch: int, optimizer steps per epoch at the global batch.
        trainable_variables: the model's; those with ndim <= 1 (biases, BN)
            get no weight decay under any optimizer.
        xla: bool, compile LARS/CLARS's per-variable updates.
        dtype_policy: "mixed_float16" wraps the optimizer in Keras's
            `LossScaleOptimizer` (dynamic loss scaling).

    Returns:
        (optimizer, schedule): a `keras.optimizers.Optimizer` and its
        `keras_lars.schedules.WarmupPolynomialDecay`.
    """
    schedule = keras_lars.schedules.WarmupPolynomialDecay(
        base_learning_rate=config.lars_opt_base_learning_rate,
        warmup_steps=int(round(config.lars_opt_learning_rate_warmup_epochs * steps_per_epoch)),
        train_steps=steps_per_epoch * config.epochs,
        end_learning_rate=config.lars_opt_end_learning_rate,
        power=config.lars_opt_learning_rate_decay_poly_power,
    )
    if config.optimizer in ("lars", "clars"):
        optimizer_cls = keras_lars.LARS if config.optimizer == "lars" else keras_lars.CLARS
        optimizer = optimizer_cls(
            learning_rate=schedule,
            momentum=config.lars_opt_momentum,
            weight_decay=config.lars_opt_weight_decay,
            eta=config.eta,
            epsilon=config.lars_epsilon,
            jit_compile=xla,
        )
    else:
        optimizer = keras.optimizers.SGD(
            learning_rate=schedule, momentum=config.lars_opt_momentum, weight_decay=config.lars_opt_weight_decay
        )
        optimizer.exclude_from_weight_decay(var_list=[v for v in trainable_variables if len(v.shape) <= 1])
    if dtype_policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer, schedule


@dataclasses.dataclass
class _Job:
    """What the loop needs, built once."""

    config: object
    strategy: object
    chief: bool
    pipeline: InputPipeline
    model: object
    schedule: object
    steps: Steps
    checkpoints: Checkpoints
    progress: dict  # epochs_done, best_top1 (tf.Variables saved in checkpoints)
    log: MLPerfLog
    steps_per_epoch: int


def run(config):
    """Trains and evaluates until `config.target_accuracy` or `config.epochs`;
    resumes from the latest checkpoint in `config.output_dir`. Writes
    checkpoints, `mlperf.log`, TensorBoard logs and `summary.json` there (the
    chief only). Returns the summary dict.

    Raises:
        distribution.DistributionError: the strategy cannot run here.
        FileNotFoundError: ImageNet tars missing from `config.manual_dir`.
        ValueError: a batch that does not split over the replicas, or more
            steps per epoch than the train split holds.
    """
    wall_start = time.perf_counter()
    distribution.split_cpu(config.cpu_devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = distribution.make_strategy(config.distribution)
    chief = distribution.is_chief(strategy)
    if chief:
        os.makedirs(config.output_dir, exist_ok=True)
    log = MLPerfLog(os.path.join(config.output_dir, "mlperf.log") if chief else None)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        log.event(mlperf.CACHE_CLEAR, True)
        log.start(mlperf.INIT_START)
        log.submission(config, strategy)
        job, setup = _build(config, strategy, chief, log)
        input_rate = _benchmark_input(job) if config.input_benchmark_steps else None
        log.end(mlperf.INIT_STOP)
        log.start(mlperf.RUN_START)
        results = _train(job)
        log.end(mlperf.RUN_STOP, status=mlperf.SUCCESS if results["target_reached"] else mlperf.ABORTED)
    finally:
        log.close()
        keras.mixed_precision.set_dtype_policy(previous_policy)
    summary = {
        **results,
        "input_images_per_second": input_rate,
        "wall_seconds": time.perf_counter() - wall_start,
        **setup,
        "config": dataclasses.asdict(config),
    }
    _write_json(_summary_path(config.output_dir, strategy, chief), summary)
    if chief:
        print(
            f"eval top-1 {summary['final_top1']}, best {summary['best_top1']}, target reached: "
            f"{summary['target_reached']}; {summary['train_images_per_second']:.0f} train images/s, input "
            f"{input_rate or 0:.0f} images/s; wall {summary['wall_seconds']:.0f} s; "
            f"summary in {os.path.join(config.output_dir, 'summary.json')}"
        )
    return summary


def _build(config, strategy, chief, log):
    distribution.check_batch(config.global_batch_size, config.gradient_accumulation_steps, strategy)
    policy = distribution.resolve_dtype(config.dtype, strategy)
    distribution.set_precision(policy)
    xla = distribution.resolve_xla(config.jit_compile, strategy)
    keras.utils.set_random_seed(config.seed)
    pipeline = InputPipeline(
        config.dataset, config.micro_batch_size, config.image_size, config.seed,
        data_dir=config.data_dir or None, manual_dir=config.manual_dir or None,
    )
    info = pipeline.info
    full_pass = info.train_examples // config.global_batch_size
    steps_per_epoch = config.steps_per_epoch or full_pass
    if not 1 <= steps_per_epoch <= full_pass:
        raise ValueError(
            f"{config.dataset}'s {info.train_examples} training examples give {full_pass} steps of "
            f"--global-batch-size {config.global_batch_size}; --steps-per-epoch {config.steps_per_epoch} "
            "must be between 1 and that (0: all)."
        )
    with strategy.scope():
        model = build_model(config.model, info.num_classes, info.input_shape, config.zero_init_residual)
        optimizer, schedule = build_optimizer(config, steps_per_epoch, model.trainable_variables, xla, policy)
        model.compile(optimizer=optimizer)
        if config.optimizer == "clars":
            keras_lars.attach_per_example_norms(model)
        optimizer.build(model.trainable_variables)
        progress = {
            "epochs_done": tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done"),
            "best_top1": tf.Variable(0.0, dtype=tf.float32, trainable=False, name="best_top1"),
        }
    steps = Steps(model, strategy, config.micro_batch_size, config.label_smoothing, xla,
                  config.gradient_accumulation_steps)
    checkpoints = Checkpoints(config.output_dir, chief, model=model, optimizer=optimizer, **progress)
    resumed_from = checkpoints.restore_latest()
    if resumed_from:
        print(f"resuming from {resumed_from}")
    log.hyperparameters(config, info.train_examples, info.eval_examples, steps_per_epoch,
                        schedule.warmup_steps, schedule.decay_steps)
    job = _Job(config, strategy, chief, pipeline, model, schedule, steps, checkpoints, progress, log, steps_per_epoch)
    setup = {
        "dataset": dataclasses.asdict(info),
        "steps_per_epoch": steps_per_epoch,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": type(strategy).__name__,
        "dtype_policy": policy,
        "xla": xla,
        "resumed_from": resumed_from,
        "trainable_parameters": int(sum(math.prod(v.shape) for v in model.trainable_variables)),
    }
    return job, setup


def _benchmark_input(job):
    """Images/second of the input pipeline alone (all workers together):
    micro-batches drawn from the distributed dataset without a step."""
    steps = min(job.config.input_benchmark_steps, job.steps_per_epoch * job.config.gradient_accumulation_steps - 1)
    if steps < 1:
        return None
    iterator = iter(job.strategy.distribute_datasets_from_function(job.pipeline.train_dataset_fn(0)))
    next(iterator)  # pipeline start-up
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * job.config.micro_batch_size / (time.perf_counter() - start)


def _train(job):
    config, spe, k = job.config, job.steps_per_epoch, job.config.gradient_accumulation_steps
    step = int(job.model.optimizer.iterations.numpy())
    first_epoch = int(job.progress["epochs_done"].numpy())
    evals = _read_evals(config.output_dir)
    target_reached = float(job.progress["best_top1"].numpy()) >= config.target_accuracy
    writer = tf.summary.create_file_writer(os.path.join(config.output_dir, "tensorboard")) if job.chief else None
    timed_seconds, timed_steps, epoch_losses, epoch_lrs = 0.0, 0, {}, {}
    block_first = None
    for epoch in range(first_epoch + 1, config.epochs + 1):  # 1-based, as MLPerf's epoch_num
        if target_reached:
            break
        if block_first is None:
            block_first = epoch
            job.log.start(mlperf.BLOCK_START, first_epoch_num=epoch, epoch_count=_block_length(config, epoch))
        done_in_epoch = min(max(step - (epoch - 1) * spe, 0), spe)
        losses = []
        if done_in_epoch < spe:
            dataset = job.strategy.distribute_datasets_from_function(
                job.pipeline.train_dataset_fn(epoch - 1, skip_micro_steps=done_in_epoch * k)
            )
            iterator = iter(dataset)
            progbar = keras.utils.Progbar(spe, verbose=(2 if os.environ.get("CI") else 1) if job.chief else 0,
                                          stateful_metrics=["learning_rate"])
            print(f"Epoch {epoch}/{config.epochs}" if job.chief else "", end="\n" if job.chief else "")
            for in_epoch in range(done_in_epoch, spe):
                start = time.perf_counter()
                for _ in range(k - 1):
                    job.steps.accumulate_step(iterator)
                loss = float(job.steps.apply_step(iterator))
                if timed_steps or losses:  # the process's first step traces and compiles
                    timed_seconds += time.perf_counter() - start
                    timed_steps += 1
                step += 1
                losses.append(loss)
                lr = float(job.schedule(step))
                progbar.update(in_epoch + 1, [("loss", loss), ("learning_rate", lr)])
                if writer:
                    with writer.as_default(step=step):
                        tf.summary.scalar("train/loss", loss)
                        tf.summary.scalar("train/learning_rate", lr)
                if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step % spe:
                    job.steps.sync_moving_statistics()
                    job.checkpoints.save(step)
            epoch_losses[epoch] = float(np.mean(losses))
            epoch_lrs[epoch] = lr
            job.steps.sync_moving_statistics()
        if config.eval_due(epoch):
            record = _evaluate(job, epoch, step)
            evals = {**evals, epoch: record}
            if job.chief:
                _write_json(_evals_path(config.output_dir), {str(e): r for e, r in evals.items()})
                if writer:
                    with writer.as_default(step=step):
                        tf.summary.scalar("eval/top1", record["top1"])
                        tf.summary.scalar("eval/loss", record["loss"])
            job.log.end(mlperf.BLOCK_STOP, first_epoch_num=block_first)
            block_first = None
            job.progress["best_top1"].assign(max(float(job.progress["best_top1"].numpy()), record["top1"]))
            target_reached = bool(record["top1"] >= config.target_accuracy)
        job.progress["epochs_done"].assign(epoch)
        job.checkpoints.save(step)
    if writer:
        writer.close()
    top1 = [evals[e]["top1"] for e in sorted(evals)]
    return {
        "final_top1": top1[-1] if top1 else None,
        "best_top1": max(top1) if top1 else None,
        "target_reached": target_reached,
        "evals": [{"epoch": e, **evals[e]} for e in sorted(evals)],
        "train_loss_by_epoch": epoch_losses,
        "learning_rate_by_epoch": epoch_lrs,
        "epochs_done": int(job.progress["epochs_done"].numpy()),
        "optimizer_steps": step,
        "train_images_per_second": timed_steps * config.global_batch_size / timed_seconds if timed_steps else 0.0,
        "train_seconds_timed": timed_seconds,
        "weights_sha256": weights_fingerprint(job.model),
    }


def _block_length(config, epoch):
    last = epoch
    while not config.eval_due(last):
        last += 1
    return last - epoch + 1


def _evaluate(job, epoch, step):
    """Top-1 and mean loss over the whole eval split, each example once."""
    job.log.start(mlperf.EVAL_START, epoch_num=epoch)
    iterator = iter(job.strategy.distribute_datasets_from_function(job.pipeline.eval_dataset_fn()))
    totals = np.zeros(3)
    for _ in range(job.pipeline.eval_steps):
        totals += [float(x) for x in job.steps.eval_step(iterator)]
    correct, count, loss_sum = totals
    if int(count) != job.pipeline.info.eval_examples:
        raise RuntimeError(f"Evaluated {count} examples, expected {job.pipeline.info.eval_examples}.")
    top1 = float(correct / count)
    job.log.event(mlperf.EVAL_ACCURACY, top1, epoch_num=epoch)
    job.log.end(mlperf.EVAL_STOP, epoch_num=epoch)
    if job.chief:
        print(f"eval after epoch {epoch} (step {step}): top-1 {top1:.4f}, loss {loss_sum / count:.4f}, "
              f"{int(count)} examples")
    return {"top1": top1, "loss": float(loss_sum / count), "examples": int(count), "step": step}


def _summary_path(output_dir, strategy, chief):
    if chief:
        return os.path.join(output_dir, "summary.json")
    # Other workers: their own file, for checking that all ended alike.
    directory = os.path.join(output_dir, "workers", str(strategy.cluster_resolver.task_id))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, "summary.json")


def weights_fingerprint(model):
    """SHA-256 of all the model's weights (float32 bytes, in order)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value), np.float32).tobytes())
    return digest.hexdigest()


def _evals_path(output_dir):
    return os.path.join(output_dir, "evals.json")


def _read_evals(output_dir):
    try:
        with open(_evals_path(output_dir)) as f:
            return {int(e): r for e, r in json.load(f).items()}
    except FileNotFoundError:
        return {}


def _write_json(path, data):
    # Written whole, then renamed: a killed process never leaves half a file.
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(temporary, path)
