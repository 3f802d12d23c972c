"""Learning-rate schedules for large-batch training with LARS."""

import keras
from keras import ops

from keras_lars._validation import check_number

__all__ = ["WarmupPolynomialDecay", "linear_scaled_learning_rate"]


def linear_scaled_learning_rate(base_learning_rate, global_batch_size, base_batch_size=256):
    """The linear scaling rule: gamma = gamma_base * B / B_base (Goyal et al. 2017).

    Args:
        base_learning_rate: float > 0, the LR tuned at `base_batch_size`.
        global_batch_size: int > 0, examples per optimizer step summed over
            all replicas (and accumulation micro-batches).
        base_batch_size: int > 0, the batch `base_learning_rate` was tuned at.

    Returns:
        float.

    Raises:
        ValueError: for a non-positive argument.
    """
    for name, value in (
        ("base_learning_rate", base_learning_rate),
        ("global_batch_size", global_batch_size),
        ("base_batch_size", base_batch_size),
    ):
        check_number(name, value, "a number > 0", lambda x: x > 0)
    return float(base_learning_rate) * global_batch_size / base_batch_size


@keras.saving.register_keras_serializable(package="keras_lars")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """MLPerf's LARS schedule: linear warmup, then polynomial decay.

    With `t` the optimizer step, `W = warmup_steps`, `T = train_steps` and
    `D = T - W + 1`:

    ```
    lr(t) = base_learning_rate * t / W                               t <= W
    lr(t) = (base - end) * (1 - min(t - W, D) / D) ** power + end    t >  W
    ```

    as `PolynomialDecayWithWarmup` in the MLPerf ResNet-50 TF2 reference
    (`lars_util.py`; MLPerf keys `lars_opt_base_learning_rate`,
    `lars_opt_end_learning_rate`, `lars_opt_learning_rate_decay_poly_power`,
    `lars_opt_learning_rate_decay_steps` = D, `lars_opt_learning_rate_warmup_epochs`).
    With `W = 0` there is no warmup: `lr(0) = base_learning_rate`.

    Args:
        base_learning_rate: float > 0, the peak LR reached at the end of warmup.
        warmup_steps: int >= 0, in optimizer steps (not epochs).
        train_steps: int >= warmup_steps, >= 1: total optimizer steps.
        end_learning_rate: float >= 0 (MLPerf: 1e-4).
        power: float > 0 (MLPerf and the LARS paper: 2).
        name: optional name.

    Raises:
        ValueError: for an argument outside the ranges above.
    """

    def __init__(
        self,
        base_learning_rate,
        warmup_steps,
        train_steps,
        end_learning_rate=1e-4,
        power=2.0,
        name=None,
    ):
        check_number("base_learning_rate", base_learning_rate, "a finite float > 0", lambda x: x > 0)
        check_number("end_learning_rate", end_learning_rate, "a finite float >= 0", lambda x: x >= 0)
        check_number("power", power, "a finite float > 0", lambda x: x > 0)
        check_number("train_steps", train_steps, "an int >= 1", lambda x: x >= 1, integral=True)
        check_number(
            "warmup_steps",
            warmup_steps,
            f"an int in [0, train_steps={train_steps}]",
            lambda x: 0 <= x <= train_steps,
            integral=True,
        )
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.train_steps = int(train_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.name = name

    @property
    def decay_steps(self):
        """D = train_steps - warmup_steps + 1 (MLPerf `lars_opt_learning_rate_decay_steps`)."""
        return self.train_steps - self.warmup_steps + 1

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base, end = self.base_learning_rate, self.end_learning_rate
        decay_steps = float(self.decay_steps)
        progress = ops.minimum(ops.maximum(step - self.warmup_steps, 0.0), decay_steps) / decay_steps
        decayed = (base - end) * ops.power(1.0 - progress, self.power) + end
        if self.warmup_steps == 0:
            return decayed
        warmup = base * step / float(self.warmup_steps)
        return ops.where(step <= self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "train_steps": self.train_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "name": self.name,
        }
