"""The optimizers and schedules the trainer, the experiments and the
self-supervised example build, from one place. Imports Keras and keras_lars
only (no TensorFlow): the example runs on every backend.

Names (`NAMES`):

- "lars", "clars": `keras_lars.LARS` (You et al. 2017, Algorithm 1) and
  `keras_lars.CLARS` (Huo et al. 2021, Eq. 5).
- "lars_sgd": momentum SGD as `keras_lars.LARS` with every variable excluded
  from layer adaptation (lambda = 1): LARS's update, momentum form and
  coupled weight decay otherwise (Goyal et al. 2017); the experiments' and
  the example's SGD baseline.
- "sgd": Keras's `SGD` with Keras's weight decay (each step
  w -= lr * weight_decay * w), rank <= 1 variables excluded from it (the
  trainer's `--optimizer sgd`).
- "adamw": Keras's `AdamW`, biases and normalization parameters excluded
  from its decoupled decay.
"""

import keras

import keras_lars
from keras_lars.schedules import WarmupPolynomialDecay

NAMES = ("lars", "clars", "lars_sgd", "sgd", "adamw")


def mlperf_schedule(base_learning_rate, steps_per_epoch, epochs, warmup_epochs, end_learning_rate, power):
    """MLPerf's schedule in epochs: linear warmup from 0 over
    `warmup_epochs` (rounded to steps), then polynomial decay of `power` to
    `end_learning_rate` at the end of `epochs` (`WarmupPolynomialDecay`; the
    decay spans at least the warmup and one step)."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    return WarmupPolynomialDecay(
        base_learning_rate=base_learning_rate,
        warmup_steps=warmup,
        train_steps=max(steps_per_epoch * epochs, warmup, 1),
        end_learning_rate=end_learning_rate,
        power=power,
    )


def _adapt_nothing(variable):
    return True


def build_optimizer(name, learning_rate, *, weight_decay, momentum=0.9, trainable_variables=None,
                    adapt_biases=False, initial_loss_scale=None, **lars_options):
    """One of `NAMES`.

    Args:
        name: str in `NAMES`.
        learning_rate: float or a `keras.optimizers.schedules.LearningRateSchedule`.
        weight_decay: float >= 0: coupled L2 for "lars", "clars" and
            "lars_sgd", Keras's own (applied to the weights) for "sgd" and
            "adamw".
        momentum: float in [0, 1) (not "adamw").
        trainable_variables: the model's, for "sgd" (its rank <= 1 ones get
            no weight decay); ignored otherwise.
        adapt_biases: "lars" and "clars" only: True gives every variable,
            biases included, a trust ratio (`exclude_from_layer_adaptation=[]`);
            weight decay still skips rank <= 1.
        initial_loss_scale: None, or wrap the optimizer in Keras's
            `LossScaleOptimizer` with this initial scale (mixed_float16).
        **lars_options: more `keras_lars.LARS` / `CLARS` arguments (eta,
            epsilon, nesterov, jit_compile, layer_statistics,
            trust_ratio_denominator, ...).

    Raises:
        ValueError: an unknown `name`, or `adapt_biases` or `lars_options`
            given to an optimizer that has no trust ratio.
    """
    if name not in NAMES:
        raise ValueError(f"optimizer must be one of {NAMES}. Received: {name!r}")
    if name in ("sgd", "adamw", "lars_sgd") and (adapt_biases or (lars_options and name != "lars_sgd")):
        raise ValueError(f"optimizer {name!r} has no trust ratio: adapt_biases and LARS options are for 'lars' "
                         f"and 'clars'. Received: adapt_biases={adapt_biases}, options {sorted(lars_options)}")
    if name in ("lars", "clars", "lars_sgd"):
        if adapt_biases:
            lars_options["exclude_from_layer_adaptation"] = []
        if name == "lars_sgd":
            lars_options["exclude_from_layer_adaptation"] = _adapt_nothing
        cls = keras_lars.CLARS if name == "clars" else keras_lars.LARS
        optimizer = cls(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay, **lars_options)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)
        optimizer.exclude_from_weight_decay(var_list=[v for v in trainable_variables or () if len(v.shape) <= 1])
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if initial_loss_scale is not None:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_loss_scale)
    return optimizer


def from_config(config, steps_per_epoch, trainable_variables, xla=False, dtype_policy="float32"):
    """The trainer's optimizer and its MLPerf schedule (linear warmup from 0, then
    polynomial decay to the end LR).

    Args:
        config: `TrainConfig`.
        steps_per_epoch: int, optimizer steps per epoch at the global batch.
        trainable_variables: the model's; those with ndim <= 1 (biases, BN)
            get no weight decay under any optimizer.
        xla: bool, compile LARS/CLARS's per-variable updates.
        dtype_policy: "mixed_float16" wraps the optimizer in Keras's
            `LossScaleOptimizer` (dynamic loss scaling from
            `config.initial_loss_scale`).

    Returns:
        (optimizer, schedule): a `keras.optimizers.Optimizer` and its
        `keras_lars.schedules.WarmupPolynomialDecay`.
    """
    schedule = mlperf_schedule(
        config.lars_opt_base_learning_rate, steps_per_epoch, config.epochs,
        config.lars_opt_learning_rate_warmup_epochs, config.lars_opt_end_learning_rate,
        config.lars_opt_learning_rate_decay_poly_power,
    )
    scale = config.initial_loss_scale if dtype_policy == "mixed_float16" else None
    if config.optimizer in ("lars", "clars"):
        optimizer = build_optimizer(
            config.optimizer, schedule, momentum=config.lars_opt_momentum, weight_decay=config.lars_opt_weight_decay,
            initial_loss_scale=scale, eta=config.eta, epsilon=config.lars_epsilon, jit_compile=xla,
            layer_statistics=config.layer_statistics_every > 0,
        )
    else:
        optimizer = build_optimizer(
            "sgd", schedule, momentum=config.lars_opt_momentum, weight_decay=config.lars_opt_weight_decay,
            trainable_variables=trainable_variables, initial_loss_scale=scale,
        )
    return optimizer, schedule
