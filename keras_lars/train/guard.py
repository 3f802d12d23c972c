"""The divergence guard: the first non-finite loss stops a run, and no
checkpoint holding a non-finite value is ever written, so the latest
checkpoint is always the last finite state.

A step that dynamic loss scaling (mixed_float16) skips for overflowing
gradients is normal operation: its loss is finite and the weights are not
touched, so neither check trips on it.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_lars.train.errors import DivergenceError


def first_non_finite(losses):
    """Index of the first non-finite value of `losses` (a 1-D array), or None."""
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


class FiniteCheck:
    """`check()` is True when every floating-point value in `variables`
    (model weights, optimizer state) is finite: one compiled reduction."""

    def __init__(self, variables):
        unique = {id(v): v for v in variables}.values()
        self._variables = [v for v in unique if keras.backend.is_float_dtype(v.dtype)]
        self._fn = tf.function(self._all_finite)

    def _all_finite(self):
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v.value)) for v in self._variables])

    def check(self):
        return bool(self._fn())


class WeightGuard:
    """Refuses to go on with non-finite weights or optimizer state: `check`
    runs before every checkpoint save and every eval.

    Args:
        model: the compiled model (its weights and optimizer variables;
            layer statistics are left out: a statistic of a diverging step,
            an infinite trust ratio, is what the user should see, not a
            reason to refuse a checkpoint).
        config: `TrainConfig`, for the advice in the error.
        latest_checkpoint: callable() -> the latest checkpoint's path or None.
    """

    def __init__(self, model, config, latest_checkpoint):
        self._finite = FiniteCheck(model.weights + _state_variables(model.optimizer))
        self._config, self._latest = config, latest_checkpoint

    def check(self, step):
        """Raises `DivergenceError` unless every value is finite after
        optimizer step `step`."""
        if not self._finite.check():
            raise weights_diverged(self._config, step, self._latest())


def _state_variables(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    statistics = {id(v) for v in getattr(inner, "layer_statistics_variables", [])}
    return [v for v in optimizer.variables if id(v) not in statistics]


def advice(config):
    """What to lower, with the values this run used (one sentence)."""
    knobs = [f"--lars-opt-base-learning-rate (now {config.lars_opt_base_learning_rate:g})"]
    if config.optimizer != "sgd":
        knobs.append(f"--eta (now {config.eta:g})")
    return (f"lower {' or '.join(knobs)}, or lengthen --lars-opt-learning-rate-warmup-epochs "
            f"(now {config.lars_opt_learning_rate_warmup_epochs:g})")


def loss_diverged(config, step, loss, latest_checkpoint):
    """The error for a non-finite `loss` at optimizer step `step` (1-based)."""
    return DivergenceError(
        f"training diverged: loss {loss} at optimizer step {step}; {advice(config)}. "
        + _resume_hint(latest_checkpoint)
    )


def weights_diverged(config, step, latest_checkpoint):
    """The error for non-finite weights or optimizer state after step `step`."""
    return DivergenceError(
        f"training diverged: non-finite weights or optimizer state after optimizer step {step} "
        f"(not checkpointed); {advice(config)}. " + _resume_hint(latest_checkpoint)
    )


def _resume_hint(latest_checkpoint):
    if latest_checkpoint is None:
        return "No checkpoint was written: the next run starts afresh."
    return (f"The latest checkpoint ({latest_checkpoint}) is the last finite state: the same command with "
            "the same --output-dir resumes from it.")
