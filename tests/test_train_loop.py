"""The trainer's loop in parts: the generic controller, the wall clock, the
trainer's and the evaluator's bookkeeping, and each action alone, with the
real writers, checkpoints, signals and MLPerf log it drives (the end-to-end
runs are in test_trainer.py, test_checkpoints.py and test_preemption.py)."""

import contextlib
import csv
import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import keras_lars
from keras_lars.train import guard
from keras_lars.train.checkpoints import Checkpoints
from keras_lars.train.errors import DivergenceError
from keras_lars.train.loop import actions
from keras_lars.train.loop.clock import WALL_PARTS, WallClock
from keras_lars.train.loop.controller import Action, Controller
from keras_lars.train.loop.evaluator import Evaluator
from keras_lars.train.loop.trainer import LoopOutput, Trainer
from keras_lars.train.mlperf_log import MLPerfLog
from keras_lars.train.preemption import Preempted
from keras_lars.schedules import WarmupPolynomialDecay


class _CountingTrainer:
    """Counts steps as `Trainer` does; each loop's losses are its steps."""

    def __init__(self, step=0, steps_per_epoch=4):
        self.step, self.steps_per_epoch, self.calls = step, steps_per_epoch, []

    def start(self, first_epoch):
        self.calls.append(("start", first_epoch))

    def train(self, n):
        first, self.step = self.step, self.step + n
        self.calls.append(("train", n))
        steps = np.arange(first + 1, self.step + 1, dtype=float)
        return LoopOutput(first // self.steps_per_epoch + 1, first, self.step, steps, steps / 100)

    def close(self):
        self.calls.append(("close",))


class _Evaluator:
    def __init__(self, top1_by_epoch):
        self.top1_by_epoch = top1_by_epoch

    def evaluate(self, epoch, step):
        return {"top1": self.top1_by_epoch[epoch], "loss": 1.0, "examples": 10, "step": step}

    def close(self):
        pass


class _Recorder(Action):
    def __init__(self, log):
        self.log = log

    def start(self):
        self.log.append("start")

    def epoch_start(self, epoch, loops):
        self.log.append(("epoch_start", epoch, loops))

    def loop_end(self, output):
        self.log.append(("loop_end", output.first_step, output.step))

    def eval_start(self, epoch):
        self.log.append(("eval_start", epoch))

    def evaluated(self, epoch, record):
        self.log.append(("evaluated", epoch, record["step"]))

    def epoch_end(self, epoch):
        self.log.append(("epoch_end", epoch))

    def close(self):
        self.log.append("close")


def _controller(trainer, log, **kwargs):
    options = dict(epochs=3, steps_per_epoch=4, steps_per_loop=3, eval_due=lambda e: e % 2 == 0,
                   stop=lambda: False)
    options.update(kwargs)
    return Controller(trainer, _Evaluator({2: 0.5, 3: 0.6}), [_Recorder(log)], **options)


def test_controller_cuts_epochs_into_loops_and_calls_the_hooks_in_order():
    log, trainer = [], _CountingTrainer()
    _controller(trainer, log, boundaries=(0, 2)).run()
    assert log == [
        "start",
        ("epoch_start", 1, [2, 2]), ("loop_end", 0, 2), ("loop_end", 2, 4), ("epoch_end", 1),
        ("epoch_start", 2, [2, 2]), ("loop_end", 4, 6), ("loop_end", 6, 8),
        ("eval_start", 2), ("evaluated", 2, 8), ("epoch_end", 2),
        ("epoch_start", 3, [2, 2]), ("loop_end", 8, 10), ("loop_end", 10, 12), ("epoch_end", 3),
        "close",
    ]
    assert trainer.calls[0] == ("start", 1) and trainer.calls[-1] == ("close",)


def test_controller_resumes_mid_epoch_and_stops_at_the_target():
    log, trainer = [], _CountingTrainer(step=5)
    reached = []
    controller = _controller(trainer, log, first_epoch=2, stop=lambda: bool(reached))
    controller.actions.append(type("Target", (Action,), {"evaluated": lambda self, e, r: reached.append(e)})())
    controller.run()
    # Epoch 2 has steps 6..8 left, one loop of 3; the target ends the run before epoch 3.
    assert log[1:4] == [("epoch_start", 2, [3]), ("loop_end", 5, 8), ("eval_start", 2)]
    assert log[-2:] == [("epoch_end", 2), "close"] and reached == [2]


def test_controller_closes_everything_after_an_error():
    log, trainer = [], _CountingTrainer()

    class Fails(Action):
        def loop_end(self, output):
            raise DivergenceError("boom")

    controller = _controller(trainer, log)
    controller.actions.append(Fails())
    with pytest.raises(DivergenceError):
        controller.run()
    assert log[-1] == "close" and trainer.calls[-1] == ("close",)


def test_wall_clock_books_parts_and_sets_the_first_loop_apart():
    clock = WallClock()
    with clock.part("evals"):
        pass
    with pytest.raises(KeyError):
        with clock.part("lunch"):
            pass
    clock.loop(10, 5.0)  # tracing and compiling: 4 s at the later rate of 0.1 s/step
    clock.loop(20, 2.0)
    wall = clock.wall_time()
    assert list(wall) == list(WALL_PARTS) and wall["evals"] >= 0
    assert wall["steps"] == 2.0 and wall["first_loop_steps"] == pytest.approx(1.0)
    assert wall["first_loop_compile"] == pytest.approx(4.0) and (clock.timed_steps, clock.timed_seconds) == (20, 2.0)


class _Steps:
    """`steps.Steps`' interface over scripted losses and eval totals."""

    def __init__(self, losses=(), eval_totals=(3.0, 4.0, 2.0)):
        self.losses, self.eval_totals, self.synced = list(losses), eval_totals, 0

    def train_loop(self, iterator, n):
        out, self.losses = np.array(self.losses[:n], np.float32), self.losses[n:]
        return out

    def sync_moving_statistics(self):
        self.synced += 1

    def eval_step(self, iterator):
        return self.eval_totals


class _Pipeline:
    eval_steps = 2
    info = type("Info", (), {"eval_split": "test", "eval_examples": 8})()

    def reading(self, split):
        return contextlib.nullcontext()

    def eval_dataset_fn(self):
        return lambda context: tf.data.Dataset.range(4)


def _trainer(losses, step=0):
    schedule = WarmupPolynomialDecay(1.0, warmup_steps=2, train_steps=8)
    return Trainer(_Steps(losses), None, _Pipeline(), schedule, WallClock(), steps_per_epoch=4, epochs=2,
                   accumulation_steps=1, step=step,
                   diverged=lambda step, loss: DivergenceError(f"loss {loss} at optimizer step {step}"))


def test_trainer_counts_steps_records_epochs_and_reads_the_schedule():
    trainer = _trainer([1.0, 2.0, 3.0, 4.0, 5.0])
    first = trainer.train(3)
    assert (first.epoch, first.first_step, first.step) == (1, 0, 3) and trainer._steps.synced == 0
    np.testing.assert_allclose(first.learning_rates, [0.5, 1.0, keras.ops.convert_to_numpy(trainer._schedule(3))])
    end = trainer.train(1)
    assert trainer.epoch_losses == {1: 2.5} and trainer.epoch_lrs == {1: float(end.learning_rates[-1])}
    assert trainer._steps.synced == 1  # the epoch's end
    assert trainer.results(64)["optimizer_steps"] == 4


def test_trainer_stops_at_the_first_non_finite_loss():
    trainer = _trainer([1.0, np.nan, 3.0], step=8)
    with pytest.raises(DivergenceError, match="loss nan at optimizer step 10"):
        trainer.train(3)
    assert trainer.step == 10 and trainer.epoch_losses == {}


def test_evaluator_checks_the_weights_then_counts_every_example():
    checked = []
    evaluator = Evaluator(_Steps(), tf.distribute.get_strategy(), _Pipeline(), checked.append)
    record = evaluator.evaluate(3, 12)
    assert checked == [12] and record == {"top1": 0.75, "loss": 0.5, "examples": 8, "step": 12}
    short = Evaluator(_Steps(eval_totals=(1.0, 3.0, 1.0)), tf.distribute.get_strategy(), _Pipeline(), checked.append)
    with pytest.raises(RuntimeError, match="Evaluated 6.0 examples, expected 8"):
        short.evaluate(3, 12)


def _output(first, step, epoch=1):
    steps = np.arange(first + 1, step + 1)
    return LoopOutput(epoch, first, step, (steps * 0.5).astype(np.float32), steps / 100)


def test_progress_bar_prints_epochs_with_steps_left(capsys):
    bar = actions.ProgressBar(epochs=3, steps_per_epoch=4, verbose=2)
    bar.epoch_start(2, [])
    assert capsys.readouterr().out == ""
    bar.epoch_start(2, [2, 2])
    bar.loop_end(_output(4, 6, epoch=2))
    bar.loop_end(_output(6, 8, epoch=2))
    out = capsys.readouterr().out
    assert out.startswith("Epoch 2/3\n") and "4/4" in out and "loss: " in out and "learning_rate: 0.0800" in out
    silent = actions.ProgressBar(epochs=3, steps_per_epoch=4, verbose=0)
    silent.epoch_start(1, [4])
    silent.loop_end(_output(0, 4))
    assert capsys.readouterr().out == ""


def _scalars(directory):
    events = event_accumulator.EventAccumulator(directory, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_tensorboard_scalars_every_step_and_every_eval(tmp_path):
    board = actions.TensorBoardScalars(str(tmp_path))
    board.start()
    board.loop_end(_output(0, 3))
    board.evaluated(1, {"top1": 0.25, "loss": 2.0, "examples": 8, "step": 3})
    board.close()
    scalars = _scalars(str(tmp_path))
    assert scalars["train/loss"] == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert [s for s, _ in scalars["train/learning_rate"]] == [1, 2, 3]
    assert scalars["train/learning_rate"][2][1] == pytest.approx(0.03)
    assert scalars["eval/top1"] == [(3, 0.25)] and scalars["eval/loss"] == [(3, 2.0)]


def _model(optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    return model


def test_layer_statistics_at_multiples_of_every(tmp_path):
    model = _model(keras_lars.LARS(0.1, layer_statistics=True))
    statistics = actions.LayerStatistics(str(tmp_path), model.optimizer, every=2)
    statistics.start()
    statistics.loop_end(_output(0, 1))
    assert not os.path.exists(tmp_path / "layer_statistics.csv")
    statistics.loop_end(_output(1, 2))
    statistics.close()
    with open(tmp_path / "layer_statistics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["variable"]) for r in rows] == [("2", v.path) for v in model.trainable_variables]
    assert os.listdir(tmp_path / "tensorboard" / "layer_statistics")


def _saver(tmp_path, every, trainer_step):
    model = _model()
    progress = {"steps_done": tf.Variable(0, dtype=tf.int64), "epochs_done": tf.Variable(0, dtype=tf.int64)}
    checkpoints = Checkpoints(str(tmp_path), model=model, **progress)
    trainer = type("T", (), {"step": trainer_step, "syncs": 0,
                             "sync": lambda self: setattr(self, "syncs", self.syncs + 1)})()
    weight_guard = guard.WeightGuard(model, type("C", (), {"optimizer": "sgd", "lars_opt_base_learning_rate": 1.0,
                                                           "lars_opt_learning_rate_warmup_epochs": 0})(),
                                     checkpoints.latest)
    return actions.SaveCheckpoint(checkpoints, progress, weight_guard, trainer, every, 4), model, progress, trainer


def test_checkpoints_mid_epoch_at_every_and_at_epoch_ends(tmp_path):
    saver, model, progress, trainer = _saver(tmp_path, every=2, trainer_step=2)
    saver.loop_end(_output(0, 2))
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-2") and trainer.syncs == 1
    trainer.step = 4
    saver.loop_end(_output(2, 4))  # an epoch's end: saved by epoch_end, after the eval
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-2")
    saver.epoch_end(1)
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-4")
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    assert reader.get_tensor("epochs_done/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert reader.get_tensor("steps_done/.ATTRIBUTES/VARIABLE_VALUE") == 4
    assert saver.save_now() == (4, tf.train.latest_checkpoint(tmp_path / "checkpoints"))


def test_no_checkpoint_of_non_finite_weights(tmp_path):
    saver, model, progress, trainer = _saver(tmp_path, every=0, trainer_step=4)
    saver.epoch_end(1)
    model.layers[0].kernel.assign(np.full((3, 2), np.inf))
    trainer.step = 8
    with pytest.raises(DivergenceError, match="non-finite weights or optimizer state after optimizer step 8 .*ckpt-4"):
        saver.epoch_end(2)
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-4")


def test_preemption_saves_at_the_next_boundary(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    saved = []
    preemption = actions.PreemptionSave(tf.distribute.get_strategy(), lambda: saved.append(7) or (7, "ckpt-7"))
    preemption.start()
    try:
        preemption.loop_end(_output(0, 3))
        assert saved == []
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted, match="preempted by SIGTERM: checkpoint at optimizer step 7 \\(ckpt-7\\)"):
            preemption.epoch_end(1)
        assert saved == [7]
    finally:
        preemption.close()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the process is about to exit
        signal.signal(signal.SIGTERM, previous)


def test_mlperf_blocks_span_the_epochs_up_to_each_eval(tmp_path):
    log = MLPerfLog(str(tmp_path / "mlperf.log"))
    blocks = actions.MLPerfBlocks(log, eval_due=lambda e: e % 2 == 0)
    for epoch in (1, 2, 3, 4):
        blocks.epoch_start(epoch, [4])
        if epoch % 2 == 0:
            blocks.eval_start(epoch)
            blocks.evaluated(epoch, {"top1": epoch / 10, "loss": 1.0, "examples": 8, "step": 4 * epoch})
    log.close()
    with open(tmp_path / "mlperf.log") as f:
        lines = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in f]
    assert [(r["key"], r["value"], r["metadata"].get("epoch_num", r["metadata"].get("first_epoch_num")))
            for r in lines] == [
        ("block_start", None, 1), ("eval_start", None, 2), ("eval_accuracy", 0.2, 2), ("eval_stop", None, 2),
        ("block_stop", None, 1),
        ("block_start", None, 3), ("eval_start", None, 4), ("eval_accuracy", 0.4, 4), ("eval_stop", None, 4),
        ("block_stop", None, 3)]
    assert lines[0]["metadata"]["epoch_count"] == 2


def test_eval_records_write_evals_keep_the_best_and_find_the_target(tmp_path, capsys):
    progress = {"best_top1": tf.Variable(0.0)}
    records = actions.EvalRecords(str(tmp_path), True, progress, target_accuracy=0.7)
    records.evaluated(1, {"top1": 0.75, "loss": 0.5, "examples": 8, "step": 4})
    records.evaluated(2, {"top1": 0.5, "loss": 0.9, "examples": 8, "step": 8})
    assert "eval after epoch 2 (step 8): top-1 0.5000, loss 0.9000, 8 examples" in capsys.readouterr().out
    assert float(progress["best_top1"].numpy()) == 0.75 and not records.target_reached  # the last eval's
    with open(tmp_path / "evals.json") as f:
        assert json.load(f)["1"] == {"top1": 0.75, "loss": 0.5, "examples": 8, "step": 4}
    resumed = actions.EvalRecords(str(tmp_path), True, progress, target_accuracy=0.7)
    assert resumed.target_reached and sorted(resumed.evals) == [1, 2]
    assert resumed.results() == {"final_top1": 0.5, "best_top1": 0.75, "target_accuracy": 0.7, "target_reached": True}
