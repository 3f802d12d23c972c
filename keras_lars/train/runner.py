"""Runs one training job as the MLPerf reference does: builds the strategy,
data, model and optimizer, restores the latest checkpoint, builds the loop
(`loop.Controller` with the trainer, the evaluator and the actions), runs
it, and writes the MLPerf run markers and `summary.json`."""

import dataclasses
import math
import os
import time

import keras
import tensorflow as tf
from mlperf_logging.mllog import constants as mlperf

import keras_lars
from keras_lars.train import distribution, guard, optimizers, records
from keras_lars.train.checkpoints import Checkpoints, check_restart, write_run_config
from keras_lars.train.errors import TrainerError, UsageError
from keras_lars.train.input_pipeline import InputPipeline
from keras_lars.train.loop import actions
from keras_lars.train.loop.clock import WallClock
from keras_lars.train.loop.controller import Controller
from keras_lars.train.loop.evaluator import Evaluator
from keras_lars.train.loop.trainer import Trainer
from keras_lars.train.mlperf_log import MLPerfLog
from keras_lars.train.preemption import Preempted
from keras_lars.train.models import build_model
from keras_lars.train.steps import Steps


@dataclasses.dataclass
class Job:
    """What the loop needs, built once."""

    config: object
    strategy: object
    chief: bool
    pipeline: InputPipeline
    model: object
    schedule: object
    steps: Steps
    checkpoints: Checkpoints
    progress: dict  # steps_done, epochs_done, best_top1: tf.Variables saved in checkpoints
    log: MLPerfLog
    steps_per_epoch: int
    steps_per_loop: int


def run(config):
    """Trains and evaluates until `config.target_accuracy` or `config.epochs`;
    resumes from the latest checkpoint in `config.output_dir`. Writes
    checkpoints, `mlperf.log`, TensorBoard logs and `summary.json` there (the
    chief only). Returns the summary dict.

    Raises:
        UsageError: flags that do not fit the data or machine (an unknown
            dataset, a batch larger than the train split, an unwritable
            output directory, a batch that does not split over the replicas),
            or a restart whose flags differ from the run's saved ones
            (`checkpoints.RESTART_FLAGS` may change).
        distribution.DistributionError: the strategy cannot run here.
        DataError: a corrupted prepared dataset (the message names the file).
        CheckpointError: no checkpoint in the output directory can be read
            (a damaged latest one falls back to the previous kept one).
        Preempted: a SIGTERM or SIGINT stopped the run after a checkpoint
            (`summary.json` status "preempted", MLPerf `run_stop` aborted with
            `preempted_at_step`); the same call resumes.
        DivergenceError: a non-finite loss or non-finite weights; the MLPerf
            log ends with run_stop status "aborted" and `summary.json` says
            why. No checkpoint with a non-finite value is written.
        FileNotFoundError: ImageNet tars missing from `config.manual_dir`.
    """
    wall_start = time.perf_counter()
    distribution.split_cpu(config.cpu_devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = distribution.make_strategy(config.distribution)
    chief = distribution.is_chief(strategy)
    if chief:
        _check_writable(config.output_dir)
    log = MLPerfLog(os.path.join(config.output_dir, "mlperf.log") if chief else None)
    previous_policy = keras.mixed_precision.global_policy()
    error = None
    try:
        log.event(mlperf.CACHE_CLEAR, True)
        log.start(mlperf.INIT_START)
        log.submission(config, strategy)
        job, setup = _build(config, strategy, chief, log)
        with job.pipeline.reading("train"):
            input_rate = _benchmark_input(job) if config.input_benchmark_steps else None
        log.end(mlperf.INIT_STOP)
        setup_seconds = time.perf_counter() - wall_start
        log.start(mlperf.RUN_START)
        controller, evals = _loop(job)
        try:
            controller.run()
        except TrainerError as e:
            error = e
        results = _results(job, controller, evals)
        success = results["target_reached"] or (config.target_accuracy is None and results["completed"])
        preempted = {"preempted_at_step": error.step} if isinstance(error, Preempted) else {}
        log.end(mlperf.RUN_STOP, status=mlperf.SUCCESS if success and not error else mlperf.ABORTED, **preempted)
    finally:
        log.close()
        keras.mixed_precision.set_dtype_policy(previous_policy)
    wall_seconds = time.perf_counter() - wall_start
    summary = {
        **results,
        "wall_time": _wall_time(wall_seconds, setup_seconds, results["wall_time"]),
        "status": _status(results, error),
        "stop_reason": str(error) if error else None,
        "preemption": error.record if isinstance(error, Preempted) else None,
        "input_images_per_second": input_rate,
        "wall_seconds": wall_seconds,
        **setup,
        "config": dataclasses.asdict(config),
    }
    worker = None if chief else strategy.cluster_resolver.task_id
    records.write_json(records.summary_path(config.output_dir, worker), summary)
    if error:
        raise error
    if chief:
        rate = summary["train_images_per_second"]
        print(
            f"eval top-1 {summary['final_top1']}, best {summary['best_top1']}, status {summary['status']}; "
            f"{rate or 0:.0f} train images/s, input {input_rate or 0:.0f} images/s; "
            f"wall {summary['wall_seconds']:.0f} s; summary in {os.path.join(config.output_dir, 'summary.json')}"
        )
    return summary


def _loop(job):
    """The controller, with its trainer, evaluator and actions (in the order
    they run at a boundary), and the `EvalRecords` action."""
    config, clock = job.config, WallClock()
    weight_guard = guard.WeightGuard(job.model, config, job.checkpoints.latest)
    trainer = Trainer(
        job.steps, job.strategy, job.pipeline, job.schedule, clock, steps_per_epoch=job.steps_per_epoch,
        epochs=config.epochs, accumulation_steps=config.gradient_accumulation_steps,
        step=int(job.progress["steps_done"].numpy()),
        diverged=lambda step, loss: guard.loss_diverged(config, step, loss, job.checkpoints.latest()))
    evaluator = Evaluator(job.steps, job.strategy, job.pipeline, weight_guard.check)
    evals = actions.EvalRecords(config.output_dir, job.chief, job.progress, config.target_accuracy)
    checkpoint = actions.SaveCheckpoint(job.checkpoints, job.progress, weight_guard, trainer,
                                        config.checkpoint_every_steps, job.steps_per_epoch)
    chief_only = [actions.TensorBoardScalars(os.path.join(config.output_dir, "tensorboard"))] if job.chief else []
    if job.chief and config.layer_statistics_every:
        chief_only.append(actions.LayerStatistics(config.output_dir, job.model.optimizer,
                                                  config.layer_statistics_every))
    run_actions = [
        *chief_only,
        actions.MLPerfBlocks(job.log, config.eval_due),
        actions.ProgressBar(config.epochs, job.steps_per_epoch, verbose=None if job.chief else 0),
        evals,
        checkpoint,
        actions.PreemptionSave(job.strategy, checkpoint.save_now),
    ]
    controller = Controller(
        trainer, evaluator, run_actions, epochs=config.epochs, steps_per_epoch=job.steps_per_epoch,
        steps_per_loop=job.steps_per_loop,
        boundaries=(config.checkpoint_every_steps, config.layer_statistics_every), eval_due=config.eval_due,
        stop=lambda: evals.target_reached, first_epoch=int(job.progress["epochs_done"].numpy()) + 1, clock=clock)
    return controller, evals


def _results(job, controller, evals):
    """The loop's results (the summary's, less the run's set-up)."""
    epochs_done = int(job.progress["epochs_done"].numpy())
    results = evals.results()
    training = controller.trainer.results(job.config.global_batch_size)
    return {
        **results,
        "completed": results["target_reached"] or epochs_done == job.config.epochs,
        "evals": [{"epoch": e, **evals.evals[e]} for e in sorted(evals.evals)],
        "train_loss_by_epoch": training.pop("train_loss_by_epoch"),
        "learning_rate_by_epoch": training.pop("learning_rate_by_epoch"),
        "epochs_done": epochs_done,
        "optimizer_steps": training.pop("optimizer_steps"),
        "steps_per_loop": job.steps_per_loop,
        **training,
        "wall_time": controller.clock.wall_time(),
        "weights_sha256": records.weights_fingerprint(job.model),
    }


def _wall_time(wall_seconds, setup_seconds, parts):
    """`run`'s wall time by part, seconds: "setup" (dataset, model, restore,
    input benchmark), the loop's `clock.WALL_PARTS`, and "other" (the rest)."""
    accounted = {"setup": setup_seconds, **parts}
    return {**accounted, "other": wall_seconds - sum(accounted.values())}


def _status(results, error):
    if isinstance(error, Preempted):
        return "preempted"
    if error:
        return type(error).__name__
    if results["target_reached"]:
        return "target_reached"
    return "completed" if results["completed"] else "stopped"


def _check_writable(output_dir):
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--output-dir {output_dir} is not writable ({e.strerror}): pass a directory "
                         "this process can create and write to.") from None


def _build(config, strategy, chief, log):
    check_restart(config.output_dir, dataclasses.asdict(config))
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
    steps_per_epoch = _steps_per_epoch(config, info)
    with strategy.scope():
        model = build_model(config.model, info.num_classes, info.input_shape, config.zero_init_residual)
        optimizer, schedule = optimizers.from_config(config, steps_per_epoch, model.trainable_variables, xla, policy)
        model.compile(optimizer=optimizer)
        if config.optimizer == "clars":
            keras_lars.attach_per_example_norms(model)
        optimizer.build(model.trainable_variables)
        progress = {
            # Steps run, counted apart from optimizer.iterations, which a
            # skipped loss-scaling step does not advance.
            "steps_done": tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_done"),
            "epochs_done": tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done"),
            "best_top1": tf.Variable(0.0, dtype=tf.float32, trainable=False, name="best_top1"),
        }
    steps = Steps(model, strategy, config.micro_batch_size, config.label_smoothing, xla,
                  config.gradient_accumulation_steps)
    checkpoints = Checkpoints(config.output_dir, chief, model=model, optimizer=optimizer, **progress)
    resumed_from = checkpoints.restore_latest()
    if resumed_from:
        print(f"resuming from {resumed_from}")
    if chief:
        write_run_config(config.output_dir, dataclasses.asdict(config))
    log.hyperparameters(config, info.train_examples, info.eval_examples, steps_per_epoch,
                        schedule.warmup_steps, schedule.decay_steps)
    steps_per_loop = distribution.resolve_steps_per_loop(config.steps_per_loop, strategy)
    job = Job(config, strategy, chief, pipeline, model, schedule, steps, checkpoints, progress, log,
              steps_per_epoch, steps_per_loop)
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


def _steps_per_epoch(config, info):
    """`--steps-per-epoch`, or 0: one full pass at the global batch.

    Raises:
        UsageError: a global batch larger than the train split, or more steps
            per epoch than one pass holds.
    """
    full_pass = info.train_examples // config.global_batch_size
    if full_pass == 0:
        raise UsageError(
            f"--global-batch-size {config.global_batch_size} is larger than {info.name}'s "
            f"{info.train_examples} training examples: use at most {info.train_examples}."
        )
    if config.steps_per_epoch > full_pass:
        raise UsageError(
            f"--steps-per-epoch {config.steps_per_epoch} is more than the {full_pass} steps of --global-batch-size "
            f"{config.global_batch_size} in {info.name}'s {info.train_examples} training examples: use at most "
            f"{full_pass} (or 0: a full pass)."
        )
    return config.steps_per_epoch or full_pass


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
